"""Container format 4's streams: compact tables, block (extended-alphabet) Huffman, fixed width."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compression.container import (
    HEADER,
    HEADER_SIZE,
    ContainerError,
    decode_container,
    decode_stream_v4,
)
from compression.weight_coding import (
    encode_onnx,
    encode_stream_v4,
    entropy_bits,
    huffman_encode,
    table_v4_bits,
)


def _pack(bits: str) -> bytes:
    return np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")).tobytes()


def _skewed(n: int, p: list[float], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(len(p), n, p=p).astype(np.uint8)


def test_block_coding_brings_a_skewed_stream_within_two_percent_where_single_symbols_miss() -> None:
    """A gap stream of a nearly dense layer (mostly gap 0): single-symbol Huffman spends at
    least one bit per symbol against 0.88 bits of entropy; codes over blocks of symbols do not."""
    symbols = _skewed(10_000, [0.8, 0.15, 0.05])
    entropy = entropy_bits(symbols) * symbols.size
    _, single, _ = encode_stream_v4(symbols, modes=(1,))
    assert single.payload_bits > 1.3 * entropy  # whole-bit codes: 1 bit for the 0.8 symbol
    coded, plan, _ = encode_stream_v4(symbols)
    assert plan.mode >= 2
    assert plan.payload_bits <= 1.02 * entropy, (plan, entropy)
    # chosen by bytes, table included: smaller than single symbols and than format 3's stream
    assert len(coded) == plan.total_bytes < single.total_bytes
    assert len(coded) < len(huffman_encode(symbols))
    assert np.array_equal(decode_stream_v4(coded, symbols.size, "test"), symbols)


def test_every_mode_round_trips() -> None:
    rng = np.random.default_rng(3)
    cases = [
        np.zeros(0, dtype=np.uint8),
        np.full(7, 5, dtype=np.uint8),
        np.array([255, 0, 0, 3], dtype=np.uint8),
        rng.integers(0, 32, 2001).astype(np.uint8),
        np.minimum(rng.geometric(0.05, 3001) - 1, 255).astype(np.uint8),  # lengths up to 15
        _skewed(1001, [0.9, 0.07, 0.03]),  # 1001: the last block of 2, 3 or 4 is padded
    ]
    for symbols in cases:
        for modes in ((0,), (1,), (2,), (3,), (4,), None):
            alphabet = int(symbols.max()) + 1 if symbols.size else 1
            if modes and modes[0] and (alphabet ** modes[0] > 1 << 16 or not symbols.size):
                continue
            coded, plan, code_bits = encode_stream_v4(symbols, modes=modes)
            assert len(coded) == plan.total_bytes and int(code_bits.sum()) == plan.payload_bits
            decoded = decode_stream_v4(coded, symbols.size, "test")
            assert decoded.dtype == np.uint8 and np.array_equal(decoded, symbols), modes


def test_a_zero_entropy_stream_takes_no_payload_bits() -> None:
    coded, plan, _ = encode_stream_v4(np.full(500, 7, dtype=np.uint8))
    assert plan.mode == 0 and plan.payload_bits == 0 and coded == bytes([0, 7, 7])


def test_the_compact_table_beats_format_3s_on_a_wide_alphabet() -> None:
    """Relative indices of a sparse layer: 130 gap values, lengths that change slowly."""
    gaps = np.minimum(np.random.default_rng(1).geometric(0.03, 20_000) - 1, 129).astype(np.uint8)
    v3 = huffman_encode(gaps)
    v3_table = 2 + (130 * (v3[1] & 0x0F) + 7) // 8
    coded, plan, _ = encode_stream_v4(gaps, modes=(1,))
    assert plan.header_bytes + (plan.table_bits + 7) // 8 < v3_table
    assert len(coded) < len(v3)


def test_bad_version_4_streams_are_refused() -> None:
    ok, _plan, _ = encode_stream_v4(_skewed(1000, [0.85, 0.1, 0.05]), modes=(2,))
    with pytest.raises(ContainerError, match="unknown mode 5"):
        decode_stream_v4(bytes([5]) + ok[1:], 1000, "test")
    with pytest.raises(ContainerError, match="over the cap of 65536"):
        decode_stream_v4(bytes([3, 255]) + ok[2:], 1000, "test")  # 256^3 block symbols
    with pytest.raises(ContainerError, match="runs past the end"):
        decode_stream_v4(ok[:3], 1000, "test")  # cut inside its table
    with pytest.raises(ContainerError, match=r"ends before|runs past its end"):
        decode_stream_v4(ok[:-3], 1000, "test")  # cut inside its codes
    with pytest.raises(ContainerError, match="after its last symbol"):
        decode_stream_v4(ok + b"\x00", 1000, "test")
    with pytest.raises(ContainerError, match="malformed Elias gamma"):
        decode_stream_v4(bytes([1, 2]) + b"\x00" * 8, 10, "test")
    with pytest.raises(ContainerError, match="more than its 9 block symbols"):
        decode_stream_v4(bytes([2, 2]) + _pack("0001010" + "0" * 40), 10, "test")  # U = 10
    # the last block of 2 carries a real symbol where the padding 0 belongs
    padded, _, _ = encode_stream_v4(np.array([1, 2, 1, 2, 1, 2], dtype=np.uint8), modes=(2,))
    assert np.array_equal(decode_stream_v4(padded, 6, "test"), [1, 2, 1, 2, 1, 2])
    with pytest.raises(ContainerError, match="padded with non-zero symbols"):
        decode_stream_v4(padded, 5, "test")
    # fixed width: 2-bit fields for symbols 4..6, one field says 3 (symbol 7)
    with pytest.raises(ContainerError, match="above its declared largest 6"):
        decode_stream_v4(bytes([0, 4, 6]) + _pack("00011011"), 4, "test")
    with pytest.raises(ContainerError, match="take 1"):
        decode_stream_v4(bytes([0, 4, 6]) + _pack("0001" + "0" * 12), 4, "test")
    with pytest.raises(ContainerError, match="must not exceed"):
        decode_stream_v4(bytes([0, 6, 4]), 0, "test")
    # a lone code must be 1 bit long: a lone symbol of 2 bits is an incomplete code
    lone = bytes([1, 0]) + _pack(table_v4_bits(np.array([2])) + "00" * 3)
    with pytest.raises(ContainerError, match="incomplete"):
        decode_stream_v4(lone, 3, "test")


def _tiny_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    w[w != 0] = np.round(w[w != 0] * 2) / 2 + 0.25  # a handful of shared values
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_version_4_file_with_a_layers_own_streams_is_refused(tmp_path: Path) -> None:
    """Format 4 has one stream layout, in the streams section; coding 2 (a layer's own streams,
    in format 2's layout) relabelled as version 4 is refused, not misread."""
    _tiny_model(tmp_path / "m.onnx")
    v2 = Path(encode_onnx(tmp_path / "m.onnx", tmp_path / "v2.esdc", format_version=2).path)
    data = bytearray(v2.read_bytes())
    fields = list(HEADER.unpack_from(data))
    fields[1] = 4
    fields[7] = hashlib.sha256(data[HEADER_SIZE:]).digest()
    with pytest.raises(ContainerError, match="format version 4 does not allow"):
        decode_container(HEADER.pack(*fields) + bytes(data[HEADER_SIZE:]), tmp_path / "out")
    decoded = decode_container(v2, tmp_path / "ok")  # the same file as version 2 decodes
    assert decoded.version == 2


def test_the_report_gives_each_streams_payload_and_table_apart(tmp_path: Path) -> None:
    from compression.methods.weight_coding import deep_compression_table

    _tiny_model(tmp_path / "m.onnx")
    stats = encode_onnx(tmp_path / "m.onnx", tmp_path / "m.esdc")
    streams = deep_compression_table(stats.to_dict())["streams"]
    assert len(streams) == len(stats.streams) == 2
    for row, st in zip(streams, stats.streams, strict=True):
        assert row["mode"] == st.mode and row["table_bits"] == st.table_bits
        assert (
            row["coded_bytes"]
            == (3 if st.mode == 0 else 2) + (st.table_bits + st.payload_bits + 7) // 8
        )
        if st.entropy_bytes > 0:
            assert row["payload_overhead"] == pytest.approx(
                st.payload_bits / (8 * st.entropy_bytes) - 1
            )
