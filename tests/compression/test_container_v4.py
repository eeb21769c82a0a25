"""Container format 4's streams: compact tables, block (extended-alphabet) Huffman, fixed width;
format 5's blocks of 5 to 8 symbols, and the encoder's policy (within 2% of the entropy first)."""

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
    SECTION_ENTRY,
    SECTION_ENTRY_SIZE,
    ContainerError,
    decode_container,
    decode_stream_v4,
    read_header,
)
from compression.weight_coding import (
    ENTROPY_MARGIN,
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
    with pytest.raises(ContainerError, match=r"blocks of 5 symbols .* format version 5 introduced"):
        decode_stream_v4(bytes([5]) + ok[1:], 1000, "test")  # a version 4 stream: blocks <= 4
    with pytest.raises(ContainerError, match="unknown mode 9"):
        decode_stream_v4(bytes([9]) + ok[1:], 1000, "test")
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


# --- the encoder's policy and format 5 --------------------------------------------------------


def _binary(n: int, p_one: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p_one).astype(np.uint8)


def _within(payload_bits: int, symbols: np.ndarray) -> bool:
    return payload_bits <= (1 + ENTROPY_MARGIN) * symbols.size * entropy_bits(symbols)


def test_a_low_entropy_binary_stream_is_coded_within_two_percent_and_round_trips() -> None:
    """Relative indices of 1 bit of a nearly dense layer: 1000 symbols, p(0) = 0.88 (0.53 bits
    of entropy). Fixed width and single-symbol Huffman spend a bit per symbol (+89%)."""
    symbols = _binary(1000, 0.12)
    for mode in (0, 1):
        _, plan, _ = encode_stream_v4(symbols, modes=(mode,))
        assert not _within(plan.payload_bits, symbols)
    coded, plan, _ = encode_stream_v4(symbols)
    assert plan.mode >= 2 and _within(plan.payload_bits, symbols), plan
    version = 5 if plan.mode > 4 else 4
    assert np.array_equal(decode_stream_v4(coded, symbols.size, "test", version), symbols)


def test_a_near_uniform_byte_stream_is_huffman_coded_though_fixed_width_is_fewer_bytes() -> None:
    """402 cluster indices of an 8-bit codebook, close to uniform (VGG's first conv): 8-bit
    fixed width takes 2.5% over the entropy and no table; the policy takes the Huffman code,
    within 2%, at the price of its table."""
    symbols = np.random.default_rng(0).integers(0, 256, 402).astype(np.uint8)
    fixed, fixed_plan, _ = encode_stream_v4(symbols, modes=(0,))
    assert not _within(fixed_plan.payload_bits, symbols)
    coded, plan, _ = encode_stream_v4(symbols)
    assert plan.mode == 1 and _within(plan.payload_bits, symbols), plan
    assert len(coded) > len(fixed)  # chosen by the rule, not by bytes
    assert np.array_equal(decode_stream_v4(coded, symbols.size, "test"), symbols)
    # among modes within the margin bytes decide: a skewed stream is not moved to longer blocks
    skewed = _skewed(5000, [0.5, 0.3, 0.2])
    _, single, _ = encode_stream_v4(skewed, modes=(1,))
    _, chosen, _ = encode_stream_v4(skewed)
    assert chosen.total_bytes <= single.total_bytes


def test_blocks_of_5_to_8_are_used_only_where_shorter_blocks_miss_the_margin() -> None:
    symbols = _binary(1000, 0.05)  # 0.29 bits of entropy per symbol
    _, short, _ = encode_stream_v4(symbols, max_block=4)
    assert short.mode <= 4 and not _within(short.payload_bits, symbols)  # fewest bytes
    coded, plan, _ = encode_stream_v4(symbols)
    assert 5 <= plan.mode <= 8 and _within(plan.payload_bits, symbols), plan
    assert np.array_equal(decode_stream_v4(coded, symbols.size, "test", 5), symbols)
    with pytest.raises(ContainerError, match="format version 5 introduced"):
        decode_stream_v4(coded, symbols.size, "test", 4)
    # where blocks of at most 4 are within the margin, no longer block is tried
    assert encode_stream_v4(_binary(1000, 0.12))[1].mode <= 4
    # forced, every long block round-trips (the last block padded)
    for k in range(5, 9):
        odd = _binary(1001, 0.2, seed=k)
        coded, plan, _ = encode_stream_v4(odd, modes=(k,))
        assert plan.mode == k
        assert np.array_equal(decode_stream_v4(coded, odd.size, "test", 5), odd)
    with pytest.raises(ContainerError, match="unknown mode 9"):
        decode_stream_v4(bytes([9]) + coded[1:], 1001, "test", 5)


def _dense_binary_gaps_model(path: Path) -> None:
    """A 1024-weight MatMul, 96% non-zero: with 1-bit relative indices its gap stream is
    binary with p(1) about 0.04, which only blocks of 5 to 8 code within 2%."""
    rng = np.random.default_rng(0)
    w = np.array([-1.0, -0.5, 0.5, 1.0], dtype=np.float32)[rng.integers(0, 4, (256, 4))]
    w[rng.random(w.shape) >= 0.96] = 0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _first_long_stream(blob: bytes) -> int:
    """The file offset of the mode byte of the first stream coding blocks of more than 4."""
    header, entries = read_header(blob)
    at = HEADER_SIZE + header.section_count * SECTION_ENTRY_SIZE
    for i, (_name, entry) in enumerate(entries):
        kind = SECTION_ENTRY.unpack_from(blob, HEADER_SIZE + i * SECTION_ENTRY_SIZE)[0]
        if kind == 4:  # the streams section: count, lengths, streams
            count = blob[at]
            lengths = np.frombuffer(blob, dtype="<u4", count=count, offset=at + 1)
            start = at + 1 + 4 * count
            for n in lengths.tolist():
                if blob[start] > 4:
                    return start
                start += n
        at += entry.body_length
    raise AssertionError("no stream codes blocks of more than 4 symbols")


def _resealed(
    blob: bytes, *, version: int | None = None, patch: dict[int, int] | None = None
) -> bytes:
    data = bytearray(blob)
    for offset, value in (patch or {}).items():
        data[offset] = value
    fields = list(HEADER.unpack_from(data))
    if version is not None:
        fields[1] = version
    fields[7] = hashlib.sha256(data[HEADER_SIZE:]).digest()
    return HEADER.pack(*fields) + bytes(data[HEADER_SIZE:])


def test_the_writer_writes_version_5_only_for_a_long_block(tmp_path: Path) -> None:
    import onnxruntime as ort

    _dense_binary_gaps_model(tmp_path / "m.onnx")
    stats = encode_onnx(tmp_path / "m.onnx", tmp_path / "v5.esdc", fc_index_bits=1, min_elements=16)
    assert stats.version == 5 and max(st.mode for st in stats.streams) > 4
    gaps = next(st for st in stats.streams if st.role == "gaps")
    assert gaps.payload_bits <= (1 + ENTROPY_MARGIN) * 8 * gaps.entropy_bytes
    decoded = decode_container(stats.path, tmp_path / "out5")
    assert decoded.version == 5
    x = np.random.default_rng(1).random((3, 256), dtype=np.float32)
    outs = []
    for model in (tmp_path / "m.onnx", decoded.onnx_path):
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"x": x})[0])
    assert np.array_equal(outs[0], outs[1])
    # capped at format 4 (agents before 0.8.0): blocks of at most 4, version 4, a few bytes more
    v4 = encode_onnx(
        tmp_path / "m.onnx", tmp_path / "v4.esdc", fc_index_bits=1, min_elements=16,
        format_version=4,
    )  # fmt: skip
    assert v4.version == 4 and max(st.mode for st in v4.streams) <= 4
    assert decode_container(v4.path, tmp_path / "out4").version == 4
    # a container whose streams all code blocks of at most 4 is still written as version 4
    _tiny_model(tmp_path / "t.onnx")
    tiny = encode_onnx(tmp_path / "t.onnx", tmp_path / "t.esdc")
    assert tiny.version == 4 and max(st.mode for st in tiny.streams) <= 4
    assert read_header(Path(tiny.path))[0].version == 4


def test_long_blocks_outside_version_5_and_blocks_of_9_are_refused(tmp_path: Path) -> None:
    _dense_binary_gaps_model(tmp_path / "m.onnx")
    stats = encode_onnx(tmp_path / "m.onnx", tmp_path / "v5.esdc", fc_index_bits=1, min_elements=16)
    blob = Path(stats.path).read_bytes()
    at = _first_long_stream(blob)
    with pytest.raises(
        ContainerError, match=r"blocks of \d symbols .* format version 5 introduced"
    ):
        decode_container(_resealed(blob, version=4), tmp_path / "as4")
    assert not (tmp_path / "as4" / "model.onnx").exists()
    with pytest.raises(ContainerError, match="unknown mode 9"):
        decode_container(_resealed(blob, patch={at: 9}), tmp_path / "nine")
    assert not (tmp_path / "nine" / "model.onnx").exists()
