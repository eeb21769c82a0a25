"""A real agent process against a real daphne: enroll, deploy, kill mid-benchmark, tampering."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from agent_process import AgentProcess, enroll, wait_for
from device_factories import result_rows
from device_onnx import write_matmul_model
from factories import make_organization

from device_registry import services
from device_registry.models import DeploymentResult, DeploymentTarget, Device
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _enrolled_agent(tmp_path, server, org, name="pi"):
    device, code = services.device_register(organization=org, name=name)
    done = enroll(tmp_path / name, server, code)
    assert done.returncode == 0, done.stderr
    cred = tmp_path / name / "credential.json"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert code not in cred.read_text()
    return device, AgentProcess(tmp_path / name, tmp_path / f"{name}.log")


def test_the_agent_killed_mid_benchmark_loses_and_duplicates_nothing(tmp_path, daphne_server):
    org = make_organization()
    device, agent = _enrolled_agent(tmp_path, daphne_server.base_url, org)
    model = write_matmul_model(tmp_path / "big.onnx")
    art = services.artifact_create(
        organization=org, name="big.onnx", file=io.BytesIO(model.read_bytes())
    )
    settings = BenchSettings(warmup=1, runs=150, threads=1, batch_sizes=[1, 64, 128, 256])
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=settings,
    )  # fmt: skip
    agent.start()
    try:
        wait_for(lambda: len(result_rows(dep)) >= 1, timeout=90, what="a first result",
                 log=agent.output)  # fmt: skip
        agent.kill()  # mid-benchmark: batches still to run, maybe a result unacknowledged
        before = result_rows(dep)
        assert (len(settings.batch_sizes) + 2, "complete") not in before
        agent.start()
        wait_for(
            lambda: DeploymentTarget.objects.get(deployment=dep).finished,
            timeout=180, what="the deployment to finish after the restart", log=agent.output,
        )  # fmt: skip
    finally:
        agent.stop()
    rows = result_rows(dep)
    assert sorted(rows) == [(1, "latency"), (2, "latency"), (3, "latency"), (4, "latency"),
                            (6, "complete")]  # fmt: skip
    assert DeploymentTarget.objects.get(deployment=dep).status == "succeeded"
    batches = sorted(
        r.payload["batch_size"] for r in DeploymentResult.objects.filter(kind="latency")
    )
    assert batches == [1, 64, 128, 256]
    assert not list((tmp_path / "pi" / "outbox").glob("*.json"))  # everything acknowledged


def test_a_tampered_artifact_is_refused_and_reported(tmp_path, daphne_server):
    org = make_organization()
    device, agent = _enrolled_agent(tmp_path, daphne_server.base_url, org)
    from device_onnx import write_linear_model

    model = write_linear_model(tmp_path / "m.onnx")
    art = services.artifact_create(
        organization=org, name="m.onnx", file=io.BytesIO(model.read_bytes())
    )
    # Someone swaps the stored bytes after signing (same size, different content).
    stored = Path(art.file.path)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(runs=3, warmup=0),
    )  # fmt: skip
    agent.start()
    try:
        target = wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=dep, status="failed").first(),
            timeout=60, what="the refusal", log=agent.output,
        )  # fmt: skip
    finally:
        agent.stop()
    assert "sha256" in target.message
    failed = DeploymentResult.objects.get(deployment=dep, kind="failed")
    assert failed.payload["reason"] == "hash_mismatch"
    assert not DeploymentResult.objects.filter(deployment=dep, kind="latency").exists()
    assert not list((tmp_path / "pi" / "artifacts").glob("*.onnx"))


def test_an_unsigned_or_rolled_back_manifest_is_refused(tmp_path, daphne_server):
    org = make_organization()
    device, agent = _enrolled_agent(tmp_path, daphne_server.base_url, org)
    from device_onnx import write_linear_model

    model = write_linear_model(tmp_path / "m.onnx")
    art = services.artifact_create(
        organization=org, name="m.onnx", file=io.BytesIO(model.read_bytes())
    )

    def deploy():
        return services.deployment_create(
            organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
            settings=BenchSettings(runs=3, warmup=0),
        )  # fmt: skip

    unsigned = deploy()
    unsigned.signature = ""
    unsigned.save()
    newer = deploy()
    older = deploy()
    older.issued_at = newer.issued_at - 60_000  # an old manifest replayed (re-signed: valid)
    from device_registry.services import deployment_manifest
    from device_registry.signing import manifest_sign

    older.signature = manifest_sign(deployment_manifest(older))
    older.save()
    agent.start()
    try:
        wait_for(
            lambda: all(
                t.finished for t in DeploymentTarget.objects.filter(deployment__organization=org)
            ),
            timeout=90, what="all three deployments", log=agent.output,
        )  # fmt: skip
    finally:
        agent.stop()

    def outcome(dep):
        return DeploymentResult.objects.get(deployment=dep, seq=3).payload.get("reason", "ok")

    assert outcome(unsigned) == "unsigned"
    assert outcome(newer) == "ok"
    assert outcome(older) == "rollback"


def test_a_revoked_agent_is_disconnected_and_exits(tmp_path, daphne_server):
    org = make_organization()
    device, agent = _enrolled_agent(tmp_path, daphne_server.base_url, org)
    agent.start()
    try:
        wait_for(lambda: Device.objects.get(pk=device.pk).connection_channel, timeout=30,
                 what="the agent to connect", log=agent.output)  # fmt: skip
        services.device_revoke(device=Device.objects.get(pk=device.pk))
        assert agent.proc is not None
        agent.proc.wait(timeout=30)
    finally:
        agent.stop()
    assert agent.proc.returncode == 3
    assert "revoked" in agent.output()
