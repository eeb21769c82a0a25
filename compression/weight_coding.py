"""Write an EdgeSlim compressed container from an ONNX model (Deep Compression's last two steps).

Per large weight tensor (a Conv or Gemm/MatMul weight of at least ``min_elements`` values):

- if it has at most ``2**max_codebook_bits`` distinct non-zero values (a layer that
  ``weight_sharing`` clustered), it is stored as a codebook, the cluster index of every non-zero
  weight, and the weight's position as a relative index: the gap since the previous entry in
  ``index_bits`` bits, with a filler entry when a gap overflows (Han et al. 2016, section 2);
  both streams are coded with a canonical Huffman code of their own (one table per stream), which
  the tests hold to within 2% of the empirical entropy of the symbols plus the table;
- otherwise, or when the shared form would be larger, the tensor is stored raw.

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
import math
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
    DATA_FILE_NAME,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    KIND_GRAPH,
    KIND_RAW,
    KIND_SHARED,
    MAGIC,
    MAX_CODE_LENGTH,
    MAX_CODEBOOK_SIZE,
    MAX_INDEX_BITS,
    ONNX_DTYPES,
    ONNX_FLOAT,
    SECTION_ENTRY,
    SHARED_HEADER,
    canonical_codes,
    huffman_table_bytes,
)
from compression.errors import ConfigError, InvalidModelError

DATA_ALIGNMENT = 64  # every tensor starts on a 64-byte boundary of weights.bin
_WEIGHT_INPUTS = {"Conv": ("conv", 1), "ConvTranspose": ("conv", 1), "Gemm": ("fc", 1)}


@dataclass(frozen=True)
class StreamStats:
    """One Huffman-coded stream: its symbols, their empirical entropy and the bytes stored."""

    symbols: int
    distinct: int
    entropy_bits_per_symbol: float
    entropy_bytes: float  # symbols x entropy / 8: what an ideal entropy coder would need
    coded_bytes: int  # the stream as stored, its Huffman table included
    table_bytes: int  # of which the table (alphabet size and code lengths)

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
    bytes_huffman: int  # bytes of the layer's section in the file (name and header included)
    values: StreamStats | None = None
    gaps: StreamStats | None = None

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
    bytes_huffman: int
    total_bytes: int  # the container file, every byte the device decodes
    decoded_bytes: int  # model.onnx + weights.bin after decoding
    sha256: str  # of the whole file
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ratio(self) -> float:
        return self.params_bytes_fp32 / self.total_bytes if self.total_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [layer.to_dict() for layer in self.layers]
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
    counts = np.bincount(symbols, minlength=256).astype(np.float64)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


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
    lengths = huffman_lengths(counts)
    codes = canonical_codes(lengths)
    table = huffman_table(lengths)
    sym_len = lengths[symbols]
    sym_code = codes[symbols]
    starts = np.cumsum(sym_len) - sym_len
    bits = np.zeros(int(sym_len.sum()), dtype=np.uint8)
    for j in range(int(sym_len.max()) if symbols.size else 0):
        m = sym_len > j
        bits[starts[m] + j] = (sym_code[m] >> (sym_len[m] - 1 - j)) & 1
    return table + np.packbits(bits).tobytes()


def _stream_stats(symbols: np.ndarray, coded: bytes) -> StreamStats:
    h = entropy_bits(symbols)
    return StreamStats(
        symbols=int(symbols.size),
        distinct=int(np.unique(symbols).size),
        entropy_bits_per_symbol=h,
        entropy_bytes=symbols.size * h / 8,
        coded_bytes=len(coded),
        table_bytes=huffman_table_bytes(coded[0] + 1, coded[1] & 0x0F),
    )


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


def encode_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    index_bits: int | None = None,
    conv_index_bits: int = 8,
    fc_index_bits: int = 5,
    max_codebook_bits: int = 8,
    min_elements: int = 64,
) -> ContainerStats:
    """Write the container for ``onnx_path`` to ``out_path`` and return its sizes.

    ``index_bits`` (when given) sets the relative-index width of every layer; otherwise conv
    layers use ``conv_index_bits`` and fully connected ones ``fc_index_bits`` (the paper's 8 and
    5). A tensor with more than ``2**max_codebook_bits`` distinct non-zero values is stored raw.
    """
    if index_bits is not None:
        conv_index_bits = fc_index_bits = index_bits
    for name, value in (("conv_index_bits", conv_index_bits), ("fc_index_bits", fc_index_bits)):
        if not 1 <= value <= MAX_INDEX_BITS:
            raise ConfigError(name, f"must be between 1 and {MAX_INDEX_BITS} bits, got {value}")
    max_k_bits = int(math.log2(MAX_CODEBOOK_SIZE))
    if not 1 <= max_codebook_bits <= max_k_bits:
        raise ConfigError(
            "max_codebook_bits", f"must be between 1 and {max_k_bits} bits, got {max_codebook_bits}"
        )
    if min_elements < 1:
        raise ConfigError("min_elements", f"must be at least 1, got {min_elements}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise InvalidModelError(f"{onnx_path.name} is not a readable ONNX model: {exc}") from exc
    kinds = _weight_kinds(model)
    params_bytes = 0
    inline_tensors = inline_bytes = 0
    layers: list[LayerStats] = []
    sections: list[_Section] = []
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
        nonzero = int(nz_mask.sum())
        bits = conv_index_bits if kind == "conv" else fc_index_bits
        name_bytes = tensor.name.encode("utf-8")
        raw = flat.astype(ONNX_DTYPES[tensor.data_type][0], copy=False).tobytes()
        raw_body = name_bytes + raw
        dense_fp32 = flat.size * 4
        positions = np.flatnonzero(nz_mask).astype(np.int64)
        gaps = relative_indices(positions, bits)
        fillers = int(gaps.size - nonzero)
        bytes_pruned = _ceil_bytes(nonzero * 32 + gaps.size * bits)
        stats: LayerStats | None = None
        body = raw_body
        section_kind, coding = KIND_RAW, CODING_STORED
        shareable = tensor.data_type == ONNX_FLOAT and bool(np.isfinite(flat).all())
        codebook = np.unique(flat[nz_mask]) if shareable else np.empty(0)
        if shareable and codebook.size <= (1 << max_codebook_bits):
            if codebook.size == 0:
                codebook = np.zeros(1, dtype=np.float32)
            values = np.searchsorted(codebook, flat[nz_mask]).astype(np.uint8)
            v_stream, g_stream = huffman_encode(values), huffman_encode(gaps)
            shared_body = (
                name_bytes
                + SHARED_HEADER.pack(
                    codebook.size, bits, 0, nonzero, gaps.size, len(v_stream), len(g_stream)
                )
                + codebook.astype("<f4").tobytes()
                + v_stream
                + g_stream
            )
            k_bits = max(1, math.ceil(math.log2(codebook.size)))
            bytes_shared = _ceil_bytes(nonzero * k_bits + gaps.size * bits) + 4 * codebook.size
            if len(shared_body) < len(raw_body):
                body, section_kind, coding = shared_body, KIND_SHARED, CODING_HUFFMAN
                stats = LayerStats(
                    name=tensor.name,
                    kind=kind,
                    shape=tuple(int(d) for d in arr.shape),
                    weights=int(flat.size),
                    nonzero=nonzero,
                    stored_as="shared",
                    codebook_size=int(codebook.size),
                    codebook_bits=k_bits,
                    index_bits=bits,
                    entries=int(gaps.size),
                    filler_entries=fillers,
                    bytes_dense_fp32=dense_fp32,
                    bytes_pruned=bytes_pruned,
                    bytes_shared=bytes_shared,
                    bytes_huffman=len(shared_body),
                    values=_stream_stats(values, v_stream),
                    gaps=_stream_stats(gaps, g_stream),
                )
        if stats is None:
            stats = LayerStats(
                name=tensor.name,
                kind=kind,
                shape=tuple(int(d) for d in arr.shape),
                weights=int(flat.size),
                nonzero=nonzero,
                stored_as="raw",
                codebook_size=0,
                codebook_bits=0,
                index_bits=bits,
                entries=int(gaps.size),
                filler_entries=fillers,
                bytes_dense_fp32=dense_fp32,
                bytes_pruned=bytes_pruned,
                bytes_shared=len(raw),
                bytes_huffman=len(raw_body),
            )
        layers.append(stats)
        offset = -(-data_length // DATA_ALIGNMENT) * DATA_ALIGNMENT
        sections.append(
            _Section(
                section_kind,
                coding,
                len(name_bytes),
                body,
                tensor.data_type,
                offset,
                len(raw),
                int(flat.size),
            )
        )
        data_length = offset + len(raw)
        # The graph keeps the tensor's name, type and shape and points at weights.bin.
        dims = list(tensor.dims)
        data_type = tensor.data_type
        tensor.Clear()
        tensor.name = name_bytes.decode("utf-8")
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
    _minify_graph(model)
    graph_raw = model.SerializeToString()
    graph_deflated = _deflate(graph_raw)
    if len(graph_deflated) < len(graph_raw):
        graph_body, graph_coding = graph_deflated, CODING_DEFLATE
    else:
        graph_body, graph_coding = graph_raw, CODING_STORED
    all_sections = [_Section(KIND_GRAPH, graph_coding, 0, graph_body, 0, 0, len(graph_raw), 0)]
    all_sections += sections
    if data_length + len(graph_raw) >= 1 << 32 or sum(len(s.body) for s in all_sections) >= 1 << 31:
        raise InvalidModelError(
            f"{onnx_path.name} is too large for a container: format version {FORMAT_VERSION} "
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
        FORMAT_VERSION,
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
    return ContainerStats(
        path=str(out_path),
        version=FORMAT_VERSION,
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
        bytes_huffman=sum(layer.bytes_huffman for layer in layers),
        total_bytes=len(blob),
        decoded_bytes=len(graph_raw) + data_length,
        sha256=hashlib.sha256(blob).hexdigest(),
    )
