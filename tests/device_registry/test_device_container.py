"""Container artifacts on the server: stored only when their header and checksum hold, their
latency results must carry the decode figures, and a job's container lands on its version."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_factories import artifact, deployment, enrolled_device
from factories import make_organization

from compression.container import ContainerError
from compression.weight_coding import encode_onnx
from device_registry import services
from device_registry.models import DeploymentResult, Device
from edgeslim_agent.protocol import ProtocolError, Result

pytestmark = pytest.mark.django_db

FIGURES = {"decode_ms": 3.0, "decode_peak_rss_mb": 30.0, "container_bytes": 10, "onnx_bytes": 20}


def _matmul_onnx(w: np.ndarray, path: Path) -> None:
    """One MatMul, ``x[N, rows] @ w -> logits``, saved at ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", cols])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _container(tmp_path: Path, *, format_version: int = 4) -> Path:
    rng = np.random.default_rng(0)
    w = np.linspace(-1, 1, 8, dtype=np.float32)[rng.integers(0, 8, (32, 4))]
    w[rng.random(w.shape) < 0.7] = 0
    _matmul_onnx(w, tmp_path / "m.onnx")
    out = tmp_path / f"m{format_version}.esdc"
    encode_onnx(tmp_path / "m.onnx", out, min_elements=16, format_version=format_version)
    return out


def test_a_container_upload_is_sniffed_checked_and_stored(tmp_path: Path) -> None:
    org = make_organization()
    blob = _container(tmp_path).read_bytes()
    assert services.sniff_format(io.BytesIO(blob)) == "container"
    assert services.sniff_format(io.BytesIO(b"\x08\x07onnx")) == "onnx"
    art = services.artifact_create(
        organization=org, name="m.esdc", file=io.BytesIO(blob), format="container"
    )
    assert art.is_container and art.size == len(blob)
    assert art.decoded_size is not None and art.decoded_size > len(blob) // 2
    assert str(art.file.name).endswith(".esdc")
    manifest = services.deployment_manifest(deployment(org, art, _new_agent(org)))
    assert manifest.format == "container" and manifest.size == len(blob)
    with pytest.raises(ContainerError, match="checksum"):
        services.artifact_create(
            organization=org, name="bad", file=io.BytesIO(blob[:-1] + b"\x00"), format="container"
        )


def _new_agent(org: Any) -> Device:
    device, _ = enrolled_device(org, name="pi5")
    device.agent_version = "0.7.0"
    device.save(update_fields=["agent_version"])
    return device


def test_a_container_is_not_sent_to_an_agent_that_cannot_decode_it(tmp_path: Path) -> None:
    org = make_organization()
    old, _ = enrolled_device(org)  # enrolled as agent 0.1.0
    art = services.artifact_create(
        organization=org, name="m.esdc", file=io.BytesIO(_container(tmp_path).read_bytes()),
        format="container",
    )  # fmt: skip
    with pytest.raises(services.AgentTooOld, match=r"pi \(0\.1\.0\)"):
        deployment(org, art, old)
    # 0.2.0 decoded container format 2 only, 0.3.0 format 3; the server writes format 4,
    # which agents read from 0.7.0 on
    for agent in ("0.2.0", "0.3.0", "0.6.9"):
        old.agent_version = agent
        old.save(update_fields=["agent_version"])
        with pytest.raises(services.AgentTooOld, match=r"needs agent 0\.7\.0"):
            deployment(org, art, old)
    assert deployment(org, art, _new_agent(org)).pk
    # a stored format-3 container still goes to the 0.3.0 agents that read it
    v3 = services.artifact_create(
        organization=org, name="m3.esdc", format="container",
        file=io.BytesIO(_container(tmp_path, format_version=3).read_bytes()),
    )  # fmt: skip
    old.agent_version = "0.2.0"
    old.save(update_fields=["agent_version"])
    with pytest.raises(services.AgentTooOld, match=r"needs agent 0\.3\.0"):
        deployment(org, v3, old)
    old.agent_version = "0.3.0"
    old.save(update_fields=["agent_version"])
    assert deployment(org, v3, old).pk


def _container_v5(tmp_path: Path) -> Path:
    """A container the writer must write in format 5: a 96%-dense layer with 1-bit relative
    indices, whose binary gap stream only blocks of 5 to 8 symbols code within 2%."""
    rng = np.random.default_rng(0)
    w = np.array([-1.0, -0.5, 0.5, 1.0], dtype=np.float32)[rng.integers(0, 4, (256, 4))]
    w[rng.random(w.shape) >= 0.96] = 0
    _matmul_onnx(w, tmp_path / "d.onnx")
    stats = encode_onnx(tmp_path / "d.onnx", tmp_path / "d.esdc", fc_index_bits=1, min_elements=16)
    assert stats.version == 5
    return Path(stats.path)


def test_a_format_5_container_goes_only_to_agents_from_0_8_0(tmp_path: Path) -> None:
    """The gate reads the stored container's own header: a format-5 file needs agent 0.8.0,
    while a format-4 file (what the writer writes unless a stream needs blocks of 5 to 8) still
    goes to 0.7.0 agents."""
    org = make_organization()
    v5 = services.artifact_create(
        organization=org, name="d.esdc", file=io.BytesIO(_container_v5(tmp_path).read_bytes()),
        format="container",
    )  # fmt: skip
    assert services.container_agent_needed(v5) == (0, 8, 0)
    agent = _new_agent(org)  # 0.7.0
    with pytest.raises(services.AgentTooOld, match=r"needs agent 0\.8\.0.*pi5 \(0\.7\.0\)"):
        deployment(org, v5, agent)
    v4 = services.artifact_create(
        organization=org, name="m.esdc", file=io.BytesIO(_container(tmp_path).read_bytes()),
        format="container",
    )  # fmt: skip
    assert services.container_agent_needed(v4) == (0, 7, 0)
    assert deployment(org, v4, agent).pk
    agent.agent_version = "0.8.0"
    agent.save(update_fields=["agent_version"])
    assert deployment(org, v5, agent).pk


def _store(dep: Any, device: Any, data: dict[str, Any]) -> services.StoredResult:
    return services.deployment_result_store(
        device_id=device.pk,
        result=Result(deployment_id=dep.pk, seq=1, kind="latency", data=data),
    )


def test_a_container_deployments_latency_needs_the_decode_figures(tmp_path: Path) -> None:
    org = make_organization()
    device = _new_agent(org)
    art = services.artifact_create(
        organization=org, name="m.esdc", file=io.BytesIO(_container(tmp_path).read_bytes()),
        format="container",
    )  # fmt: skip
    dep = deployment(org, art, device)
    with pytest.raises(ProtocolError, match="decode_ms"):
        _store(dep, device, {"p50_ms": 1.0})
    from device_factories import org_admin
    from django.urls import reverse
    from factories import client_for

    api = client_for(org_admin(org)).get(reverse("api_deployment", args=[dep.pk]))
    assert api.json()["artifact_format"] == "container"
    assert api.json()["artifact_decoded_size"] == art.decoded_size
    stored = _store(dep, device, {"p50_ms": 1.0, **FIGURES})
    assert stored.created and stored.event is not None
    assert stored.event["data"]["decode_ms"] == 3.0
    assert DeploymentResult.objects.get(deployment=dep).payload["onnx_bytes"] == 20


def test_a_plain_onnx_deployment_refuses_decode_figures(tmp_path: Path) -> None:
    org = make_organization()
    device, _ = enrolled_device(org)
    dep = deployment(org, artifact(org, tmp_path), device)
    with pytest.raises(ProtocolError, match="plain ONNX"):
        _store(dep, device, {"p50_ms": 1.0, **FIGURES})
    assert _store(dep, device, {"p50_ms": 1.0}).created


def test_the_artifacts_page_takes_a_container_and_refuses_a_broken_one(tmp_path: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse
    from factories import client_for, make_user

    from device_registry.models import DeployableArtifact

    user = make_user()
    org = make_organization(owner=user)
    blob = _container(tmp_path).read_bytes()
    client = client_for(user)
    url = reverse("devices:artifacts")
    ok = client.post(url, {"file": SimpleUploadedFile("m.esdc", blob)})
    assert ok.status_code == 302
    art = DeployableArtifact.objects.get(organization=org)
    assert art.is_container and art.decoded_size and art.size == len(blob)
    listing = client.get(url).content.decode()
    assert "data-container" in listing and f"{art.decoded_size} bytes" in listing
    refused = client.post(url, {"file": SimpleUploadedFile("bad.esdc", blob[:-20])})
    assert refused.status_code == 200
    assert "The container is truncated" in refused.content.decode()
    assert DeployableArtifact.objects.filter(organization=org).count() == 1
