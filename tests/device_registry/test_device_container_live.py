"""A real agent receives a compressed container, decodes it, and streams back latency and accuracy;
a container its decoder refuses is reported as decode_failed and never benchmarked."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_process import AgentProcess, enroll, wait_for
from django.urls import reverse
from factories import client_for, make_organization, make_user

from compression.container import (
    HEADER,
    HEADER_SIZE,
    KIND_STREAM,
    SECTION_ENTRY,
    SECTION_ENTRY_SIZE,
    ContainerError,
)
from compression.weight_coding import encode_onnx
from device_registry import services
from device_registry.models import DeploymentResult, DeploymentTarget
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _shared_mlp(path: Path, *, hidden: int = 48, values: int = 16, density: float = 0.1) -> Path:
    """x[N, 64] -> MatMul(64 x hidden, ``density`` non-zero, ``values`` shared values evenly
    spaced in [-1, 1]) -> Relu -> MatMul(hidden x 3). The default: 90% zeros, 16 values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    codebook = np.linspace(-1.0, 1.0, values, dtype=np.float32)
    w1 = codebook[rng.integers(0, values, (64, hidden))] * (rng.random((64, hidden)) < density)
    w2 = rng.standard_normal((hidden, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(w1.astype(np.float32), "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _eval_set(model: Path, path: Path, *, samples: int = 80, wrong: int = 7) -> Path:
    """Labels = the source model's own predictions, ``wrong`` of them flipped."""
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((samples, 64)).astype(np.float32)
    pred = ort.InferenceSession(str(model)).run(None, {"x": x})[0].argmax(1)
    y = pred.copy()
    y[:wrong] = (y[:wrong] + 1) % 3
    np.savez(path, x=x, y=y)
    return path


def _broken_huffman_table(blob: bytes) -> bytes:
    """The same container with an over-subscribed Huffman table, re-checksummed (so only the
    decoder, not the header or the sha256 of the download, can catch it)."""
    fields = list(HEADER.unpack_from(blob))
    payload = bytearray(blob[HEADER_SIZE:])
    cursor = fields[3] * SECTION_ENTRY_SIZE
    for i in range(fields[3]):
        entry = SECTION_ENTRY.unpack_from(payload, i * SECTION_ENTRY_SIZE)
        if entry[0] == KIND_STREAM:
            count = payload[cursor]  # the streams section: a count, u32 lengths, the streams
            at = cursor + 1 + 4 * count + 1  # the first stream's (shortest code, width) byte
            payload[at] = 0x10 | (payload[at] & 0x0F)  # every code shorter: over-subscribed
            break
        cursor += entry[4]
    else:  # pragma: no cover - the model has a shared layer
        raise AssertionError("no streams section")
    fields[7] = hashlib.sha256(payload).digest()
    return HEADER.pack(*fields) + bytes(payload)


def _enrolled(tmp_path: Path, server: str, org: Any) -> tuple[Any, AgentProcess]:
    device, code = services.device_register(organization=org, name="pi")
    done = enroll(tmp_path / "pi", server, code)
    assert done.returncode == 0, done.stderr
    return device, AgentProcess(tmp_path / "pi", tmp_path / "pi.log")


def _run_to_the_end(agent: AgentProcess, dep: Any) -> Any:
    """Start ``agent``, wait until ``dep``'s target has succeeded or failed, stop the agent."""
    agent.start()
    try:
        return wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=dep, status__in=["succeeded", "failed"]).first(),
            timeout=120, what="the deployment to finish", log=agent.output,
        )  # fmt: skip
    finally:
        agent.stop()


def test_a_real_agent_decodes_a_container_then_benchmarks_and_evaluates_it(
    tmp_path: Path, daphne_server: Any
) -> None:
    user = make_user()
    org = make_organization(owner=user)
    source = _shared_mlp(tmp_path / "mlp.onnx")
    stats = encode_onnx(source, tmp_path / "mlp.esdc", min_elements=64)
    assert [layer.stored_as for layer in stats.layers] == ["shared", "raw"]
    npz = _eval_set(source, tmp_path / "eval.npz")
    art = services.artifact_create(
        organization=org, name="mlp.esdc", file=io.BytesIO(Path(stats.path).read_bytes()),
        eval_file=io.BytesIO(npz.read_bytes()), format="container", created_by=user,
    )  # fmt: skip
    assert art.size == stats.total_bytes and art.decoded_size == stats.decoded_bytes
    device, agent = _enrolled(tmp_path, daphne_server.base_url, org)
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5, batch_sizes=[1, 8], accuracy=True),
    )  # fmt: skip
    target = _run_to_the_end(agent, dep)
    assert target.status == "succeeded", (target.message, agent.output()[-3000:])
    rows = {r.seq: r for r in DeploymentResult.objects.filter(deployment=dep)}
    assert [rows[s].kind for s in sorted(rows)] == ["latency", "latency", "accuracy", "complete"]
    for seq in (1, 2):
        data = rows[seq].payload
        assert data["p50_ms"] > 0 and data["container_bytes"] == stats.total_bytes
        assert data["onnx_bytes"] == stats.decoded_bytes
        assert data["decode_ms"] > 0 and data["decode_peak_rss_mb"] > 5
    # the decoded model predicts exactly what the source does: only the flipped labels miss
    accuracy = rows[3].payload
    assert (accuracy["correct"], accuracy["samples"]) == (80 - 7, 80)
    assert rows[4].payload["onnx_bytes"] == stats.decoded_bytes
    assert "decoded a" in agent.output()

    page = client_for(user).get(reverse("devices:deployment", args=[dep.pk]))
    html = page.content.decode()
    assert "Compressed container:" in html and f"({stats.total_bytes} bytes)" in html
    assert f"({stats.decoded_bytes} bytes)" in html and "Decode (time, peak RSS)" in html


def test_a_real_agent_decodes_a_format_5_container(tmp_path: Path, daphne_server: Any) -> None:
    """The agent of this tree (0.8.0) receives a format-5 container (a stream coded in blocks of
    more than 4 symbols), decodes it and scores exactly like the source model."""
    org = make_organization()
    # 96% non-zero, 4 shared values: with 1-bit relative indices the gap stream is binary
    # (p(1) about 0.04), which only blocks of 5 to 8 symbols code within 2%: format 5.
    source = _shared_mlp(tmp_path / "mlp.onnx", hidden=24, values=4, density=0.96)
    stats = encode_onnx(source, tmp_path / "mlp.esdc", min_elements=64, fc_index_bits=1)
    assert stats.version == 5 and max(st.mode for st in stats.streams) > 4
    npz = _eval_set(source, tmp_path / "eval.npz")
    art = services.artifact_create(
        organization=org, name="mlp.esdc", file=io.BytesIO(Path(stats.path).read_bytes()),
        eval_file=io.BytesIO(npz.read_bytes()), format="container",
    )  # fmt: skip
    device, agent = _enrolled(tmp_path, daphne_server.base_url, org)
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=3, batch_sizes=[1], accuracy=True),
    )  # fmt: skip
    target = _run_to_the_end(agent, dep)
    assert target.status == "succeeded", (target.message, agent.output()[-3000:])
    device.refresh_from_db()
    assert device.agent_version == "0.8.0"
    rows = {r.seq: r for r in DeploymentResult.objects.filter(deployment=dep)}
    assert [rows[s].kind for s in sorted(rows)] == ["latency", "accuracy", "complete"]
    assert rows[1].payload["container_bytes"] == stats.total_bytes
    assert rows[1].payload["onnx_bytes"] == stats.decoded_bytes
    assert (rows[2].payload["correct"], rows[2].payload["samples"]) == (80 - 7, 80)


def test_a_container_the_decoder_refuses_is_reported_and_never_benchmarked(
    tmp_path: Path, daphne_server: Any
) -> None:
    org = make_organization()
    source = _shared_mlp(tmp_path / "mlp.onnx")
    # format 3, whose stream tables have a fixed layout to break by hand (the agent reads it;
    # format 4's malformed tables are refused in tests/compression/test_container.py)
    stats = encode_onnx(source, tmp_path / "mlp.esdc", format_version=3)
    good = Path(stats.path).read_bytes()
    bad = _broken_huffman_table(good)
    # the server decodes what it is given, so it refuses the broken one outright
    with pytest.raises(ContainerError, match="does not form a prefix code"):
        services.artifact_create(
            organization=org, name="bad.esdc", file=io.BytesIO(bad), format="container"
        )
    # a stored container whose bytes go bad after upload (and are signed as they are): only the
    # agent's decoder can catch it, since its header and checksum are consistent
    art = services.artifact_create(
        organization=org, name="bad.esdc", file=io.BytesIO(good), format="container"
    )
    with art.file.open("wb") as fh:
        fh.write(bad)
    art.sha256 = hashlib.sha256(bad).hexdigest()
    art.save(update_fields=["sha256"])
    device, agent = _enrolled(tmp_path, daphne_server.base_url, org)
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5),
    )  # fmt: skip
    target = _run_to_the_end(agent, dep)
    assert target.status == "failed"
    assert "does not form a prefix code" in target.message
    kinds = list(DeploymentResult.objects.filter(deployment=dep).values_list("kind", "payload"))
    assert [k for k, _ in kinds] == ["failed"]  # no latency: nothing half-decoded was benchmarked
    assert kinds[0][1]["reason"] == "decode_failed"
    leftovers = list((tmp_path / "pi").rglob("*.d"))
    assert leftovers == []


def _shared_centroid_version(org: Any, tmp_path: Path) -> Any:
    """A job's fp32 ONNX version on the digits whose MatMul weight is shared (32 values, 40%
    zeros), with the container weight_coding would write for it attached."""
    import onnx
    from catalog_versions import SIZE, centroid_onnx
    from jobs_factories import make_digits, make_model_version
    from onnx import numpy_helper

    from webapp.catalog.services import (
        model_version_attach_container,
        model_version_create_from_job,
    )
    from webapp.jobs.models import Job, JobStatus

    parent = make_model_version(org)
    parent.input_size = SIZE
    parent.save(update_fields=["input_size"])
    digits = make_digits(org)
    job = Job.objects.create(
        organization=org, name="deep", model_version=parent, dataset=digits, recipe={},
        status=JobStatus.SUCCEEDED,
    )  # fmt: skip
    path = centroid_onnx(tmp_path / "centroids.onnx", dataset=digits)
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name == "w":
            w = numpy_helper.to_array(tensor).copy()
            w[np.abs(w) < np.quantile(np.abs(w), 0.4)] = 0
            nz = w != 0
            levels = np.linspace(w[nz].min(), w[nz].max(), 32, dtype=np.float32)
            w[nz] = levels[np.abs(w[nz][:, None] - levels[None]).argmin(1)]
            tensor.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w"))
    onnx.save(model, str(path))
    version = model_version_create_from_job(
        organization=org, parent=parent, job_id=job.pk, recipe={}, file_path=path,
        format="onnx", label="fp32", info={"params": 650},
    )  # fmt: skip
    stats = encode_onnx(path, tmp_path / "final.esdc", min_elements=64)
    assert [layer.stored_as for layer in stats.layers] == ["shared"]
    return model_version_attach_container(version=version, path=tmp_path / "final.esdc"), stats


def test_a_catalog_versions_container_deploys_from_its_page_and_scores_like_its_onnx(
    tmp_path: Path, daphne_server: Any, settings: Any
) -> None:
    from catalog_versions import host_accuracy

    settings.EDGESLIM_EVAL_SET_MAX_SAMPLES = 200
    user = make_user()
    org = make_organization(owner=user)
    version, stats = _shared_centroid_version(org, tmp_path)
    client = client_for(user)
    page = client.get(reverse("catalog:model_version_detail", args=[version.pk])).content.decode()
    assert "Deploy the compressed container" in page
    assert f"({stats.total_bytes} bytes)" in page and f"({stats.decoded_bytes} bytes)" in page
    response = client.post(
        reverse("devices:deploy_model_version", args=[version.pk]), {"container": "1"}
    )
    assert response.status_code == 302
    from device_registry.models import DeployableArtifact

    art = DeployableArtifact.objects.get(source=f"model_version:{version.pk}")
    assert art.is_container and art.sha256 == version.container_sha256
    assert art.eval_meta["count"] == 200 and art.name.endswith(".esdc")
    # the ONNX deploy of the same version stays a separate, plain artifact
    client.post(reverse("devices:deploy_model_version", args=[version.pk]))
    assert DeployableArtifact.objects.filter(source=f"model_version:{version.pk}").count() == 2

    device, agent = _enrolled(tmp_path, daphne_server.base_url, org)
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5, accuracy=True),
    )  # fmt: skip
    target = _run_to_the_end(agent, dep)
    assert target.status == "succeeded", (target.message, agent.output()[-3000:])
    model = tmp_path / "host.onnx"
    model.write_bytes(version.file.open("rb").read())
    npz = tmp_path / "host.npz"
    npz.write_bytes(art.eval_file.open("rb").read())
    correct, samples = host_accuracy(model, npz)
    measured = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    assert (measured["correct"], measured["samples"]) == (correct, samples) == (correct, 200)
    latency = DeploymentResult.objects.get(deployment=dep, kind="latency").payload
    assert latency["container_bytes"] == stats.total_bytes == version.container_size
