"""The protocol refuses anything that is not exactly a message of its version."""

from __future__ import annotations

import json

import pytest

from edgeslim_agent.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    BenchSettings,
    Deploy,
    DeviceFacts,
    Heartbeat,
    Hello,
    Manifest,
    ProtocolError,
    Result,
    decode,
    encode,
    result_seq,
)

FACTS = DeviceFacts(
    cpu="Cortex-A72",
    cores=4,
    memory_mb=4096,
    os="Linux",
    arch="aarch64",
    python="3.11.2",
    ort_version="1.20.0",
    providers=["CPUExecutionProvider"],
)


def _deploy() -> Deploy:
    return Deploy(
        manifest=Manifest(
            deployment_id=7, artifact_id=3, name="m.onnx", sha256="a" * 64, size=10, issued_at=1
        ),
        signature="c2ln",
        artifact_url="/api/v1/agent/artifacts/3",
        eval_url=None,
        settings=BenchSettings(batch_sizes=[1, 8], profile=True),
    )


@pytest.mark.parametrize(
    "msg",
    [
        Hello(agent_version="0.1.0", facts=FACTS),
        Heartbeat(ts=12.5),
        Result(deployment_id=1, seq=2, kind="latency", data={"p50_ms": 1.5}),
        _deploy(),
    ],
)
def test_every_message_round_trips(msg):
    assert decode(encode(msg)) == msg


def _frame(**body):
    return json.dumps({"v": PROTOCOL_VERSION, **body})


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"v": 99, "type": "heartbeat", "ts": 1}), "version"),
        (json.dumps({"type": "heartbeat", "ts": 1}), "version"),
        (_frame(type="launch_missiles"), "unknown message type"),
        (_frame(type="heartbeat", ts=1, extra=1), "unknown fields"),
        (_frame(type="heartbeat"), "missing field"),
        (_frame(type="heartbeat", ts="soon"), "expected a number"),
        (_frame(type="heartbeat", ts=True), "expected a number"),
        (_frame(type="result", deployment_id=1, seq=0, kind="latency", data={}), "seq"),
        (_frame(type="result", deployment_id=1, seq=1, kind="bogus", data={}), "kind"),
        (_frame(type="result", deployment_id="1", seq=1, kind="latency", data={}), "integer"),
        (_frame(type="result", deployment_id=1, seq=1, kind="latency", data=[]), "object"),
        ('{"v": 1, "type": "heartbeat", "ts": NaN}', "NaN"),
        ("[" * 50_000 + "]" * 50_000, "over"),
        ("[" * 20_000 + "]" * 20_000, "not JSON"),
    ],
)
def test_it_refuses_malformed_frames(frame, why):
    with pytest.raises(ProtocolError, match=why):
        decode(frame)


def test_it_refuses_an_oversized_frame_before_parsing_it():
    big = _frame(type="result", deployment_id=1, seq=1, kind="latency", data={"x": "y" * 70_000})
    assert len(big) > MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolError, match="over"):
        decode(big)


def test_encode_refuses_an_oversized_result():
    with pytest.raises(ProtocolError, match="over"):
        encode(Result(deployment_id=1, seq=1, kind="latency", data={"x": "y" * 70_000}))


def test_it_refuses_a_server_message_where_an_agent_message_is_expected():
    with pytest.raises(ProtocolError, match="not expected"):
        decode(encode(_deploy()), allowed=(Hello, Heartbeat))


def test_settings_are_range_checked():
    with pytest.raises(ProtocolError, match="runs"):
        encode(BenchSettings(runs=0))
    with pytest.raises(ProtocolError, match="duplicates"):
        encode(BenchSettings(batch_sizes=[1, 1]))


def test_result_seqs_are_deterministic_and_distinct():
    s = BenchSettings(batch_sizes=[1, 4, 16])
    seqs = [result_seq(s, "latency", i) for i in range(3)]
    seqs += [result_seq(s, "accuracy"), result_seq(s, "complete")]
    assert seqs == [1, 2, 3, 4, 5]
    assert result_seq(s, "failed") == result_seq(s, "complete")


def test_manifest_signing_bytes_change_with_every_field():
    m = Manifest(deployment_id=1, artifact_id=2, name="a", sha256="b" * 64, size=3, issued_at=4)
    other = Manifest(deployment_id=1, artifact_id=2, name="a", sha256="b" * 64, size=4, issued_at=4)
    assert m.signing_bytes() != other.signing_bytes()
