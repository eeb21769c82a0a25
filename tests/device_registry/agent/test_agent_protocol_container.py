"""Container deployments in the protocol: the manifest's format is signed, decode figures are
checked, and manifests issued before the field existed keep their signatures."""

from __future__ import annotations

import json

import pytest

from edgeslim_agent.protocol import (
    BenchSettings,
    Deploy,
    Manifest,
    ProtocolError,
    decode,
    decode_figures,
    encode,
)


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = dict(
        deployment_id=1, artifact_id=2, name="m.esdc", sha256="b" * 64, size=3, issued_at=4
    )
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def test_the_format_is_signed_unless_it_is_the_default() -> None:
    onnx, container = _manifest(), _manifest(format="container")
    assert onnx.signing_bytes() != container.signing_bytes()
    # the exact bytes a manifest signed before the format field existed
    body = json.loads(onnx.signing_bytes())
    assert "format" not in body and body["_domain"] == "edgeslim-artifact-manifest-v1"
    assert json.loads(container.signing_bytes())["format"] == "container"


def test_an_unknown_format_is_refused_on_the_wire() -> None:
    with pytest.raises(ProtocolError, match="unknown artifact format"):
        _manifest(format="zip").validate()
    msg = Deploy(
        manifest=_manifest(format="container"), signature="", artifact_url="/a", eval_url=None,
        settings=BenchSettings(),
    )  # fmt: skip
    text = encode(msg)
    assert decode(text) == msg
    # a plain ONNX deploy leaves the field out, so agents from before it still read the frame
    plain = Deploy(
        manifest=_manifest(), signature="", artifact_url="/a", eval_url=None,
        settings=BenchSettings(),
    )  # fmt: skip
    assert '"format"' not in encode(plain) and decode(encode(plain)) == plain
    with pytest.raises(ProtocolError, match="unknown artifact format"):
        decode(text.replace('"format":"container"', '"format":"tar"'))


GOOD = {"decode_ms": 12.5, "decode_peak_rss_mb": 40.0, "container_bytes": 900, "onnx_bytes": 40000}


def test_decode_figures_are_checked() -> None:
    assert decode_figures({**GOOD, "p50_ms": 1.0}) == GOOD
    for key, bad in (
        ("decode_ms", None),
        ("decode_ms", -1.0),
        ("decode_ms", True),
        ("decode_peak_rss_mb", "40"),
        ("container_bytes", 0),
        ("onnx_bytes", 1.5),
    ):
        with pytest.raises(ProtocolError, match=key):
            decode_figures({**GOOD, key: bad})
