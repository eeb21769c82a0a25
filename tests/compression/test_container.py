"""The compressed container: encoder, numpy-only decoder, and every refusal the format names."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compression.container import (
    HEADER,
    HEADER_SIZE,
    KIND_SHARED,
    SECTION_ENTRY,
    SECTION_ENTRY_SIZE,
    SHARED_HEADER,
    ContainerError,
    DecodeCaps,
    decode_container,
    decode_container_isolated,
    huffman_decode,
    read_header,
)
from compression.weight_coding import (
    encode_onnx,
    entropy_bits,
    huffman_encode,
    relative_indices,
)

ROOT = Path(__file__).resolve().parents[2]


def _deep_compress_onnx(src: Path, dst: Path, *, keep: float, bits: dict[str, int]) -> None:
    """Magnitude-prune and weight-share every Conv/Gemm weight by plain numpy rounding."""
    model = onnx.load(str(src))
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            kinds[node.input[1]] = "conv" if node.op_type == "Conv" else "fc"
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if tensor.name not in kinds:
            continue
        w = numpy_helper.to_array(tensor).astype(np.float32).copy()
        w += rng.normal(scale=float(np.abs(w).std()) * 0.5, size=w.shape).astype(np.float32)
        thr = np.quantile(np.abs(w), 1 - keep)
        w[np.abs(w) < thr] = 0
        nz = w != 0
        k = 1 << bits[kinds[tensor.name]]
        centroids = np.linspace(w[nz].min(), w[nz].max(), k, dtype=np.float32)
        w[nz] = centroids[np.abs(w[nz][:, None] - centroids[None]).argmin(1)]
        tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import warnings

    import torch

    from compression.zoo import create_model

    out = tmp_path_factory.mktemp("models")
    paths = {}
    torch.manual_seed(0)
    for arch, keep in (("lenet300_100", 0.08), ("lenet5", 0.12)):
        dense = out / f"{arch}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                create_model(arch, num_classes=10, in_channels=1).eval(),
                (torch.zeros(1, 1, 32, 32),),
                str(dense),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        shared = out / f"{arch}-shared.onnx"
        _deep_compress_onnx(dense, shared, keep=keep, bits={"conv": 8, "fc": 5})
        paths[arch] = shared
    return paths


@pytest.fixture(scope="module")
def containers(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("containers")
    return {arch: (path, encode_onnx(path, out / f"{arch}.esdc")) for arch, path in models.items()}


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("arch", ["lenet300_100", "lenet5"])
def test_round_trip_gives_identical_outputs(
    arch: str, containers: dict[str, Any], tmp_path: Path
) -> None:
    source, stats = containers[arch]
    decoded = decode_container(stats.path, tmp_path / "out")
    x = np.random.default_rng(1).random((16, 1, 32, 32), dtype=np.float32)
    assert np.array_equal(_outputs(source, x), _outputs(decoded.onnx_path, x))
    assert stats.total_bytes == Path(stats.path).stat().st_size == decoded.container_bytes
    assert sorted(os.listdir(tmp_path / "out")) == ["model.onnx", "weights.bin"]
    assert decoded.onnx_bytes == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert decoded.decode_seconds > 0 and decoded.peak_alloc_bytes > 0
    layers = {layer.name: layer for layer in stats.layers}
    assert all(layer.stored_as == "shared" for layer in layers.values())
    for layer in layers.values():
        limit = 256 if layer.kind == "conv" else 32
        assert layer.codebook_size <= limit
        assert layer.index_bits == (8 if layer.kind == "conv" else 5)
        # the paper's waterfall: each stage smaller than the one before (a 150-weight conv pays
        # more for its 256-entry codebook than sharing saves, so small layers are left out)
        if layer.weights >= 1000:
            assert layer.bytes_dense_fp32 > layer.bytes_pruned > layer.bytes_shared
    # sums add up to the file: header + graph + every layer's section
    assert stats.header_bytes + stats.graph_bytes + stats.bytes_huffman == stats.total_bytes
    info = {s.name: s for s in decoded.sections}
    for name, layer in layers.items():
        assert info[name].nonzero == layer.nonzero
        assert info[name].filler_entries == layer.filler_entries


def test_lenet300_is_over_forty_times_smaller(containers: dict[str, Any]) -> None:
    _, stats = containers["lenet300_100"]
    # 8% kept, 5-bit shared weights and 5-bit relative indices: the paper's 40x, every byte counted
    assert stats.ratio > 40, stats.ratio
    assert any(layer.filler_entries > 0 for layer in stats.layers)


def test_huffman_streams_are_within_two_percent_of_entropy(containers: dict[str, Any]) -> None:
    """Each coded stream <= 1.02 x (symbols x empirical entropy) + its table + 1 padding byte.

    The table is 2 bytes of alphabet size and a nibble per symbol up to the largest used; a
    stream of at most a few hundred symbols is dominated by it, so only streams of 1000+ symbols
    are held to the 2%.
    """
    checked = 0
    for _, stats in containers.values():
        for layer in stats.layers:
            for stream in (layer.values, layer.gaps):
                assert stream is not None
                if stream.symbols < 1000:
                    continue
                assert stream.coded_bytes <= 1.02 * stream.entropy_bytes + stream.table_bytes + 1, (
                    layer.name,
                    stream,
                )
                checked += 1
    assert checked >= 6


def test_relative_indices_insert_fillers_when_a_gap_overflows() -> None:
    # 3-bit gaps: span 7; after 3 the cursor is at 4, and 40 is 36 places on: five fillers (35)
    # and a gap of 1.
    gaps = relative_indices(np.array([0, 3, 40, 41]), 3)
    assert gaps.tolist() == [0, 2, 7, 7, 7, 7, 7, 1, 0]
    assert relative_indices(np.array([], dtype=np.int64), 5).tolist() == []


def test_huffman_round_trip_and_canonical_lengths() -> None:
    rng = np.random.default_rng(3)
    for symbols in (
        rng.integers(0, 32, 5000).astype(np.uint8),
        np.zeros(7, dtype=np.uint8),
        np.array([5], dtype=np.uint8),
        rng.geometric(0.3, 20000).clip(0, 255).astype(np.uint8),
    ):
        coded = huffman_encode(symbols)
        assert np.array_equal(huffman_decode(coded, symbols.size, "test"), symbols)
    skewed = np.repeat(np.arange(20, dtype=np.uint8), [2**i for i in range(20)])
    coded = huffman_encode(skewed)  # the optimal code would be 19 bits deep: limited to 15
    assert np.array_equal(huffman_decode(coded, skewed.size, "test"), skewed)
    assert entropy_bits(np.array([0, 1, 0, 1], dtype=np.uint8)) == 1.0


# --- bad input ---------------------------------------------------------------------------------


def _split(blob: bytes) -> tuple[list[Any], list[list[Any]], list[bytes]]:
    fields = list(HEADER.unpack_from(blob))
    count = fields[3]
    payload = blob[HEADER_SIZE:]
    entries, bodies, cursor = [], [], count * SECTION_ENTRY_SIZE
    for i in range(count):
        entry = list(SECTION_ENTRY.unpack_from(payload, i * SECTION_ENTRY_SIZE))
        entries.append(entry)
        bodies.append(payload[cursor : cursor + entry[4]])
        cursor += entry[4]
    return fields, entries, bodies


def _join(
    fields: list[Any], entries: list[list[Any]], bodies: list[bytes], *, rehash: bool = True
) -> bytes:
    for entry, body in zip(entries, bodies, strict=True):
        entry[4] = len(body)
    payload = b"".join(SECTION_ENTRY.pack(*e) for e in entries) + b"".join(bodies)
    fields[4] = len(payload)
    if rehash:
        fields[7] = hashlib.sha256(payload).digest()
    return HEADER.pack(*fields) + payload


def _shared_index(entries: list[list[Any]]) -> int:
    return next(i for i, e in enumerate(entries) if e[0] == KIND_SHARED)


def _replace_streams(
    blob: bytes,
    *,
    values: np.ndarray | None = None,
    gaps: np.ndarray | None = None,
    k: int | None = None,
) -> bytes:
    fields, entries, bodies = _split(blob)
    i = _shared_index(entries)
    name_len = entries[i][2]
    body = bodies[i]
    name, rest = body[:name_len], body[name_len:]
    kk, bits, res, nonzero, count, vlen, _glen = SHARED_HEADER.unpack_from(rest)
    at = SHARED_HEADER.size
    codebook = rest[at : at + 4 * kk]
    v_stream = rest[at + 4 * kk : at + 4 * kk + vlen]
    g_stream = rest[at + 4 * kk + vlen :]
    if values is not None:
        v_stream, nonzero = huffman_encode(values), values.size
    if gaps is not None:
        g_stream, count = huffman_encode(gaps), gaps.size
    if k is not None:
        codebook, kk = codebook[: 4 * k], k
    bodies[i] = (
        name
        + SHARED_HEADER.pack(kk, bits, res, nonzero, count, len(v_stream), len(g_stream))
        + codebook
        + v_stream
        + g_stream
    )
    return _join(fields, entries, bodies)


def _refused(blob: bytes, out: Path, match: str, caps: DecodeCaps = DecodeCaps()) -> None:
    with pytest.raises(ContainerError, match=match):
        decode_container(blob, out, caps=caps)
    assert not out.exists() or os.listdir(out) == [], "a refused container left files behind"


@pytest.fixture()
def blob(containers: dict[str, Any]) -> bytes:
    return Path(containers["lenet5"][1].path).read_bytes()


def test_truncated_container_is_refused(blob: bytes, tmp_path: Path) -> None:
    _refused(blob[:-100], tmp_path / "a", "truncated")
    _refused(blob[:40], tmp_path / "b", "truncated")
    _refused(b"not a container", tmp_path / "c", "not an EdgeSlim container")


def test_wrong_checksum_is_refused(blob: bytes, tmp_path: Path) -> None:
    bad = bytearray(blob)
    bad[-10] ^= 0x01
    _refused(bytes(bad), tmp_path, "checksum does not match")


@pytest.mark.parametrize("version", [1, 3])
def test_unknown_version_is_refused(blob: bytes, tmp_path: Path, version: int) -> None:
    # Version 1 (64-bit sizes) is as unknown to this decoder as a future version 3.
    fields, entries, bodies = _split(blob)
    fields[1] = version
    _refused(
        _join(fields, entries, bodies),
        tmp_path,
        f"format version {version}; this decoder reads version 2 only",
    )


def test_stored_graph_drops_names_but_keeps_interface(
    containers: dict[str, Any], tmp_path: Path
) -> None:
    source, stats = containers["lenet5"]
    decoded = onnx.load(
        str(decode_container(stats.path, tmp_path / "out").onnx_path), load_external_data=False
    )
    original = onnx.load(str(source), load_external_data=False)
    assert [i.name for i in decoded.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in decoded.graph.output] == [o.name for o in original.graph.output]
    assert {t.name for t in decoded.graph.initializer} == {
        t.name for t in original.graph.initializer
    }
    assert [n.op_type for n in decoded.graph.node] == [n.op_type for n in original.graph.node]
    assert all(not n.name for n in decoded.graph.node)
    inner = {o for n in decoded.graph.node for o in n.output} - {
        o.name for o in decoded.graph.output
    }
    assert inner and all(len(name) <= 4 for name in inner)


def test_declared_sizes_over_the_caps_are_refused_before_allocating(
    blob: bytes, tmp_path: Path
) -> None:
    import tracemalloc

    fields, entries, bodies = _split(blob)
    i = _shared_index(entries)
    # a bomb: a 100-byte section that claims 2**29 float elements (2 GiB; sizes are 32-bit)
    entries[i][7] = 1 << 29
    entries[i][6] = 4 << 29
    fields[6] = entries[i][5] + entries[i][6]
    bomb = _join(fields, entries, bodies)
    tracemalloc.start()
    try:
        _refused(bomb, tmp_path / "a", "over the cap")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(bomb) + (1 << 20)
    # the caps are the caller's: a legitimate container over a tight cap is refused too
    _refused(blob, tmp_path / "b", "over the cap", DecodeCaps(max_tensor_elements=1000))
    _refused(blob, tmp_path / "c", "over the cap", DecodeCaps(max_decoded_bytes=10_000))
    _refused(blob, tmp_path / "d", "over the cap", DecodeCaps(max_container_bytes=1000))


def test_huffman_table_that_is_no_prefix_code_is_refused(blob: bytes, tmp_path: Path) -> None:
    fields, entries, bodies = _split(blob)
    i = _shared_index(entries)
    name_len = entries[i][2]
    rest = bytearray(bodies[i][name_len:])
    kk = SHARED_HEADER.unpack_from(rest)[0]
    table_at = SHARED_HEADER.size + 4 * kk + 1  # the values stream's (shortest, width) byte
    over = bytearray(rest)
    assert over[table_at] >> 4 >= 2  # 32 symbols: no code is shorter than 2 bits
    # Every code one bit shorter or more: the Kraft sum doubles at least.
    over[table_at] = 0x10 | (over[table_at] & 0x0F)
    bodies[i] = bodies[i][:name_len] + bytes(over)
    _refused(_join(fields, entries, bodies), tmp_path / "a", "does not form a prefix code")
    # 3 symbols, shortest 1 bit, 2-bit fields 01 10 00: lengths 1, 2, absent: Kraft sum 3/4
    with pytest.raises(ContainerError, match="incomplete"):
        huffman_decode(b"\x02\x12\x60\x00", 4, "test")
    with pytest.raises(ContainerError, match="padding bits"):
        huffman_decode(b"\x02\x12\x61\x00", 4, "test")
    with pytest.raises(ContainerError, match="1 to 4 are allowed"):
        huffman_decode(b"\x02\x15\x60\x00", 4, "test")


def test_compact_huffman_table_round_trips() -> None:
    rng = np.random.default_rng(7)
    for symbols in (
        np.zeros(9, dtype=np.uint8),  # a lone symbol: one 1-bit code
        np.array([255, 0, 0, 3], dtype=np.uint8),  # a sparse alphabet up to 255
        rng.integers(0, 32, 3000).astype(np.uint8),
        np.minimum(rng.geometric(0.05, 4000) - 1, 255).astype(np.uint8),  # lengths 1 to 15
    ):
        coded = huffman_encode(symbols)
        assert np.array_equal(huffman_decode(coded, symbols.size, "test"), symbols)
        alphabet, width = coded[0] + 1, coded[1] & 0x0F
        assert alphabet == int(symbols.max()) + 1 and 1 <= width <= 4
    # 32 equally likely symbols all get 5-bit codes: 1-bit fields, a 6-byte table (v1: 18)
    coded = huffman_encode(np.tile(np.arange(32, dtype=np.uint8), 50))
    assert coded[1] == (5 << 4) | 1 and len(coded) == 6 + 32 * 50 * 5 // 8


def test_corrupt_graph_deflate_stream_is_refused(blob: bytes, tmp_path: Path) -> None:
    fields, entries, bodies = _split(blob)
    bodies[0] = b"\xff" * len(bodies[0])
    _refused(_join(fields, entries, bodies), tmp_path, "graph section")


def test_cluster_index_outside_the_codebook_is_refused(blob: bytes, tmp_path: Path) -> None:
    _fields, entries, bodies = _split(blob)
    i = _shared_index(entries)
    rest = bodies[i][entries[i][2] :]
    nonzero = SHARED_HEADER.unpack_from(rest)[3]
    values = np.full(nonzero, 3, dtype=np.uint8)
    _refused(_replace_streams(blob, values=values, k=2), tmp_path, "outside its codebook of 2")


def test_position_past_the_tensor_end_is_refused(blob: bytes, tmp_path: Path) -> None:
    _fields, entries, bodies = _split(blob)
    i = _shared_index(entries)
    elements = entries[i][7]
    rest = bodies[i][entries[i][2] :]
    nonzero, bits = SHARED_HEADER.unpack_from(rest)[3], SHARED_HEADER.unpack_from(rest)[1]
    span = (1 << bits) - 1
    # every real gap at its largest, with enough fillers in front to run past the end
    gaps = np.array([span] * (elements // span + 1) + [span - 1] * nonzero, dtype=np.uint8)
    if gaps.size > nonzero + elements // span + 1:
        gaps = gaps[-(nonzero + elements // span + 1) :]
    _refused(_replace_streams(blob, gaps=gaps), tmp_path, "past the end of its tensor")


def test_read_header_and_cli_info(blob: bytes, tmp_path: Path) -> None:
    header, sections = read_header(blob)
    assert header.version == 2 and sections[0][1].kind == 1
    assert [name for name, _ in sections[1:]] == [
        "features.0.weight",
        "features.3.weight",
        "classifier.1.weight",
        "classifier.3.weight",
        "classifier.5.weight",
    ]


def test_isolated_decode_measures_the_child_and_passes_refusals_on(
    containers: dict[str, Any], tmp_path: Path
) -> None:
    _, stats = containers["lenet300_100"]
    decoded = decode_container_isolated(stats.path, tmp_path / "ok")
    # the child's own peak (numpy and a 1 MB model), not this torch-laden process's: Linux
    # carries ru_maxrss across fork and exec, so the decoder reads VmHWM instead
    assert 10 << 20 < decoded.peak_rss_bytes < 200 << 20 and decoded.onnx_path.exists()
    bad = tmp_path / "bad.esdc"
    bad.write_bytes(Path(stats.path).read_bytes()[:-5])
    with pytest.raises(ContainerError, match="truncated"):
        decode_container_isolated(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or os.listdir(tmp_path / "bad") == []


def test_decoder_imports_neither_torch_nor_onnx() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import compression.container\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def test_random_corruption_is_refused_with_a_container_error_or_decodes(
    blob: bytes, tmp_path: Path
) -> None:
    """Bytes changed anywhere, header fields included (checksum recomputed, so the decoder's own
    checks must hold): the decoder refuses with a ContainerError or decodes; nothing else."""
    import random

    rng = random.Random(0)
    refused = 0
    for i in range(120):
        data = bytearray(blob)
        for _ in range(rng.choice([1, 2, 5])):
            data[rng.randrange(HEADER_SIZE - 32 if i % 4 == 0 else HEADER_SIZE, len(data))] = (
                rng.randrange(256)
            )
        fields = list(HEADER.unpack_from(data))
        fields[7] = hashlib.sha256(data[HEADER_SIZE:]).digest()
        try:
            decode_container(HEADER.pack(*fields) + bytes(data[HEADER_SIZE:]), tmp_path / str(i))
        except ContainerError:
            refused += 1
            assert not (tmp_path / str(i)).exists() or os.listdir(tmp_path / str(i)) == []
    assert refused > 40
