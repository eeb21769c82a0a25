"""Write an EdgeSlim compressed container from an ONNX model (Deep Compression's last two steps).

Per large weight tensor (a Conv or Gemm/MatMul weight of at least ``min_elements`` values):

- if it has at most ``2**max_codebook_bits`` distinct non-zero values (a layer that
  ``weight_sharing`` clustered), it is stored as a codebook, the cluster index of every non-zero
  weight, and the weight's position as a relative index: the gap since the previous entry in
  ``index_bits`` bits, with a filler entry when a gap overflows (Han et al. 2016, section 2);
- otherwise, or when the shared form would be larger, the tensor is stored raw.

The symbols are canonical-Huffman coded in streams (format version 3 and up) that several layers
share, one code table per stream: each codebook is ordered by how often its values occur, so that the
cluster-index distributions of different layers line up, and streams of one role (cluster
indices, or relative indices) are merged greedily for as long as a merge makes the file smaller
(a table and a section entry saved against the bits a shared code costs). Relative-index widths
are the caller's, or chosen per layer (``0`` = the width whose own code is the shortest).
Formats 4 and 5 (the default) write each stream as fixed-width symbols (no table) or a canonical
Huffman code over blocks of 1 to 4 symbols (format 4) or 1 to 8 (format 5) as one extended
alphabet symbol (which cuts the whole-bit redundancy of a skewed stream), with a sparse,
delta-coded code-length table. The mode is the encoder's policy (:data:`ENTROPY_MARGIN`): the
fewest bytes among the modes whose codes are within 2% of the symbols' entropy, the fewest bytes
of all only when none is. The file is version 4 unless a stream needs a block of 5 to 8 symbols
to get within the 2%: the writer writes the lowest version that carries the container.

Biases, BatchNorm parameters and every other small tensor stay inside the ONNX graph, which is
stored DEFLATE-compressed with its large initializers replaced by external-data references.
The file layout is in ``docs/container-format.md``; :mod:`compression.container` decodes it
without torch or onnx.

Sizes follow the paper's table: ``bytes_pruned`` is the CSR form after pruning (non-zeros at 32
bits plus relative indices), ``bytes_shared`` the form after weight sharing before Huffman
(``codebook_bits`` per non-zero plus relative indices plus the codebook), ``bytes_huffman`` the
bytes actually stored for the layer in the container.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compression.container import (
    CODING_DEFLATE,
    CODING_HUFFMAN,
    CODING_STORED,
    CODING_STREAMS,
    DATA_FILE_NAME,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    KIND_GRAPH,
    KIND_RAW,
    KIND_SHARED,
    KIND_STREAM,
    MAGIC,
    MAX_BLOCK,
    MAX_BLOCK_ALPHABET,
    MAX_BLOCK_BY_VERSION,
    MAX_CODE_LENGTH,
    MAX_CODEBOOK_SIZE,
    MAX_INDEX_BITS,
    MAX_STREAMS,
    ONNX_DTYPES,
    ONNX_FLOAT,
    SECTION_ENTRY,
    SHARED_HEADER,
    STREAM_FIXED,
    STREAMED_HEADER,
    SUPPORTED_VERSIONS,
    canonical_codes,
    huffman_table_bytes,
)
from compression.errors import ConfigError, InvalidModelError

DATA_ALIGNMENT = 64  # every tensor starts on a 64-byte boundary of weights.bin
# The encoder's policy for a format 4 or 5 stream (issue 12: "Huffman streams within 2% of the
# empirical entropy of the symbols they code"). A mode is *within the margin* when its payload,
# the bits of its codes alone, is at most (1 + ENTROPY_MARGIN) x n x H, n the stream's symbols
# and H the entropy of their own frequencies in bits per symbol (a stream of one symbol: 0 bits).
# Modes within the margin are preferred and the fewest total bytes (header, table, codes) wins
# among them; only when no mode is within does the fewest total bytes win outright. Fixed width
# is within the margin only when the symbols are close to uniform over a power-of-two range.
ENTROPY_MARGIN = 0.02
_V4_BLOCK = MAX_BLOCK_BY_VERSION[4]  # format 4's longest block; longer ones need format 5
# A stream is decoded in one piece (about 20 bytes of decoder memory per coded bit), so layers
# are not merged into a stream past this many symbols; a larger layer keeps a stream of its own.
MAX_STREAM_SYMBOLS = 1 << 20
_WEIGHT_INPUTS = {"Conv": ("conv", 1), "ConvTranspose": ("conv", 1), "Gemm": ("fc", 1)}


@dataclass(frozen=True)
class StreamStats:
    """One Huffman-coded stream: its symbols, their empirical entropy and the bytes stored."""

    symbols: int
    distinct: int
    entropy_bits_per_symbol: float
    entropy_bytes: float  # symbols x entropy / 8: what an ideal entropy coder would need
    coded_bytes: int  # the stream as stored: its Huffman table, codes and last byte's padding
    table_bytes: int  # of which the table (alphabet size and code lengths)
    role: str = ""  # values (cluster indices) | gaps (relative indices)
    layers: tuple[str, ...] = ()  # the tensors whose symbols it holds, in order
    # how the stream codes (format 4 and 5): 0 fixed width, k >= 1 Huffman over blocks of k
    # symbols (k <= 4 in format 4, <= 8 in format 5)
    mode: int = 1
    table_bits: int = 0  # the code-length table alone (format 4, 5: exact; 2, 3: its bytes x 8)
    payload_bits: int = 0  # the codes alone: no header, no table, no padding

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


@dataclass(frozen=True)
class LayerSymbols:
    """One layer's symbols of one role, inside the stream that holds them."""

    stream: int  # index into ContainerStats.streams
    symbols: int
    distinct: int
    entropy_bits_per_symbol: float  # of this layer's symbols alone
    entropy_bytes: float
    code_bits: int  # what its symbols take in the stream (the stream's table not included)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerStats:
    """One weight tensor the container stores in a section of its own."""

    name: str
    kind: str  # conv | fc | other
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    stored_as: str  # shared | raw
    codebook_size: int
    codebook_bits: int  # bits per non-zero weight before Huffman (0 when stored raw)
    index_bits: int
    entries: int  # relative-index entries, fillers included
    filler_entries: int
    bytes_dense_fp32: int
    bytes_pruned: int
    bytes_shared: int
    # the layer's section in the file (name, header, codebook) plus its codes in the streams;
    # the streams' tables and padding are counted in the container's totals only
    bytes_huffman: int
    values: LayerSymbols | None = None
    gaps: LayerSymbols | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True)
class ContainerStats:
    """Per-layer and total sizes of a written container; ``total_bytes`` is the file's size."""

    path: str
    version: int
    layers: tuple[LayerStats, ...]
    header_bytes: int  # fixed header + section table
    graph_bytes: int  # the graph section as stored (small tensors inside)
    graph_raw_bytes: int  # the graph's protobuf before DEFLATE
    inline_tensors: int  # initializers kept inside the graph (biases, BatchNorm, small ones)
    inline_bytes: int  # their raw size
    params_bytes_fp32: int  # every initializer of the source at its stored width: the ratio's base
    bytes_dense_fp32: int  # sums over layers
    bytes_pruned: int
    bytes_shared: int
    bytes_huffman: int  # the layers' sections and the streams section (bodies) together
    total_bytes: int  # the container file, every byte the device decodes
    decoded_bytes: int  # model.onnx + weights.bin after decoding
    sha256: str  # of the whole file
    streams: tuple[StreamStats, ...] = field(default_factory=tuple)
    stream_bytes: int = 0  # the streams section's body (stream lengths, tables, codes, padding)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ratio(self) -> float:
        return self.params_bytes_fp32 / self.total_bytes if self.total_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        out["streams"] = [stream.to_dict() for stream in self.streams]
        out["notes"] = list(self.notes)
        out["ratio"] = self.ratio
        return out


@dataclass(frozen=True)
class _Section:
    kind: int
    coding: int
    name_length: int
    body: bytes  # the name, then the kind's bytes
    dtype: int
    offset: int
    length: int
    elements: int


# --- helpers ---------------------------------------------------------------------------------


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy in bits per symbol of a uint8 array (0 for an empty one)."""
    if symbols.size == 0:
        return 0.0
    return _counts_entropy(np.bincount(symbols, minlength=256))


def _counts_entropy(counts: np.ndarray) -> float:
    """Entropy in bits per symbol of the distribution ``counts`` (0 when empty)."""
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts[counts > 0].astype(np.float64) / total
    return float(-(p * np.log2(p)).sum())


def entropy_limit_bits(counts: np.ndarray) -> float:
    """The most payload bits a stream with symbol ``counts`` may take and be within
    :data:`ENTROPY_MARGIN` of its entropy: ``(1 + margin) x n x H`` (0 for zero entropy, with
    a hair of slack for floating point)."""
    n = float(counts.sum())
    return (1 + ENTROPY_MARGIN) * n * _counts_entropy(counts) + 1e-6


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (0 for absent symbols), limited to MAX_CODE_LENGTH bits.

    A lone symbol gets length 1 (the format's one exception to a complete code). When the
    optimal code is longer than the limit (very skewed counts), the rarest counts are raised
    and the code rebuilt: a few tenths of a bit on symbols that almost never occur.
    """
    counts = counts.astype(np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    work = counts.copy()
    floor = 0
    while True:
        heap: list[tuple[int, int, list[int]]] = [(int(work[s]), int(s), [int(s)]) for s in used]
        heapq.heapify(heap)
        depth = np.zeros(counts.size, dtype=np.int64)
        tie = counts.size
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[merged] += 1
            heapq.heappush(heap, (c1 + c2, tie, merged))
            tie += 1
        if int(depth.max()) <= MAX_CODE_LENGTH:
            return depth
        floor = max(1, floor * 2, int(work[used].sum()) >> MAX_CODE_LENGTH)
        work[used] = np.maximum(work[used], floor)


def huffman_table(lengths: np.ndarray) -> bytes:
    """The stored table for per-symbol code lengths (0 = absent): see docs/container-format.md.

    Byte 0 is the alphabet size minus one, byte 1 the shortest code length (high nibble) and the
    field width w (low nibble, 1 to 4); then one w-bit field per symbol, MSB first, 0 for an
    absent symbol and ``length - shortest + 1`` otherwise, zero-padded to a byte.
    """
    alphabet = int(lengths.size)
    used = lengths[lengths > 0]
    min_len = int(used.min()) if used.size else 1
    width = max(1, (int(used.max()) - min_len + 1).bit_length()) if used.size else 1
    fields = np.where(lengths > 0, lengths - min_len + 1, 0).astype(np.int64)
    bits = ((fields[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
    body = np.packbits(bits).tobytes() if bits.size else b""
    assert len(body) + 2 == huffman_table_bytes(alphabet, width)
    return bytes([alphabet - 1, (min_len << 4) | width]) + body


def huffman_encode(symbols: np.ndarray) -> bytes:
    """A canonical Huffman stream: its table (see :func:`huffman_table`), MSB-first codes.

    The alphabet runs to the largest symbol present, so a gap stream whose gaps stay small does
    not pay for a 256-entry table.
    """
    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    counts = np.bincount(symbols, minlength=alphabet)[:alphabet]
    return _encode_with(symbols, huffman_lengths(counts))


def stream_bytes(counts: np.ndarray, version: int = FORMAT_VERSION) -> int:
    """Bytes of a stream (header, table, codes, padding) for symbol counts, without coding it.

    For format 4 and 5, of a fixed-width stream and a Huffman code of single symbols, the one
    the encoder's policy would pick (:func:`encode_stream_v4`; what blocks of symbols would
    change needs the symbols' order, not their counts).
    """
    used = np.flatnonzero(counts)
    alphabet = int(used.max()) + 1 if used.size else 1
    if version >= 4:
        fixed = _fixed_plan(counts)
        if not used.size:
            return fixed.total_bytes
        lengths = huffman_lengths(counts[:alphabet])
        huff = StreamPlan(
            1, 2, len(table_v4_bits(lengths)), int((counts[:alphabet] * lengths).sum())
        )
        plans = [fixed, huff]
        return plans[_pick(plans, entropy_limit_bits(counts))].total_bytes
    lengths = huffman_lengths(counts[:alphabet])
    return len(huffman_table(lengths)) + _ceil_bytes(int((counts[:alphabet] * lengths).sum()))


# --- format 4 and 5 streams -----------------------------------------------------------------


@dataclass(frozen=True)
class StreamPlan:
    """A format 4 or 5 stream's layout and its exact size, before any bit is written."""

    mode: int  # 0 fixed width (STREAM_FIXED), or k: Huffman over blocks of k symbols
    header_bytes: int  # 3 (mode, smallest, largest) or 2 (mode, alphabet - 1)
    table_bits: int
    payload_bits: int

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + _ceil_bytes(self.table_bits + self.payload_bits)


def _gamma(x: int) -> str:
    """Elias gamma code of ``x >= 1``: ``bit_length - 1`` zeros, then ``x`` in binary."""
    return "0" * (x.bit_length() - 1) + format(x, "b")


def table_v4_bits(lengths: np.ndarray) -> str:
    """The format 4 code-length table for per-symbol lengths (0 = no code), as a bit string.

    gamma(U), the number of symbols with a code; then per such symbol, in increasing order,
    gamma(symbol - previous symbol) (the previous of the first is -1) and its length: the first
    in 4 bits, every later one as gamma(zigzag(length - previous length) + 1), zigzag mapping
    0, -1, +1, -2, +2, ... to 0, 1, 2, 3, 4, ... Lengths of a frequency-ordered alphabet change
    slowly, so most cost 1 bit, and absent symbols cost nothing but a longer gap.
    """
    used = np.flatnonzero(lengths).tolist()
    out = [_gamma(len(used))]
    prev_sym, prev_len = -1, 0
    for j, sym in enumerate(used):
        length = int(lengths[sym])
        out.append(_gamma(sym - prev_sym))
        if j == 0:
            out.append(format(length, "04b"))
        else:
            d = length - prev_len
            out.append(_gamma((2 * d if d >= 0 else -2 * d - 1) + 1))
        prev_sym, prev_len = sym, length
    return "".join(out)


def block_symbols(symbols: np.ndarray, k: int, alphabet: int) -> np.ndarray:
    """Blocks of ``k`` symbols as one number each, the first symbol most significant; the last
    block is padded with symbol 0."""
    blocks = -(-symbols.size // k)
    padded = np.zeros(blocks * k, dtype=np.int64)
    padded[: symbols.size] = symbols
    out = np.zeros(blocks, dtype=np.int64)
    for j in range(k):
        out = out * alphabet + padded[j::k]
    return out


def _fixed_plan(counts: np.ndarray) -> StreamPlan:
    used = np.flatnonzero(counts)
    lo, hi = (int(used.min()), int(used.max())) if used.size else (0, 0)
    return StreamPlan(STREAM_FIXED, 3, 0, int(counts.sum()) * (hi - lo).bit_length())


def _huffman_plan(
    blocks: np.ndarray, counts: np.ndarray, k: int
) -> tuple[StreamPlan, np.ndarray, np.ndarray]:
    """The Huffman plan over blocks of ``k`` symbols, given the blocks and their counts."""
    lengths = huffman_lengths(counts)
    plan = StreamPlan(k, 2, len(table_v4_bits(lengths)), int((counts * lengths).sum()))
    return plan, lengths, blocks


_Candidate = tuple[StreamPlan, np.ndarray | None, np.ndarray | None]


def _pick(plans: list[StreamPlan], limit_bits: float) -> int:
    """The encoder's policy: the index of the plan to write among ``plans``.

    Plans whose payload is within ``limit_bits`` (:func:`entropy_limit_bits`) come first; among
    them, and only when none is, among all, the fewest total bytes wins, ties to the lower mode.
    """
    ok = [i for i, p in enumerate(plans) if p.payload_bits <= limit_bits]
    pool = ok or list(range(len(plans)))
    return min(pool, key=lambda i: (plans[i].total_bytes, plans[i].mode))


def _add_block_plans(
    candidates: list[_Candidate],
    symbols: np.ndarray,
    alphabet: int,
    ks: list[int],
    limit_bits: float,
    *,
    only_within: bool,
) -> None:
    """Append the Huffman plans over blocks of each ``k`` in ``ks`` that can still be chosen.

    A plan is built only when it could win under :func:`_pick`, judged by a lower bound that
    costs a bincount: its payload is at least the blocks' own entropy (no prefix code beats
    it), and its table at least 2 bits per coded block symbol. With ``only_within`` a plan
    counts only if its payload is within ``limit_bits``.
    """
    for k in ks:
        if alphabet**k > MAX_BLOCK_ALPHABET:
            continue
        blocks = block_symbols(symbols, k, alphabet)
        counts = np.bincount(blocks, minlength=alphabet**k)
        used = counts[counts > 0]
        p = used / blocks.size
        payload_floor = float(blocks.size * -(p * np.log2(p)).sum()) * (1 - 1e-9)
        floor_bits = 16 + payload_floor + 2 * used.size
        may_be_within = payload_floor <= limit_bits
        within = [8 * c[0].total_bytes for c in candidates if c[0].payload_bits <= limit_bits]
        best_within = min(within, default=math.inf)
        best_any = min((8 * c[0].total_bytes for c in candidates), default=math.inf)
        if may_be_within:
            if floor_bits >= best_within:
                continue
        elif only_within or within or floor_bits >= best_any:
            continue  # it cannot be within the limit, and cannot be the fewest bytes either
        candidates.append(_huffman_plan(blocks, counts, k))


def encode_stream_v4(
    symbols: np.ndarray, modes: tuple[int, ...] | None = None, *, max_block: int = MAX_BLOCK
) -> tuple[bytes, StreamPlan, np.ndarray]:
    """A format 4 or 5 stream for ``symbols``, in the mode the encoder's policy picks.

    Modes are 0 (fixed width) and 1 to ``max_block`` (Huffman over blocks of that many symbols,
    while the block alphabet ``A^k`` stays within 65,536); by default all of them. The policy
    (:data:`ENTROPY_MARGIN`): among the modes of blocks of at most 4 symbols (format 4's), those
    whose payload is within 2% of ``n x H`` come first and the fewest total bytes wins among
    them; only when none is within does the fewest total bytes of all of them win, and only then
    are blocks of 5 to ``max_block`` symbols (format 5's) tried, taken when one of them is
    within the 2% (again the fewest bytes of those). A container thus needs format 5 only where
    the 2% does. Ties go to the lower mode. Returns the bytes, the plan and the bits each code
    (block) takes, in order.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    if not 1 <= max_block <= MAX_BLOCK:
        raise ConfigError("max_block", f"must be between 1 and {MAX_BLOCK}, got {max_block}")
    allowed = tuple(range(max_block + 1)) if modes is None else modes
    if any(not 0 <= m <= max_block for m in allowed):
        raise ConfigError("modes", f"must be between 0 and {max_block}, got {allowed}")
    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    counts = np.bincount(symbols, minlength=alphabet)
    limit = entropy_limit_bits(counts)
    short = [k for k in allowed if 1 <= k <= _V4_BLOCK]
    long = [k for k in allowed if k > _V4_BLOCK]
    candidates: list[_Candidate] = []
    if STREAM_FIXED in allowed or not symbols.size:
        candidates.append((_fixed_plan(counts), None, None))
    if symbols.size:
        _add_block_plans(candidates, symbols, alphabet, short, limit, only_within=False)
        if long and not any(c[0].payload_bits <= limit for c in candidates):
            # with no shorter mode allowed at all (``modes`` of long blocks only), bytes decide
            fallback = bool(candidates)
            longer: list[_Candidate] = []
            _add_block_plans(longer, symbols, alphabet, long, limit, only_within=fallback)
            if fallback:
                longer = [c for c in longer if c[0].payload_bits <= limit]
            candidates = longer or candidates
    if not candidates:
        raise ConfigError("modes", f"no allowed stream mode codes these symbols: {allowed}")
    plan, lengths, blocks = candidates[_pick([c[0] for c in candidates], limit)]
    if lengths is None or blocks is None:  # fixed width
        lo = int(symbols.min()) if symbols.size else 0
        hi = int(symbols.max()) if symbols.size else 0
        width = (hi - lo).bit_length()
        offsets = symbols - lo
        bits = ((offsets[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8)
        body = np.packbits(bits.reshape(-1)).tobytes() if bits.size else b""
        return bytes([STREAM_FIXED, lo, hi]) + body, plan, np.full(symbols.size, width)
    table = np.frombuffer(table_v4_bits(lengths).encode("ascii"), dtype=np.uint8) - ord("0")
    code_bits = _code_bit_array(blocks, lengths)
    body = np.packbits(np.concatenate([table, code_bits])).tobytes()
    return bytes([plan.mode, alphabet - 1]) + body, plan, lengths[blocks]


def _code_bit_array(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The canonical codes of ``symbols`` under ``lengths``, one uint8 per bit, MSB first."""
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]
    sym_code = codes[symbols]
    starts = np.cumsum(sym_len) - sym_len
    bits = np.zeros(int(sym_len.sum()), dtype=np.uint8)
    for j in range(int(sym_len.max()) if symbols.size else 0):
        m = sym_len > j
        bits[starts[m] + j] = (sym_code[m] >> (sym_len[m] - 1 - j)) & 1
    return bits


def _encode_with(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    return huffman_table(lengths) + np.packbits(_code_bit_array(symbols, lengths)).tobytes()


def _stream_stats(
    symbols: np.ndarray,
    coded: bytes,
    role: str,
    layers: tuple[str, ...],
    plan: StreamPlan | None = None,
) -> StreamStats:
    """A stream's numbers: ``plan`` for format 4 and 5; without it, a format 2/3 stream's table."""
    h = entropy_bits(symbols)
    if plan is None:
        table_bytes = huffman_table_bytes(coded[0] + 1, coded[1] & 0x0F)
        mode, table_bits = 1, 8 * (table_bytes - 2)
        payload_bits = int(_code_lengths(coded)[symbols].sum())
    else:
        table_bytes = plan.header_bytes + _ceil_bytes(plan.table_bits)
        mode, table_bits, payload_bits = plan.mode, plan.table_bits, plan.payload_bits
    return StreamStats(
        symbols=int(symbols.size),
        distinct=int(np.unique(symbols).size),
        entropy_bits_per_symbol=h,
        entropy_bytes=symbols.size * h / 8,
        coded_bytes=len(coded),
        table_bytes=table_bytes,
        role=role,
        layers=layers,
        mode=mode,
        table_bits=table_bits,
        payload_bits=payload_bits,
    )


def _code_lengths(coded: bytes) -> np.ndarray:
    """Per-symbol code lengths (256 entries, 0 = absent) read back from a stream's table."""
    alphabet, min_len, width = coded[0] + 1, coded[1] >> 4, coded[1] & 0x0F
    field_bits = np.unpackbits(np.frombuffer(coded, dtype=np.uint8, offset=2))
    fields = np.zeros(alphabet, dtype=np.int64)
    for j in range(width):
        fields = (fields << 1) | field_bits[j : alphabet * width : width]
    out = np.zeros(256, dtype=np.int64)
    out[:alphabet] = np.where(fields > 0, fields + min_len - 1, 0)
    return out


def _layer_symbols(symbols: np.ndarray, stream: int, code_bits: int) -> LayerSymbols:
    h = entropy_bits(symbols)
    return LayerSymbols(
        stream=stream,
        symbols=int(symbols.size),
        distinct=int(np.unique(symbols).size),
        entropy_bits_per_symbol=h,
        entropy_bytes=symbols.size * h / 8,
        code_bits=code_bits,
    )


def frequency_ordered_codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook, indices)`` for non-zero weights, the most frequent value first.

    Ties go to the smaller value. Ordering by frequency makes every layer's cluster-index
    distribution decreasing, so the layers' distributions line up and one Huffman code serves
    many of them at little cost.
    """
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    order = np.lexsort((distinct, -counts))  # by count descending, then value ascending
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return distinct[order], rank[inverse.reshape(-1)].astype(np.uint8)


def best_index_bits(positions: np.ndarray, version: int = FORMAT_VERSION) -> int:
    """The relative-index width (1 to 8 bits) whose gap stream codes in the fewest bytes."""
    costs = [
        stream_bytes(np.bincount(relative_indices(positions, b), minlength=256), version)
        for b in range(1, MAX_INDEX_BITS + 1)
    ]
    return int(np.argmin(costs)) + 1


def group_streams(
    counts: list[np.ndarray], *, section_bytes: int = 4, version: int = FORMAT_VERSION
) -> list[list[int]]:
    """Greedy grouping of same-role symbol sets into shared streams, fewest bytes first.

    Starts from one stream per set and repeatedly makes the merge that saves the most bytes
    (a table and a section entry saved, against the bits a code shared by two distributions
    costs), while any merge saves bytes and the merged stream stays under
    ``MAX_STREAM_SYMBOLS``. Groups are returned in the order of their first member, members in
    order.
    """
    groups = [[i] for i in range(len(counts))]
    cnt = [c.astype(np.int64) for c in counts]
    cost = [stream_bytes(c, version) + section_bytes for c in cnt]
    saving: dict[tuple[int, int], int] = {}

    def pair(a: int, b: int) -> None:
        if int(cnt[a].sum() + cnt[b].sum()) > MAX_STREAM_SYMBOLS:
            return
        merged = stream_bytes(cnt[a] + cnt[b], version) + section_bytes
        saving[(a, b)] = cost[a] + cost[b] - merged

    alive = set(range(len(groups)))
    for a in alive:
        for b in alive:
            if a < b:
                pair(a, b)
    while saving:
        (a, b), best = max(saving.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if best <= 0:
            break
        groups[a] += groups[b]
        cnt[a] = cnt[a] + cnt[b]
        cost[a] = stream_bytes(cnt[a], version) + section_bytes
        alive.discard(b)
        saving = {k: v for k, v in saving.items() if a not in k and b not in k}
        for other in alive:
            if other != a:
                pair(min(a, other), max(a, other))
    return sorted((sorted(groups[g]) for g in alive), key=lambda g: g[0])


def relative_indices(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """The gap stream for sorted flat positions: gaps of ``index_bits`` bits with fillers.

    ``span = 2**index_bits - 1`` is the filler symbol. A cursor starts at 0; a real entry with gap
    ``g < span`` places the next weight at ``cursor + g`` and moves the cursor one past it; a
    filler moves the cursor by ``span`` and places nothing (the paper stores a zero weight for
    it; here the gap alone says it is a filler, so the cluster-index stream holds exactly the
    non-zeros).
    """
    span = (1 << index_bits) - 1
    prev = np.concatenate(([0], positions[:-1] + 1)) if positions.size else positions
    d = positions - prev
    fillers = d // span
    rest = d - fillers * span
    counts = fillers + 1
    out = np.repeat(np.full(positions.size, span, dtype=np.int64), counts)
    ends = np.cumsum(counts) - 1
    out[ends] = rest
    return out.astype(np.uint8)


def _ceil_bytes(bits: int) -> int:
    return (bits + 7) // 8


def _weight_kinds(model: onnx.ModelProto) -> dict[str, str]:
    inits = {t.name for t in model.graph.initializer}
    kinds: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in _WEIGHT_INPUTS:
            kind, idx = _WEIGHT_INPUTS[node.op_type]
            if len(node.input) > idx and node.input[idx] in inits:
                kinds.setdefault(node.input[idx], kind)
        elif node.op_type == "MatMul":
            for name in node.input:
                if name in inits:
                    kinds.setdefault(name, "fc")
    return kinds


def _minify_graph(model: onnx.ModelProto) -> None:
    """Drop what the graph carries only for humans: node names, doc strings, long value names.

    The exporter names every intermediate value after its module path
    (``/features/features.1/Relu_output_0``); for a LeNet those names are a third of the stored
    graph, as much as its biases. Intermediate values are renamed to short ones (``v0``, ``v1``,
    ...) in node order; the graph's inputs, outputs and initializers keep their names, so the
    decoded model is fed and read like the original and its weights stay findable by name.
    Computation is untouched: the same nodes, in the same order, with the same attributes.
    """
    graph = model.graph
    model.doc_string = ""
    graph.doc_string = ""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    keep |= {t.name for t in graph.initializer} | {""}
    rename: dict[str, str] = {}
    for node in graph.node:
        for out in node.output:
            if out not in keep and out not in rename:
                rename[out] = f"v{len(rename)}"
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)
        info.doc_string = ""


def _deflate(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return comp.compress(data) + comp.flush()


# --- the encoder -----------------------------------------------------------------------------


@dataclass
class _Tensor:
    """A large weight tensor on its way into a section."""

    name: str
    name_bytes: bytes
    kind: str  # conv | fc
    shape: tuple[int, ...]
    dtype: int
    raw: bytes  # row-major little-endian elements
    elements: int
    offset: int  # in weights.bin
    nonzero: int
    index_bits: int
    gaps: np.ndarray
    codebook: np.ndarray | None = None  # float32, most frequent first; None: stored raw
    values: np.ndarray | None = None  # cluster index of every non-zero weight


def _shared_estimate(t: _Tensor, version: int) -> int:
    """The shared section's bytes with a stream (and table) of its own for each role."""
    assert t.codebook is not None and t.values is not None
    head = STREAMED_HEADER.size if version >= 3 else SHARED_HEADER.size
    return (
        len(t.name_bytes)
        + head
        + 4 * t.codebook.size
        + stream_bytes(np.bincount(t.values, minlength=256), version)
        + stream_bytes(np.bincount(t.gaps, minlength=256), version)
    )


def encode_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    index_bits: int | None = None,
    conv_index_bits: int = 8,
    fc_index_bits: int = 5,
    max_codebook_bits: int = 8,
    min_elements: int = 64,
    format_version: int = FORMAT_VERSION,
) -> ContainerStats:
    """Write the container for ``onnx_path`` to ``out_path`` and return its sizes.

    ``index_bits`` (when given) sets the relative-index width of every layer; otherwise conv
    layers use ``conv_index_bits`` and fully connected ones ``fc_index_bits`` (the paper's 8 and
    5). A width of 0 chooses, per layer, the width whose gap stream codes in the fewest bytes.
    A tensor with more than ``2**max_codebook_bits`` distinct non-zero values is stored raw.
    ``format_version`` is the newest container format the writer may use, and it writes the
    lowest that carries the container: with the default (5) that is version 4 unless a stream
    codes blocks of 5 to 8 symbols (what the encoder does only where no shorter block gets the
    stream within :data:`ENTROPY_MARGIN` of its entropy). 4 never writes such blocks (for agents
    before 0.8.0); 3 writes format 3's single-symbol streams, shared between layers; 2 writes
    every layer's two streams inside its own section, for a decoder that reads version 2 only.
    ``ContainerStats.version`` is the version written.
    """
    if index_bits is not None:
        conv_index_bits = fc_index_bits = index_bits
    for name, value in (("conv_index_bits", conv_index_bits), ("fc_index_bits", fc_index_bits)):
        if not 0 <= value <= MAX_INDEX_BITS:
            raise ConfigError(
                name, f"must be between 1 and {MAX_INDEX_BITS} bits (0: per layer), got {value}"
            )
    max_k_bits = int(math.log2(MAX_CODEBOOK_SIZE))
    if not 1 <= max_codebook_bits <= max_k_bits:
        raise ConfigError(
            "max_codebook_bits", f"must be between 1 and {max_k_bits} bits, got {max_codebook_bits}"
        )
    if min_elements < 1:
        raise ConfigError("min_elements", f"must be at least 1, got {min_elements}")
    if format_version not in SUPPORTED_VERSIONS:
        raise ConfigError(
            "format_version", f"must be one of {list(SUPPORTED_VERSIONS)}, got {format_version}"
        )
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise InvalidModelError(f"{onnx_path.name} is not a readable ONNX model: {exc}") from exc
    kinds = _weight_kinds(model)
    params_bytes = 0
    inline_tensors = inline_bytes = 0
    tensors: list[_Tensor] = []
    data_length = 0
    for tensor in model.graph.initializer:
        arr = numpy_helper.to_array(tensor)
        params_bytes += int(arr.nbytes)
        kind = kinds.get(tensor.name, "other")
        if tensor.data_type not in ONNX_DTYPES or kind == "other" or arr.size < min_elements:
            inline_tensors += 1
            inline_bytes += int(arr.nbytes)
            continue
        flat = np.ascontiguousarray(arr).reshape(-1)
        nz_mask = flat != 0
        positions = np.flatnonzero(nz_mask).astype(np.int64)
        bits = conv_index_bits if kind == "conv" else fc_index_bits
        if bits == 0:
            bits = best_index_bits(positions, format_version)
        raw = flat.astype(ONNX_DTYPES[tensor.data_type][0], copy=False).tobytes()
        offset = -(-data_length // DATA_ALIGNMENT) * DATA_ALIGNMENT
        t = _Tensor(
            name=tensor.name,
            name_bytes=tensor.name.encode("utf-8"),
            kind=kind,
            shape=tuple(int(d) for d in arr.shape),
            dtype=tensor.data_type,
            raw=raw,
            elements=int(flat.size),
            offset=offset,
            nonzero=int(positions.size),
            index_bits=bits,
            gaps=relative_indices(positions, bits),
        )
        shareable = tensor.data_type == ONNX_FLOAT and bool(np.isfinite(flat).all())
        if shareable and np.unique(flat[nz_mask]).size <= (1 << max_codebook_bits):
            if t.nonzero:
                t.codebook, t.values = frequency_ordered_codebook(flat[nz_mask])
            else:
                t.codebook, t.values = np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.uint8)
            if _shared_estimate(t, format_version) >= len(t.name_bytes) + len(raw):
                t.codebook = t.values = None  # a few hundred weights and a large codebook
        tensors.append(t)
        data_length = offset + len(raw)
        # The graph keeps the tensor's name, type and shape and points at weights.bin.
        dims = list(tensor.dims)
        data_type = tensor.data_type
        tensor.Clear()
        tensor.name = t.name
        tensor.data_type = data_type
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, text in (
            ("location", DATA_FILE_NAME),
            ("offset", str(offset)),
            ("length", str(len(raw))),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, text

    shared = [t for t in tensors if t.codebook is not None]
    # Streams: per role, groups of shared tensors (one per tensor in version 2).
    plan: list[tuple[str, list[_Tensor]]] = []
    for role in ("values", "gaps"):
        if format_version >= 3:
            groups = group_streams(
                [np.bincount(getattr(t, role), minlength=256) for t in shared],
                version=format_version,
            )
        else:
            groups = [[i] for i in range(len(shared))]
        plan += [(role, [shared[i] for i in g]) for g in groups]
    plan.sort(key=lambda rg: (tensors.index(rg[1][0]), rg[0] != "values"))
    if format_version >= 3 and len(plan) > MAX_STREAMS:
        raise InvalidModelError(
            f"{onnx_path.name} needs {len(plan)} Huffman streams; a container holds at most "
            f"{MAX_STREAMS}."
        )
    stream_of: dict[tuple[str, str], int] = {}
    stream_stats: list[StreamStats] = []
    stream_bodies: list[tuple[bytes, int]] = []  # (body, symbols)
    coded_by_layer: dict[tuple[str, str], bytes] = {}
    layer_syms: dict[tuple[str, str], LayerSymbols] = {}
    for sid, (role, members) in enumerate(plan):
        stream = np.concatenate([getattr(t, role) for t in members])
        names = tuple(t.name for t in members)
        if format_version >= 4:
            coded, plan4, code_bits = encode_stream_v4(
                stream, max_block=MAX_BLOCK_BY_VERSION[format_version]
            )
            stream_stats.append(_stream_stats(stream, coded, role, names, plan4))
            # a code (of a block of k symbols) counts for the layer its first symbol is in
            per = max(plan4.mode, 1)
            ends = np.cumsum([getattr(t, role).size for t in members])
            first_block = -(-np.concatenate(([0], ends)) // per)
            bits_of = [int(code_bits[a:b].sum()) for a, b in itertools.pairwise(first_block)]
        else:
            coded = huffman_encode(stream)
            lengths = _code_lengths(coded)
            stream_stats.append(_stream_stats(stream, coded, role, names))
            bits_of = [int(lengths[getattr(t, role)].sum()) for t in members]
        stream_bodies.append((coded, int(stream.size)))
        for t, layer_bits in zip(members, bits_of, strict=True):
            stream_of[(t.name, role)] = sid
            coded_by_layer[(t.name, role)] = coded
            layer_syms[(t.name, role)] = _layer_symbols(getattr(t, role), sid, layer_bits)

    # The lowest version that carries the container: 5 only for a block of more than 4 symbols.
    version = format_version
    if format_version >= 4:
        version = 5 if any(st.mode > MAX_BLOCK_BY_VERSION[4] for st in stream_stats) else 4
    sections: list[_Section] = []
    layers: list[LayerStats] = []
    for t in tensors:
        fillers = int(t.gaps.size - t.nonzero)
        dense_fp32 = t.elements * 4
        bytes_pruned = _ceil_bytes(t.nonzero * 32 + t.gaps.size * t.index_bits)
        common: dict[str, Any] = {
            "name": t.name,
            "kind": t.kind,
            "shape": t.shape,
            "weights": t.elements,
            "nonzero": t.nonzero,
            "index_bits": t.index_bits,
            "entries": int(t.gaps.size),
            "filler_entries": fillers,
            "bytes_dense_fp32": dense_fp32,
            "bytes_pruned": bytes_pruned,
        }
        if t.codebook is None or t.values is None:
            body = t.name_bytes + t.raw
            sections.append(
                _Section(
                    KIND_RAW,
                    CODING_STORED,
                    len(t.name_bytes),
                    body,
                    t.dtype,
                    t.offset,
                    len(t.raw),
                    t.elements,
                )
            )
            layers.append(
                LayerStats(
                    **common,
                    stored_as="raw",
                    codebook_size=0,
                    codebook_bits=0,
                    bytes_shared=len(t.raw),
                    bytes_huffman=len(body),
                )
            )
            continue
        k = int(t.codebook.size)
        if format_version >= 3:
            head = STREAMED_HEADER.pack(
                k,
                t.index_bits,
                0,
                t.nonzero,
                t.gaps.size,
                stream_of[(t.name, "values")],
                stream_of[(t.name, "gaps")],
            )
            tail = b""
            coding = CODING_STREAMS
        else:
            v_stream, g_stream = (
                coded_by_layer[(t.name, "values")],
                coded_by_layer[(t.name, "gaps")],
            )
            head = SHARED_HEADER.pack(
                k, t.index_bits, 0, t.nonzero, t.gaps.size, len(v_stream), len(g_stream)
            )
            tail = v_stream + g_stream
            coding = CODING_HUFFMAN
        body = t.name_bytes + head + t.codebook.astype("<f4").tobytes() + tail
        sections.append(
            _Section(
                KIND_SHARED,
                coding,
                len(t.name_bytes),
                body,
                t.dtype,
                t.offset,
                len(t.raw),
                t.elements,
            )
        )
        v, g = layer_syms[(t.name, "values")], layer_syms[(t.name, "gaps")]
        k_bits = max(1, math.ceil(math.log2(k)))
        own = (
            len(body) if format_version < 3 else len(body) + _ceil_bytes(v.code_bits + g.code_bits)
        )
        layers.append(
            LayerStats(
                **common,
                stored_as="shared",
                codebook_size=k,
                codebook_bits=k_bits,
                bytes_shared=_ceil_bytes(t.nonzero * k_bits + t.gaps.size * t.index_bits) + 4 * k,
                bytes_huffman=own,
                values=v,
                gaps=g,
            )
        )

    _minify_graph(model)
    graph_raw = model.SerializeToString()
    graph_deflated = _deflate(graph_raw)
    if len(graph_deflated) < len(graph_raw):
        graph_body, graph_coding = graph_deflated, CODING_DEFLATE
    else:
        graph_body, graph_coding = graph_raw, CODING_STORED
    all_sections = [_Section(KIND_GRAPH, graph_coding, 0, graph_body, 0, 0, len(graph_raw), 0)]
    streams_body = b""
    if format_version >= 3 and stream_bodies:
        streams_body = (
            bytes([len(stream_bodies)])
            + struct.pack(f"<{len(stream_bodies)}I", *(len(b) for b, _ in stream_bodies))
            + b"".join(b for b, _ in stream_bodies)
        )
        total_symbols = sum(n for _, n in stream_bodies)
        all_sections.append(
            _Section(KIND_STREAM, CODING_HUFFMAN, 0, streams_body, 0, 0, 0, total_symbols)
        )
    all_sections += sections
    if data_length + len(graph_raw) >= 1 << 32 or sum(len(s.body) for s in all_sections) >= 1 << 31:
        raise InvalidModelError(
            f"{onnx_path.name} is too large for a container: format version {version} "
            "stores sizes in 32 bits (4 GiB), and the decoder's caps are lower still."
        )
    table = b"".join(
        SECTION_ENTRY.pack(
            s.kind, s.coding, s.name_length, s.dtype, len(s.body), s.offset, s.length, s.elements, 0
        )
        for s in all_sections
    )
    payload = table + b"".join(s.body for s in all_sections)
    header = HEADER.pack(
        MAGIC,
        version,
        HEADER_SIZE,
        len(all_sections),
        len(payload),
        len(graph_raw),
        data_length,
        hashlib.sha256(payload).digest(),
    )
    blob = header + payload
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out_path)
    streams_total = len(streams_body)
    return ContainerStats(
        path=str(out_path),
        version=version,
        layers=tuple(layers),
        header_bytes=HEADER_SIZE + len(table),
        graph_bytes=len(graph_body),
        graph_raw_bytes=len(graph_raw),
        inline_tensors=inline_tensors,
        inline_bytes=inline_bytes,
        params_bytes_fp32=params_bytes,
        bytes_dense_fp32=sum(layer.bytes_dense_fp32 for layer in layers),
        bytes_pruned=sum(layer.bytes_pruned for layer in layers),
        bytes_shared=sum(layer.bytes_shared for layer in layers),
        bytes_huffman=sum(len(s.body) for s in sections) + streams_total,
        total_bytes=len(blob),
        decoded_bytes=len(graph_raw) + data_length,
        sha256=hashlib.sha256(blob).hexdigest(),
        streams=tuple(stream_stats),
        stream_bytes=streams_total,
    )
