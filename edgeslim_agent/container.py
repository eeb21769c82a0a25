"""The EdgeSlim compressed container (Deep Compression's file): format constants and the decoder.

A container holds an ONNX graph whose large weight tensors were taken out and stored either
raw or, for a weight-shared layer, as a codebook plus its symbols in two Huffman-coded streams:
the cluster index of every non-zero weight and its position as a relative index (a gap of
``index_bits`` bits, with filler entries when a gap overflows). Since format version 3 the
streams are sections of their own, each shared by every layer of one kind (one code table for
all of them); version 2 kept two streams inside every layer's section and is still read.
Version 4 gives every stream a compact, delta-coded table and lets it code blocks of 2 to 4
symbols as one (extended-alphabet Huffman) or store fixed-width symbols. Version 5 is version 4
with blocks of up to 8 symbols; the writer uses it only for a container that has such a block
(a low-entropy stream that no shorter block codes within 2% of its entropy), and writes version 4
otherwise. Versions 2 to 5 are read.
``docs/container-format.md`` describes the bytes; :mod:`compression.weight_coding` writes them;
this module reads them back.

Why the decoder needs no onnx package: the stored graph already refers to its large tensors as
ONNX external data (``location=weights.bin, offset, length``), so decoding is writing the graph
bytes verbatim next to a ``weights.bin`` rebuilt from the sections. ONNX Runtime loads the
pair as it loads any model with external data.

It lives in the agent's package (``edgeslim_agent``) because the device decodes containers; the
studio imports it from here (``compression.container`` is the same module). It must stay
self-contained like :mod:`edgeslim_agent.latency`: the device has numpy, the standard library,
onnxruntime and the agent only. Every refusal is a :class:`ContainerError` whose message is a sentence,
and every size a section declares is checked against :class:`DecodeCaps` before anything is
allocated, so a small hostile file cannot make the decoder allocate gigabytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# --- format constants ------------------------------------------------------------------------

MAGIC = b"ESDC\r\n\x1a\n"  # like PNG's: a text-mode transfer or a truncation to 7 bits shows
# Version 2 narrowed version 1's 64-bit sizes to 32 bits (every cap below is under 4 GiB) and
# the dtype and reserved fields to a byte: the same fields in the same order, 72 -> 60 bytes of
# header, 48 -> 22 per section and 36 -> 20 per shared tensor. On a LeNet-5 container of 5 KB
# that is 250 bytes (5%) of bookkeeping. A version 1 file is refused like any unknown version.
# Version 3 adds one thing: Huffman streams as sections of their own (kind 4), shared by many
# weight-shared tensors (coding 3), so a small layer no longer pays for two code tables. Every
# version 2 file is a valid version 3 file but for its version number, so both are read.
# Version 4 changes one thing: the layout of a Huffman stream. Its code-length table is sparse
# and delta coded (Elias gamma) instead of a fixed-width field per symbol, its codes follow the
# table without byte alignment, and a stream may code blocks of 2 to 4 symbols as one
# extended-alphabet symbol (a skewed stream's whole-bit Huffman redundancy shrinks with the
# block) or store its symbols at a fixed width with no table. Versions 2 and 3 are still read.
# Version 5 changes one thing: a stream's block may be 5 to 8 symbols long (mode bytes 5 to 8;
# the extended alphabet A^k stays within MAX_BLOCK_ALPHABET and codes within 15 bits), so a
# binary stream of entropy well under a bit per symbol codes within a few percent of it. The
# writer writes the lowest version that can carry the container: 5 only when a stream uses such
# a block, and a version 4 file never does (a decoder refuses modes 5 to 8 there).
FORMAT_VERSION = 5  # the newest version, which the writer uses only when it must
SUPPORTED_VERSIONS = (2, 3, 4, 5)
HEADER = struct.Struct(
    "<8sHHIIII32s"
)  # magic, version, header length, sections, payload, graph, data, sha256
HEADER_SIZE = HEADER.size  # 60
SECTION_ENTRY = struct.Struct(
    "<BBHBIIIIB"
)  # kind, coding, name length, dtype, body, offset, length, elements, reserved
SECTION_ENTRY_SIZE = SECTION_ENTRY.size  # 22
SHARED_HEADER = struct.Struct(
    "<HBBIIII"
)  # codebook size, index bits, reserved, nonzero, entries, values len, gaps len
SHARED_HEADER_SIZE = SHARED_HEADER.size  # 20
STREAMED_HEADER = struct.Struct(
    "<HBBIIBB"
)  # codebook size, index bits, reserved, nonzero, entries, values stream, gaps stream
STREAMED_HEADER_SIZE = STREAMED_HEADER.size  # 14

KIND_GRAPH = 1
KIND_RAW = 2
KIND_SHARED = 3
KIND_STREAM = 4  # version 3: the canonical Huffman streams that weight-shared tensors draw from
KIND_NAMES = {KIND_GRAPH: "graph", KIND_RAW: "raw", KIND_SHARED: "shared", KIND_STREAM: "streams"}

CODING_STORED = 0
CODING_DEFLATE = 1  # raw DEFLATE (RFC 1951, no zlib wrapper): the graph, and raw tensors
CODING_HUFFMAN = 2  # canonical Huffman: a stream section, or a tensor's own two streams (v2)
CODING_STREAMS = 3  # version 3: a weight-shared tensor whose symbols are in stream sections
CODING_NAMES = {
    CODING_STORED: "stored",
    CODING_DEFLATE: "deflate",
    CODING_HUFFMAN: "huffman",
    CODING_STREAMS: "streams",
}
STREAM_FIXED = 0  # version 4+ stream mode: fixed-width symbols, no table (k >= 1: block length)
# The longest block (symbols per extended-alphabet Huffman symbol) each stream layout allows.
MAX_BLOCK_BY_VERSION = {4: 4, 5: 8}
MAX_BLOCK = MAX_BLOCK_BY_VERSION[FORMAT_VERSION]  # 8, in version 5
MAX_BLOCK_ALPHABET = 1 << 16  # version 4+: A^k, the extended alphabet, is at most 65,536 symbols
MAX_STREAMS = 255  # the streams section counts its streams in a byte; tensors name them in one
ROLE_VALUES, ROLE_GAPS = "cluster-index", "relative-index"

GRAPH_FILE_NAME = "model.onnx"
DATA_FILE_NAME = "weights.bin"  # the location every external-data entry of the graph names

MAX_INDEX_BITS = 8  # gap symbols are bytes
MAX_CODEBOOK_SIZE = 256  # cluster indices are bytes

# ONNX TensorProto.DataType -> (numpy dtype, bytes per element); the ones a container may hold.
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    1: ("<f4", 4),  # FLOAT
    2: ("u1", 1),  # UINT8
    3: ("i1", 1),  # INT8
    4: ("<u2", 2),  # UINT16
    5: ("<i2", 2),  # INT16
    6: ("<i4", 4),  # INT32
    7: ("<i8", 8),  # INT64
    9: ("u1", 1),  # BOOL
    10: ("<f2", 2),  # FLOAT16
    11: ("<f8", 8),  # DOUBLE
    12: ("<u4", 4),  # UINT32
    13: ("<u8", 8),  # UINT64
}
ONNX_FLOAT = 1


class ContainerError(ValueError):
    """A container is refused: truncated, corrupt, of an unknown version, or over a cap."""


@dataclass(frozen=True)
class DecodeCaps:
    """Limits checked against the declared sizes before the decoder allocates anything."""

    max_container_bytes: int = 1 << 30
    max_decoded_bytes: int = 2 << 30  # graph + weights.bin together
    max_graph_bytes: int = 256 << 20
    max_sections: int = 100_000
    max_tensor_elements: int = 1 << 28  # per section
    max_total_elements: int = 1 << 29  # all sections together


@dataclass(frozen=True)
class SectionEntry:
    """One row of the section table, as stored (see docs/container-format.md)."""

    kind: int
    coding: int
    name_length: int
    dtype: int
    body_length: int
    out_offset: int
    out_length: int
    elements: int


@dataclass(frozen=True)
class ContainerHeader:
    version: int
    section_count: int
    payload_length: int
    graph_length: int
    data_length: int
    sha256: str


@dataclass(frozen=True)
class SectionInfo:
    """What the decoder found in one section (for reports and the agent's result)."""

    name: str
    kind: str  # graph | raw | shared
    coding: str
    stored_bytes: int  # body length in the container
    decoded_bytes: int
    elements: int = 0
    nonzero: int = 0
    codebook_size: int = 0
    index_bits: int = 0
    entries: int = 0
    filler_entries: int = 0


@dataclass(frozen=True)
class DecodedModel:
    """The ONNX a container became, and what decoding it cost."""

    onnx_path: Path
    data_path: Path | None
    container_bytes: int
    onnx_bytes: int  # graph + weights.bin, the size of the ONNX it became
    decode_seconds: float
    peak_alloc_bytes: int  # tracemalloc peak during the decode (0 when tracing was already on)
    peak_rss_bytes: int  # the decoding process's max RSS (see decode_container_isolated)
    version: int
    sections: tuple[SectionInfo, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["onnx_path"] = str(self.onnx_path)
        out["data_path"] = str(self.data_path) if self.data_path else None
        out["sections"] = [asdict(s) for s in self.sections]
        return out


# --- reading ---------------------------------------------------------------------------------


def _read_source(src: bytes | bytearray | memoryview | str | Path, caps: DecodeCaps) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        path = Path(src)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ContainerError(f"The container {path} cannot be read: {exc.strerror}.") from exc
        if size > caps.max_container_bytes:
            raise ContainerError(
                f"The container is {size} bytes, over the cap of {caps.max_container_bytes} bytes."
            )
        data = path.read_bytes()
    if len(data) > caps.max_container_bytes:
        raise ContainerError(
            f"The container is {len(data)} bytes, over the cap of {caps.max_container_bytes} bytes."
        )
    return data


def _parse_header(data: bytes) -> ContainerHeader:
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ContainerError(
            "This is not an EdgeSlim container: it does not start with the ESDC magic bytes."
        )
    if len(data) < HEADER_SIZE:
        raise ContainerError(
            f"The container is truncated: {len(data)} bytes, shorter than its "
            f"{HEADER_SIZE}-byte header."
        )
    _magic, version, header_len, count, payload, graph_len, data_len, digest = HEADER.unpack_from(
        data
    )
    if version not in SUPPORTED_VERSIONS:
        *head, last = map(str, SUPPORTED_VERSIONS)
        known = f"{', '.join(head)} and {last}" if head else last
        raise ContainerError(
            f"The container has format version {version}; this decoder reads version"
            f"{'s' if len(SUPPORTED_VERSIONS) > 1 else ''} {known} only."
        )
    if header_len != HEADER_SIZE:
        raise ContainerError(
            f"The container declares a {header_len}-byte header; version {version} has "
            f"{HEADER_SIZE} bytes."
        )
    return ContainerHeader(version, count, payload, graph_len, data_len, digest.hex())


def read_header(
    src: bytes | bytearray | memoryview | str | Path, *, caps: DecodeCaps = DecodeCaps()
) -> tuple[ContainerHeader, list[tuple[str, SectionEntry]]]:
    """Header and section table (with names), after checking length and checksum.

    Decodes no stream; for inspection (``python -m edgeslim_agent.container info FILE``).
    """
    data = _read_source(src, caps)
    header, entries, _ = _verify(data, caps)
    return header, [(name, entry) for name, entry, _ in entries]


def _verify(
    data: bytes, caps: DecodeCaps
) -> tuple[ContainerHeader, list[tuple[str, SectionEntry, memoryview]], memoryview]:
    """Check everything that can be checked without decoding a stream, in the order the doc gives."""
    header = _parse_header(data)
    actual_payload = len(data) - HEADER_SIZE
    if actual_payload < header.payload_length:
        raise ContainerError(
            f"The container is truncated: its header declares {header.payload_length} payload "
            f"bytes but only {actual_payload} follow the header."
        )
    if actual_payload > header.payload_length:
        raise ContainerError(
            f"The container has {actual_payload - header.payload_length} unexpected bytes after "
            f"its declared {header.payload_length}-byte payload."
        )
    payload = memoryview(data)[HEADER_SIZE:]
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        raise ContainerError(
            "The container's checksum does not match: the payload's sha256 differs from the one "
            "in its header, so the file was corrupted or altered."
        )
    if header.section_count > caps.max_sections:
        raise ContainerError(
            f"The container declares {header.section_count} sections, over the cap of "
            f"{caps.max_sections}."
        )
    if header.graph_length > caps.max_graph_bytes:
        raise ContainerError(
            f"The container declares a {header.graph_length}-byte graph, over the cap of "
            f"{caps.max_graph_bytes} bytes."
        )
    if header.graph_length + header.data_length > caps.max_decoded_bytes:
        raise ContainerError(
            f"The container would decode to {header.graph_length + header.data_length} bytes, "
            f"over the cap of {caps.max_decoded_bytes} bytes (a decompression bomb is refused)."
        )
    table_len = header.section_count * SECTION_ENTRY_SIZE
    if table_len > len(payload):
        raise ContainerError(
            f"The container's section table ({header.section_count} entries) is longer than its "
            "payload."
        )
    cursor = table_len
    entries: list[tuple[str, SectionEntry, memoryview]] = []
    graphs = 0
    streams = 0
    total_elements = 0
    regions: list[tuple[int, int, str]] = []
    for i in range(header.section_count):
        kind, coding, name_len, dtype, body_len, offset, length, elements, reserved = (
            SECTION_ENTRY.unpack_from(payload, i * SECTION_ENTRY_SIZE)
        )
        entry = SectionEntry(kind, coding, name_len, dtype, body_len, offset, length, elements)
        if body_len > len(payload) - cursor:
            raise ContainerError(
                f"Section {i} declares a {body_len}-byte body but only {len(payload) - cursor} "
                "bytes of the payload remain."
            )
        if name_len > body_len:
            raise ContainerError(f"Section {i}'s name is longer than its body.")
        body = payload[cursor : cursor + body_len]
        cursor += body_len
        try:
            name = bytes(body[:name_len]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContainerError(f"Section {i}'s name is not UTF-8.") from exc
        label = f"section {i} ({name!r})" if name else f"section {i}"
        if reserved != 0:
            raise ContainerError(f"The reserved field of {label} is not zero.")
        if kind not in KIND_NAMES:
            raise ContainerError(f"{label.capitalize()} has unknown kind {kind}.")
        if header.version < 3 and (kind == KIND_STREAM or coding == CODING_STREAMS):
            raise ContainerError(
                f"{label.capitalize()} uses a shared Huffman stream, which format version 3 "
                f"introduced, but the container declares version {header.version}."
            )
        if header.version >= 4 and kind == KIND_SHARED and coding == CODING_HUFFMAN:
            raise ContainerError(
                f"{label.capitalize()} keeps Huffman streams of its own (coding 2), which format "
                f"version {header.version} does not allow: its symbols belong in the streams "
                "section."
            )
        if kind == KIND_STREAM:
            if coding != CODING_HUFFMAN:
                raise ContainerError(
                    f"{label.capitalize()} holds streams but its coding is {coding}, not "
                    f"{CODING_HUFFMAN} (canonical Huffman)."
                )
            if name_len or dtype or offset or length:
                raise ContainerError(
                    f"{label.capitalize()} holds streams; its name length, data type, output "
                    "offset and output length must be 0."
                )
            streams += 1
            if streams > 1:
                raise ContainerError("The container has more than one streams section.")
            entries.append((name, entry, body[name_len:]))
            continue
        if kind == KIND_GRAPH:
            graphs += 1
            if coding not in (CODING_STORED, CODING_DEFLATE):
                raise ContainerError(f"{label.capitalize()} has unknown coding {coding}.")
            if length != header.graph_length:
                raise ContainerError(
                    f"The graph section declares {length} bytes but the header says "
                    f"{header.graph_length}."
                )
            entries.append((name, entry, body[name_len:]))
            continue
        if kind == KIND_RAW and coding not in (CODING_STORED, CODING_DEFLATE):
            raise ContainerError(f"{label.capitalize()} has unknown coding {coding}.")
        if kind == KIND_SHARED and coding not in (CODING_HUFFMAN, CODING_STREAMS):
            raise ContainerError(
                f"{label.capitalize()} is weight-shared but its coding is {coding}, not "
                f"{CODING_HUFFMAN} (its own Huffman streams) or {CODING_STREAMS} (shared "
                "Huffman streams)."
            )
        if dtype not in ONNX_DTYPES:
            raise ContainerError(f"{label.capitalize()} has unsupported ONNX data type {dtype}.")
        if kind == KIND_SHARED and dtype != ONNX_FLOAT:
            raise ContainerError(
                f"{label.capitalize()} is weight-shared but of data type {dtype}; only FLOAT "
                "(1) tensors are shared."
            )
        if elements > caps.max_tensor_elements:
            raise ContainerError(
                f"{label.capitalize()} declares {elements} elements, over the cap of "
                f"{caps.max_tensor_elements} (a decompression bomb is refused)."
            )
        total_elements += elements
        if total_elements > caps.max_total_elements:
            raise ContainerError(
                f"The sections declare more than {caps.max_total_elements} elements in all, over "
                "the cap (a decompression bomb is refused)."
            )
        if elements * ONNX_DTYPES[dtype][1] != length:
            raise ContainerError(
                f"{label.capitalize()} declares {elements} elements of "
                f"{ONNX_DTYPES[dtype][1]} bytes but an output length of {length} bytes."
            )
        if offset + length > header.data_length:
            raise ContainerError(
                f"{label.capitalize()} would write bytes {offset}..{offset + length} of "
                f"{DATA_FILE_NAME}, past its declared {header.data_length} bytes."
            )
        regions.append((offset, offset + length, label))
        entries.append((name, entry, body[name_len:]))
    if cursor != len(payload):
        raise ContainerError(
            f"The container has {len(payload) - cursor} bytes after its last section that no "
            "section claims."
        )
    if graphs != 1:
        raise ContainerError(f"The container has {graphs} graph sections; exactly one is required.")
    regions.sort()
    for (_a0, a1, la), (b0, _b1, lb) in zip(regions, regions[1:], strict=False):  # noqa: RUF007
        if b0 < a1:
            raise ContainerError(f"{la.capitalize()} and {lb} overlap in {DATA_FILE_NAME}.")
    return header, entries, payload


def _inflate(stream: memoryview | bytes, expected: int, what: str) -> bytes:
    """Inflate a raw DEFLATE stream that must give exactly ``expected`` bytes, no more."""
    dec = zlib.decompressobj(-15)
    try:
        out = dec.decompress(bytes(stream), expected)
        if len(out) < expected and not dec.eof:
            out += dec.flush()
    except zlib.error as exc:
        msg = str(exc)
        if "code lengths" in msg or "lengths set" in msg or "literal/lengths" in msg:
            raise ContainerError(
                f"The Huffman table of {what} does not form a valid prefix code ({msg})."
            ) from exc
        raise ContainerError(f"The DEFLATE stream of {what} is corrupt ({msg}).") from exc
    if len(out) > expected or dec.unconsumed_tail:
        raise ContainerError(
            f"{what.capitalize()} decodes to more than its declared {expected} bytes."
        )
    if len(out) < expected:
        raise ContainerError(
            f"{what.capitalize()} decodes to {len(out)} bytes, fewer than its declared {expected}."
        )
    if not dec.eof:
        raise ContainerError(f"The DEFLATE stream of {what} does not end where it should.")
    if dec.unused_data:
        raise ContainerError(
            f"{what.capitalize()} has {len(dec.unused_data)} bytes after its DEFLATE stream."
        )
    return out


MAX_CODE_LENGTH = 15  # code lengths are stored as 4-bit nibbles
_BLOCK_BITS = 6  # the Huffman decoder follows code boundaries in blocks of 64 symbols


def huffman_table_bytes(alphabet: int, width: int) -> int:
    """Bytes of a Huffman stream's table: alphabet size, (min length, width), a field per symbol.

    Version 1 spent a nibble per symbol; a stream's code lengths span a few values (3 to 6 for a
    32-entry codebook), so ``width``-bit offsets from the shortest length halve the table, which
    is what keeps the streams of small layers near their entropy.
    """
    return 2 + (alphabet * width + 7) // 8


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for per-symbol code lengths (0 = absent), as in RFC 1951 section 3.2.2."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code = 0
    prev_len = 0
    for sym in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (int(lengths[s]), s)):
        length = int(lengths[sym])
        code <<= length - prev_len
        codes[sym] = code
        code += 1
        prev_len = length
    return codes


def huffman_decode(stream: memoryview | bytes, count: int, what: str) -> np.ndarray:
    """Decode ``count`` symbols from a canonical Huffman stream (see docs/container-format.md).

    The table is checked first: the code lengths must form a complete prefix code (Kraft sum
    exactly 1), or a single symbol of length 1. Decoding is vectorised: every bit offset's next
    code boundary is looked up at once, and the chain of boundaries from offset 0 is followed in
    blocks (pointer doubling over a block, then one step per symbol of a block for all blocks at
    once), so the work is numpy-sized rather than a Python loop per symbol.
    """
    data = bytes(stream)
    if len(data) < 2:
        raise ContainerError(f"The Huffman stream of {what} is shorter than its table.")
    alphabet = data[0] + 1
    min_len, width = data[1] >> 4, data[1] & 0x0F
    if not 1 <= min_len <= MAX_CODE_LENGTH or not 1 <= width <= 4:
        raise ContainerError(
            f"The Huffman table of {what} declares a shortest code of {min_len} bits and "
            f"{width}-bit length fields; 1 to {MAX_CODE_LENGTH} and 1 to 4 are allowed."
        )
    table_len = huffman_table_bytes(alphabet, width)
    if len(data) < table_len:
        raise ContainerError(f"The Huffman stream of {what} is shorter than its table.")
    field_bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=table_len - 2, offset=2))
    if field_bits[alphabet * width :].any():
        raise ContainerError(f"The Huffman table of {what} has non-zero padding bits.")
    fields = np.zeros(alphabet, dtype=np.int64)
    for j in range(width):
        fields = (fields << 1) | field_bits[j : alphabet * width : width]
    lengths = np.where(fields > 0, fields + min_len - 1, 0)
    if int(lengths.max()) > MAX_CODE_LENGTH:
        raise ContainerError(
            f"The Huffman table of {what} gives a code of {int(lengths.max())} bits; at most "
            f"{MAX_CODE_LENGTH} are allowed."
        )
    used = np.flatnonzero(lengths)
    payload = np.frombuffer(data, dtype=np.uint8, offset=table_len)
    if count == 0:
        if payload.size:
            raise ContainerError(f"The Huffman stream of {what} has bits but no symbols.")
        return np.zeros(0, dtype=np.uint8)
    if used.size == 0:
        raise ContainerError(
            f"The Huffman table of {what} gives no symbol a code but {count} symbols are declared."
        )
    _check_prefix_code(lengths, what)
    bits = np.unpackbits(payload)
    return _decode_codes(bits, lengths, count, what)


def _check_prefix_code(lengths: np.ndarray, what: str) -> None:
    """Refuse code lengths that are not a complete prefix code (or one symbol of length 1)."""
    used = np.flatnonzero(lengths)
    kraft = sum(1 << (MAX_CODE_LENGTH - int(n)) for n in lengths[used])
    single = used.size == 1 and int(lengths[used[0]]) == 1
    if kraft != 1 << MAX_CODE_LENGTH and not single:
        kind = "over-subscribed" if kraft > 1 << MAX_CODE_LENGTH else "incomplete"
        raise ContainerError(
            f"The Huffman table of {what} does not form a prefix code: its code lengths are "
            f"{kind} (Kraft sum {kraft / (1 << MAX_CODE_LENGTH):.4f}, must be 1)."
        )


def _decode_codes(bits: np.ndarray, lengths: np.ndarray, count: int, what: str) -> np.ndarray:
    """``count`` symbols from ``bits`` (one uint8 0/1 per bit, the codes first, then at most 7
    zero padding bits) under the canonical code of ``lengths``, already checked to be a prefix
    code; ``count >= 1``."""
    used = np.flatnonzero(lengths)
    max_len = int(lengths.max())
    codes = canonical_codes(lengths)
    # Lookup over max_len-bit windows: the symbol and the code length a window starts with.
    sym_of = np.zeros(1 << max_len, dtype=np.uint8 if lengths.size <= 256 else np.uint16)
    len_of = np.zeros(1 << max_len, dtype=np.int64)
    for sym in used.tolist():
        n = int(lengths[sym])
        lo = int(codes[sym]) << (max_len - n)
        sym_of[lo : lo + (1 << (max_len - n))] = sym
        len_of[lo : lo + (1 << (max_len - n))] = n
    nbits = int(bits.size)
    if count > nbits:
        raise ContainerError(
            f"The Huffman stream of {what} has {nbits} bits, too few for {count} symbols."
        )
    index = np.int32 if nbits + 64 < 2**31 else np.int64  # halves the decoder's peak memory
    padded = np.concatenate([bits, np.zeros(max_len, dtype=np.uint8)])
    windows = np.zeros(nbits, dtype=np.int32)
    for j in range(max_len):
        windows <<= 1
        windows |= padded[j : j + nbits]
    del padded
    step = len_of[windows].astype(index)
    sentinel = nbits  # where an invalid window or the end leads; it leads to itself
    nxt: np.ndarray = np.arange(nbits + 1, dtype=index)
    nxt[:nbits] += step
    nxt[:nbits][step == 0] = sentinel
    np.minimum(nxt, sentinel, out=nxt)
    # Follow the chain of code boundaries from bit 0 in blocks of BLOCK symbols: BLOCK_BITS rounds
    # of pointer doubling give the jump over a whole block, a short scalar walk finds each block's
    # first boundary, and BLOCK vectorised steps fill in the rest of every block at once.
    block = 1 << _BLOCK_BITS
    jump = nxt
    for _ in range(_BLOCK_BITS):
        jump = jump[jump]
    blocks = -(-count // block)
    firsts = np.empty(blocks, dtype=index)
    cursor = 0
    for b in range(blocks):
        firsts[b] = cursor
        cursor = int(jump[cursor])
    del jump
    grid = np.empty((block, blocks), dtype=index)
    current = firsts
    for j in range(block):
        grid[j] = current
        current = nxt[current]
    starts = grid.T.reshape(-1)[:count]
    if int(starts[-1]) >= nbits or step[starts[-1]] == 0:
        raise ContainerError(
            f"The Huffman stream of {what} ends before its {count} declared symbols, or holds a "
            "bit pattern that is no code."
        )
    end = int(starts[-1] + step[starts[-1]])
    if end > nbits:
        raise ContainerError(f"The last code of the Huffman stream of {what} runs past its end.")
    if (nbits - end) >= 8 or (end < nbits and bits[end:].any()):
        raise ContainerError(
            f"The Huffman stream of {what} has {nbits - end} bits after its last symbol; at most "
            "7 zero padding bits are allowed."
        )
    return sym_of[windows[starts]]


class _TableBits:
    """Reads a version 4 stream's code-length table: bits MSB first, Elias gamma codes."""

    def __init__(self, bits: np.ndarray, limit: int, what: str) -> None:
        self.bits: list[int] = bits[:limit].tolist()  # a table is never longer than ``limit``
        self.pos = 0
        self.what = what

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise ContainerError(
                f"The Huffman table of {self.what} runs past the end of its stream."
            )
        value = 0
        for bit in self.bits[self.pos : self.pos + n]:
            value = (value << 1) | bit
        self.pos += n
        return value

    def gamma(self) -> int:
        """An Elias gamma code: z zero bits, then a z + 1 bit number starting with 1 (>= 1)."""
        zeros = 0
        while self.pos < len(self.bits) and self.bits[self.pos] == 0:
            zeros += 1
            self.pos += 1
            if zeros > 31:
                raise ContainerError(
                    f"The Huffman table of {self.what} holds a malformed Elias gamma code (more "
                    "than 31 leading zeros)."
                )
        return self.read(zeros + 1)


def _decode_fixed(data: bytes, count: int, what: str) -> np.ndarray:
    """A version 4 fixed-width stream: smallest and largest symbol, then ``symbol - lo``."""
    if len(data) < 3:
        raise ContainerError(f"The fixed-width stream of {what} is shorter than its 3-byte header.")
    lo, hi = data[1], data[2]
    if lo > hi:
        raise ContainerError(
            f"The fixed-width stream of {what} declares symbols {lo} to {hi}; the smallest must "
            "not exceed the largest."
        )
    width = (hi - lo).bit_length()
    need = (count * width + 7) // 8
    if len(data) - 3 != need:
        raise ContainerError(
            f"The fixed-width stream of {what} holds {len(data) - 3} bytes after its header; "
            f"{count} symbols of {width} bits take {need}."
        )
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=3))
    if bits[count * width :].any():
        raise ContainerError(f"The fixed-width stream of {what} has non-zero padding bits.")
    if width == 0:
        return np.full(count, lo, dtype=np.uint8)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    offsets = bits[: count * width].reshape(count, width).astype(np.int64) @ weights
    if count and int(offsets.max()) > hi - lo:
        raise ContainerError(
            f"The fixed-width stream of {what} holds symbol {lo + int(offsets.max())}, above its "
            f"declared largest {hi}."
        )
    return (offsets + lo).astype(np.uint8)


def decode_stream_v4(
    stream: memoryview | bytes, count: int, what: str, version: int = 4
) -> np.ndarray:
    """Decode ``count`` symbols from a version 4 or 5 stream (see docs/container-format.md).

    Byte 0 is the mode: 0 stores the symbols at a fixed width (no table); 1 to 4 (version 4) or
    1 to 8 (version 5) is the block length k of a canonical Huffman code over blocks of k
    symbols (A^k block symbols, A the alphabet in byte 1). The sparse, delta-coded table is read
    and checked to be a prefix code before any code is decoded; the last block's padding symbols
    must be 0.
    """
    data = bytes(stream)
    if len(data) < 2:
        raise ContainerError(f"The stream of {what} is shorter than its 2-byte header.")
    mode = data[0]
    if mode == STREAM_FIXED:
        return _decode_fixed(data, count, what)
    longest = MAX_BLOCK_BY_VERSION.get(version, MAX_BLOCK_BY_VERSION[4])
    if longest < mode <= MAX_BLOCK:
        raise ContainerError(
            f"The stream of {what} codes blocks of {mode} symbols (mode {mode}), which format "
            f"version 5 introduced; a version {version} container codes blocks of 1 to "
            f"{longest} symbols only."
        )
    if not 1 <= mode <= longest:
        raise ContainerError(
            f"The stream of {what} has unknown mode {mode}; 0 (fixed width) and 1 to "
            f"{longest} (Huffman over blocks of that many symbols) are defined."
        )
    k, alphabet = mode, data[1] + 1
    n_sym = alphabet**k
    if n_sym > MAX_BLOCK_ALPHABET:
        raise ContainerError(
            f"The stream of {what} codes blocks of {k} symbols from an alphabet of {alphabet}: "
            f"{n_sym} block symbols, over the cap of {MAX_BLOCK_ALPHABET}."
        )
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=2))
    # the longest table: U, then per symbol a gap (<= 2^17, 33 bits) and a length delta (9 bits)
    reader = _TableBits(bits, 33 + 4 + n_sym * (33 + 9), what)
    used_count = reader.gamma()
    if used_count > n_sym:
        raise ContainerError(
            f"The Huffman table of {what} gives {used_count} symbols a code, more than its "
            f"{n_sym} block symbols."
        )
    lengths = np.zeros(n_sym, dtype=np.int64)
    sym, length = -1, 0
    for j in range(used_count):
        sym += reader.gamma()
        if sym >= n_sym:
            raise ContainerError(
                f"The Huffman table of {what} codes symbol {sym}, past its {n_sym} block symbols."
            )
        if j == 0:
            length = reader.read(4)
        else:
            z = reader.gamma() - 1  # zigzag: 0, -1, +1, -2, +2, ...
            length += z >> 1 if z % 2 == 0 else -((z + 1) >> 1)
        if not 1 <= length <= MAX_CODE_LENGTH:
            raise ContainerError(
                f"The Huffman table of {what} gives a code of {length} bits; 1 to "
                f"{MAX_CODE_LENGTH} are allowed."
            )
        lengths[sym] = length
    _check_prefix_code(lengths, what)
    codes = bits[reader.pos :]
    blocks = -(-count // k)
    if blocks == 0:
        if codes.size >= 8 or codes.any():
            raise ContainerError(f"The Huffman stream of {what} has bits but no symbols.")
        return np.zeros(0, dtype=np.uint8)
    block_symbols = _decode_codes(codes, lengths, blocks, what)
    if k == 1:
        return block_symbols.astype(np.uint8)
    digits = np.empty((blocks, k), dtype=np.int64)
    rest = block_symbols.astype(np.int64)
    for j in range(k - 1, -1, -1):
        digits[:, j] = rest % alphabet
        rest //= alphabet
    flat = digits.reshape(-1)
    if flat[count:].any():
        raise ContainerError(
            f"The last block of the Huffman stream of {what} is padded with non-zero symbols."
        )
    return flat[:count].astype(np.uint8)


def decode_stream(stream: memoryview | bytes, count: int, what: str, version: int) -> np.ndarray:
    """A stream of a container of ``version``: the layout of 4 and 5, or that of 2 and 3."""
    if version >= 4:
        return decode_stream_v4(stream, count, what, version)
    return huffman_decode(stream, count, what)


@dataclass
class _Shared:
    """A weight-shared section's header, checked; its symbols come inline (v2) or from streams."""

    label: str
    k: int
    bits: int
    nonzero: int
    count: int
    codebook: np.ndarray
    values: memoryview | int  # the inline stream (coding 2) or the stream's number (coding 3)
    gaps: memoryview | int


def _shared_header(body: memoryview, entry: SectionEntry, label: str) -> _Shared:
    """Parse and check a weight-shared section up to its codebook (no stream is decoded)."""
    streamed = entry.coding == CODING_STREAMS
    size = STREAMED_HEADER_SIZE if streamed else SHARED_HEADER_SIZE
    if len(body) < size:
        raise ContainerError(f"The body of {label} is shorter than its {size}-byte header.")
    if streamed:
        k, bits, reserved, nonzero, count, v_ref, g_ref = STREAMED_HEADER.unpack_from(body)
        values_len = gaps_len = 0
    else:
        k, bits, reserved, nonzero, count, values_len, gaps_len = SHARED_HEADER.unpack_from(body)
    numel = entry.elements
    if reserved != 0:
        raise ContainerError(f"The reserved byte of {label} is not zero.")
    if not 1 <= k <= MAX_CODEBOOK_SIZE:
        raise ContainerError(
            f"{label.capitalize()} declares a codebook of {k} entries; 1 to {MAX_CODEBOOK_SIZE} "
            "are allowed."
        )
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise ContainerError(
            f"{label.capitalize()} declares {bits}-bit relative indices; 1 to {MAX_INDEX_BITS} "
            "are allowed."
        )
    span = (1 << bits) - 1  # the filler symbol, and how far a filler moves
    if nonzero > numel:
        raise ContainerError(
            f"{label.capitalize()} declares {nonzero} non-zero weights in a tensor of {numel}."
        )
    max_entries = nonzero + numel // span + 1
    if not nonzero <= count <= max_entries:
        raise ContainerError(
            f"{label.capitalize()} declares {count} relative-index entries for {nonzero} non-zero "
            f"weights; between {nonzero} and {max_entries} are possible."
        )
    expected = size + 4 * k + values_len + gaps_len
    if expected != len(body):
        raise ContainerError(
            f"{label.capitalize()} declares a header, codebook and streams that add up to "
            f"{expected} bytes but its body is {len(body)} bytes."
        )
    at = size
    codebook = np.frombuffer(body, dtype="<f4", count=k, offset=at).astype(np.float32)
    at += 4 * k
    if streamed:
        if v_ref == g_ref:
            raise ContainerError(
                f"{label.capitalize()} takes its cluster indices and its relative indices from "
                f"the same stream {v_ref}; they are two streams."
            )
        values: memoryview | int = v_ref
        gaps: memoryview | int = g_ref
    else:
        values, gaps = body[at : at + values_len], body[at + values_len :]
    return _Shared(label, int(k), int(bits), int(nonzero), int(count), codebook, values, gaps)


def _place(
    sh: _Shared, values: np.ndarray, gaps: np.ndarray, entry: SectionEntry
) -> tuple[np.ndarray, SectionInfo]:
    """The dense tensor from a shared section's decoded symbols, after the symbol checks."""
    label, k, bits, nonzero, count = sh.label, sh.k, sh.bits, sh.nonzero, sh.count
    numel = entry.elements
    span = (1 << bits) - 1
    if nonzero and int(values.max()) >= k:
        bad = int(values.max())
        raise ContainerError(
            f"{label.capitalize()} uses cluster index {bad}, outside its codebook of {k} entries."
        )
    if count and int(gaps.max()) > span:
        raise ContainerError(
            f"{label.capitalize()} has a relative index of {int(gaps.max())}, over the largest "
            f"{bits}-bit value {span}."
        )
    filler = gaps == span
    fillers = int(filler.sum())
    if count - fillers != nonzero:
        raise ContainerError(
            f"{label.capitalize()} has {count - fillers} real entries in its relative-index "
            f"stream but {nonzero} cluster indices."
        )
    # A real entry at gap g lands g places after the cursor and moves it one past itself; a filler
    # moves the cursor by `span` and lands nothing. Positions are the cursor after each real entry
    # minus one.
    steps = np.where(filler, span, gaps.astype(np.int64) + 1)
    cursor = np.cumsum(steps, dtype=np.int64)
    if count and filler[-1]:
        raise ContainerError(
            f"{label.capitalize()} ends its relative-index stream with a filler entry; the last "
            "entry must place a weight."
        )
    positions = cursor[~filler] - 1
    if nonzero and int(positions[-1]) >= numel:
        raise ContainerError(
            f"{label.capitalize()} places a weight at position {int(positions[-1])}, past the end "
            f"of its tensor of {numel} elements."
        )
    dense = np.zeros(numel, dtype=np.float32)
    dense[positions] = sh.codebook[values]
    info = SectionInfo(
        name="",
        kind="shared",
        coding=CODING_NAMES[entry.coding],
        stored_bytes=entry.body_length,
        decoded_bytes=entry.out_length,
        elements=numel,
        nonzero=nonzero,
        codebook_size=k,
        index_bits=bits,
        entries=count,
        filler_entries=fillers,
    )
    return dense, info


def _split_streams(entries: list[tuple[str, SectionEntry, memoryview]]) -> list[memoryview]:
    """The streams of the container's streams section (none without one), lengths checked."""
    found = [(i, body) for i, (_n, entry, body) in enumerate(entries) if entry.kind == KIND_STREAM]
    if not found:
        return []
    i, body = found[0]
    if len(body) < 1 or body[0] == 0:
        raise ContainerError(f"The streams section (section {i}) holds no stream.")
    count = body[0]
    if len(body) < 1 + 4 * count:
        raise ContainerError(
            f"The streams section (section {i}) is shorter than its table of {count} lengths."
        )
    lengths = struct.unpack_from(f"<{count}I", body, 1)
    at = 1 + 4 * count
    if sum(lengths) != len(body) - at:
        raise ContainerError(
            f"The streams section (section {i}) declares streams of {sum(lengths)} bytes in all "
            f"but holds {len(body) - at}."
        )
    out = []
    for n in lengths:
        out.append(body[at : at + n])
        at += n
    return out


def _decode_streams(
    entries: list[tuple[str, SectionEntry, memoryview]],
    shared: dict[int, _Shared],
    version: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every shared section's (cluster indices, relative indices), streams checked first.

    A stream's symbols are, in section-table order, those of every section that names it: all
    of a stream's sections take it for the same role, every stream is named by one section at
    least, and the streams section declares (as its element count) exactly as many symbols as
    the sections use. All of that is checked against the declared sizes before any stream is
    decoded.
    """
    streams = _split_streams(entries)
    role: dict[int, str] = {}
    users: dict[int, list[tuple[int, str, int]]] = {s: [] for s in range(len(streams))}
    for i, sh in shared.items():
        for which, ref, n in ((ROLE_VALUES, sh.values, sh.nonzero), (ROLE_GAPS, sh.gaps, sh.count)):
            if not isinstance(ref, int):
                continue
            if ref >= len(streams):
                raise ContainerError(
                    f"{sh.label.capitalize()} takes its {which} symbols from stream {ref}, but "
                    f"the container has {len(streams)} streams."
                )
            if role.setdefault(ref, which) != which:
                raise ContainerError(
                    f"Stream {ref} is taken for {role[ref]} symbols by one section and for "
                    f"{which} symbols by {sh.label}; a stream serves one role."
                )
            users[ref].append((i, which, n))
    for sid in range(len(streams)):
        if not users[sid]:
            raise ContainerError(f"Stream {sid} is named by no weight-shared section.")
    declared = sum(e.elements for _n, e, _b in entries if e.kind == KIND_STREAM)
    used = sum(n for u in users.values() for _i, _w, n in u)
    if used != declared:
        raise ContainerError(
            f"The streams section declares {declared} symbols but the sections that take from "
            f"its streams use {used}."
        )
    out: dict[int, dict[str, np.ndarray]] = {i: {} for i in shared}
    for sid, body in enumerate(streams):
        total = sum(n for _i, _w, n in users[sid])
        symbols = decode_stream(body, total, f"stream {sid}", version)
        at = 0
        for j, which, n in users[sid]:
            out[j][which] = symbols[at : at + n]
            at += n
    for i, sh in shared.items():
        for which, ref, n in ((ROLE_VALUES, sh.values, sh.nonzero), (ROLE_GAPS, sh.gaps, sh.count)):
            if not isinstance(ref, int):
                out[i][which] = huffman_decode(ref, n, f"the {which} stream of {sh.label}")
    return {i: (d[ROLE_VALUES], d[ROLE_GAPS]) for i, d in out.items()}


def _peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (0 where the platform does not say).

    On Linux it is ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process's
    own address space. ``ru_maxrss`` is not used there: Linux carries it across ``fork`` and
    ``exec``, so a child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows: no resource module
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def decode_container(
    src: bytes | bytearray | memoryview | str | Path,
    out_dir: str | Path,
    *,
    caps: DecodeCaps = DecodeCaps(),
) -> DecodedModel:
    """Rebuild the ONNX model (``model.onnx`` + ``weights.bin``) in ``out_dir``.

    Decodes into a temporary directory beside ``out_dir`` and moves the files in only when every
    section decoded, so a refused container leaves nothing half-written behind. Raises
    :class:`ContainerError` for every kind of bad input.
    """
    started = time.perf_counter()
    tracing = not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        data = _read_source(src, caps)
        header, entries, _payload = _verify(data, caps)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (GRAPH_FILE_NAME, DATA_FILE_NAME):
            if (out_dir / name).exists():
                raise ContainerError(
                    f"{out_dir / name} exists already; decode into an empty folder."
                )
        tmp = Path(tempfile.mkdtemp(prefix=".decoding-", dir=out_dir))
        try:
            infos = _decode_into(tmp, header, entries)
            graph_target = out_dir / GRAPH_FILE_NAME
            data_target = out_dir / DATA_FILE_NAME if header.data_length else None
            if data_target is not None:
                os.replace(tmp / DATA_FILE_NAME, data_target)
            os.replace(tmp / GRAPH_FILE_NAME, graph_target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        peak_alloc = tracemalloc.get_traced_memory()[1] if tracing else 0
    finally:
        if tracing:
            tracemalloc.stop()
    return DecodedModel(
        onnx_path=graph_target,
        data_path=data_target,
        container_bytes=len(data),
        onnx_bytes=header.graph_length + header.data_length,
        decode_seconds=time.perf_counter() - started,
        peak_alloc_bytes=int(peak_alloc),
        peak_rss_bytes=_peak_rss_bytes(),
        version=header.version,
        sections=tuple(infos),
    )


def _decode_into(
    tmp: Path, header: ContainerHeader, entries: list[tuple[str, SectionEntry, memoryview]]
) -> list[SectionInfo]:
    shared = {
        i: _shared_header(body, entry, _label(i, name))
        for i, (name, entry, body) in enumerate(entries)
        if entry.kind == KIND_SHARED
    }
    symbols = _decode_streams(entries, shared, header.version)
    infos: list[SectionInfo] = []
    with open(tmp / DATA_FILE_NAME, "wb") as fh:
        if header.data_length:
            fh.truncate(header.data_length)  # sparse; the regions not written stay zero
        for i, (name, entry, body) in enumerate(entries):
            label = _label(i, name)
            if entry.kind == KIND_STREAM:
                infos.append(
                    SectionInfo(
                        name="streams",
                        kind="streams",
                        coding=CODING_NAMES[entry.coding],
                        stored_bytes=entry.body_length,
                        decoded_bytes=0,
                        elements=entry.elements,
                    )
                )
                continue
            if entry.kind == KIND_GRAPH:
                graph = (
                    bytes(body)
                    if entry.coding == CODING_STORED
                    else _inflate(body, entry.out_length, "the graph section")
                )
                if len(graph) != entry.out_length:
                    raise ContainerError(
                        f"The graph section holds {len(graph)} bytes but declares "
                        f"{entry.out_length}."
                    )
                (tmp / GRAPH_FILE_NAME).write_bytes(graph)
                infos.append(
                    SectionInfo(
                        name=name or "graph",
                        kind="graph",
                        coding=CODING_NAMES[entry.coding],
                        stored_bytes=entry.body_length,
                        decoded_bytes=entry.out_length,
                    )
                )
                continue
            if entry.kind == KIND_RAW:
                if entry.coding == CODING_STORED:
                    if len(body) != entry.out_length:
                        raise ContainerError(
                            f"{label.capitalize()} stores {len(body)} bytes but declares "
                            f"{entry.out_length}."
                        )
                    raw = bytes(body)
                else:
                    raw = _inflate(body, entry.out_length, label)
                fh.seek(entry.out_offset)
                fh.write(raw)
                infos.append(
                    SectionInfo(
                        name=name,
                        kind="raw",
                        coding=CODING_NAMES[entry.coding],
                        stored_bytes=entry.body_length,
                        decoded_bytes=entry.out_length,
                        elements=entry.elements,
                        nonzero=int(
                            np.count_nonzero(np.frombuffer(raw, dtype=ONNX_DTYPES[entry.dtype][0]))
                        ),
                    )
                )
                continue
            values, gaps = symbols.pop(i)
            dense, info = _place(shared[i], values, gaps, entry)
            fh.seek(entry.out_offset)
            fh.write(dense.tobytes())
            del dense
            infos.append(SectionInfo(**{**asdict(info), "name": name}))
    return infos


def _label(i: int, name: str) -> str:
    return f"section {i} ({name!r})" if name else f"section {i}"


# --- the agent's way in: decode in a child process, measure its peak RSS ----------------------


def decode_container_isolated(
    src: str | Path,
    out_dir: str | Path,
    *,
    caps: DecodeCaps = DecodeCaps(),
    timeout_s: float = 600.0,
) -> DecodedModel:
    """Decode in a fresh child process so ``peak_rss_bytes`` is the decode's own peak.

    The child is ``python -m edgeslim_agent.container decode``; a refusal comes back as the same
    :class:`ContainerError` sentence, and nothing is left in ``out_dir``.
    """
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "edgeslim_agent.container",
        "decode",
        str(src),
        str(out_dir),
        "--caps",
        json.dumps(asdict(caps)),
    ]
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"Decoding the container took longer than {timeout_s:.0f} s.") from exc
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or "error" in result or "onnx_path" not in result:
        message = result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContainerError(str(message))
    return DecodedModel(
        onnx_path=Path(result["onnx_path"]),
        data_path=Path(result["data_path"]) if result.get("data_path") else None,
        container_bytes=int(result["container_bytes"]),
        onnx_bytes=int(result["onnx_bytes"]),
        decode_seconds=float(result["decode_seconds"]),
        peak_alloc_bytes=int(result["peak_alloc_bytes"]),
        peak_rss_bytes=int(result["peak_rss_bytes"]),
        version=int(result["version"]),
        sections=tuple(SectionInfo(**s) for s in result["sections"]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeslim_agent.container", description="Inspect or decode a container."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info", help="print the header and section table as JSON")
    info.add_argument("src")
    dec = sub.add_parser("decode", help="rebuild model.onnx + weights.bin; print JSON")
    dec.add_argument("src")
    dec.add_argument("out_dir")
    dec.add_argument("--caps", default="{}", help="DecodeCaps fields as JSON")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "info":
            header, entries = read_header(args.src)
            print(
                json.dumps(
                    {
                        "header": asdict(header),
                        "sections": [
                            {"name": name, **asdict(e), "kind_name": KIND_NAMES[e.kind]}
                            for name, e in entries
                        ],
                    },
                    indent=2,
                )
            )
            return 0
        caps = DecodeCaps(**json.loads(args.caps))
        decoded = decode_container(args.src, args.out_dir, caps=caps)
        print(json.dumps(decoded.to_dict()))
        return 0
    except ContainerError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
