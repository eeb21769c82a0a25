"""A real agent process against a real daphne: a deploy whose bus message was lost arrives on the
agent's next heartbeat (without a reconnect, run once), and re-enrolling the device on the same
machine keeps a running agent up on its new credential, while revoking still stops it."""

from __future__ import annotations

import io
import subprocess

import pytest
from agent_process import AgentProcess, enroll, wait_for
from device_onnx import write_linear_model, write_matmul_model
from factories import make_organization

from device_registry import bus, services
from device_registry.models import DeploymentResult, DeploymentTarget, Device
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _agent(tmp_path, server, org, name="pi"):
    device, code = services.device_register(organization=org, name=name)
    done = enroll(tmp_path / name, server, code)
    assert done.returncode == 0, done.stderr
    return device, AgentProcess(tmp_path / name, tmp_path / f"{name}.log")


def _connected(device, *, other_than: str = "") -> str:
    channel = Device.objects.get(pk=device.pk).connection_channel
    return channel if channel and channel != other_than else ""


def _deploy(org, device, tmp_path):
    model = write_linear_model(tmp_path / "m.onnx")
    art = services.artifact_create(
        organization=org, name="m.onnx", file=io.BytesIO(model.read_bytes())
    )
    return services.deployment_create(
        organization=org,
        artifact=art,
        target_kind="device",
        target_value=str(device.pk),
        settings=BenchSettings(runs=3, warmup=0),
    )


def test_a_deploy_the_bus_lost_reaches_a_connected_agent_on_its_heartbeat(
    tmp_path, daphne_server, monkeypatch
):
    org = make_organization()
    device, agent = _agent(tmp_path, daphne_server.base_url, org)
    agent.start()
    try:
        wait_for(lambda: _connected(device), timeout=30, what="the agent to connect",
                 log=agent.output)  # fmt: skip
        # Nothing pending at hello; the deploy's pub/sub message is lost on the way.
        monkeypatch.setattr(bus, "publish", lambda device_id, event: None)
        dep = _deploy(org, device, tmp_path)
        target = wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=dep, status="succeeded").first(),
            timeout=120, what="the heartbeat to deliver the deployment", log=agent.output,
        )  # fmt: skip
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        agent.stop()
    output = agent.output()
    assert target.status == "succeeded"
    assert output.count(f"deployment {dep.pk} received") == 1  # run once
    assert output.count("connected to ") == 1, output[-3000:]  # no reconnect was needed


def test_re_enrolling_keeps_the_agent_up_on_its_new_credential_and_revoking_stops_it(
    tmp_path, daphne_server
):
    org = make_organization()
    device, agent = _agent(tmp_path, daphne_server.base_url, org)
    credential_file = tmp_path / "pi" / "credential.json"
    old = credential_file.read_text()
    agent.start()
    try:
        first = wait_for(lambda: _connected(device), timeout=30, what="the agent to connect",
                         log=agent.output)  # fmt: skip
        # Enrolled again on the same machine, e.g. after its credential leaked: the enroll
        # command replaces the credential on the server and then writes the new file.
        code = services.enrollment_code_issue(device=Device.objects.get(pk=device.pk))
        done = enroll(tmp_path / "pi", daphne_server.base_url, code)
        assert done.returncode == 0, done.stderr
        assert credential_file.read_text() != old
        wait_for(lambda: _connected(device, other_than=first), timeout=90,
                 what="the agent to reconnect with its new credential", log=agent.output)  # fmt: skip
        assert agent.proc is not None and agent.proc.poll() is None, agent.output()
        # The new credential works for everything: a deployment downloads and runs.
        dep = _deploy(org, device, tmp_path)
        wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=dep, status="succeeded").exists(),
            timeout=90, what="a deployment on the new credential", log=agent.output,
        )  # fmt: skip
        # Revoking still stops it for good.
        services.device_revoke(device=Device.objects.get(pk=device.pk))
        try:
            agent.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the revoked agent kept running:\n" + agent.output()[-3000:])
    finally:
        agent.stop()
    output = agent.output()
    assert "enrolled again" in output and "credential reloaded" in output
    assert agent.proc.returncode == 3
    assert "revoked" in output


def test_a_cancel_stops_the_running_benchmark_and_the_agent_serves_the_next_deployment(
    tmp_path, daphne_server
):
    org = make_organization()
    device, agent = _agent(tmp_path, daphne_server.base_url, org)
    model = write_matmul_model(tmp_path / "big.onnx")
    art = services.artifact_create(
        organization=org, name="big.onnx", file=io.BytesIO(model.read_bytes())
    )
    batches = [1, 256, 512, 1024, 2048, 4096]  # minutes of work at 300 runs each
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=300, batch_sizes=batches),
    )  # fmt: skip
    agent.start()
    try:
        wait_for(
            lambda: DeploymentResult.objects.filter(deployment=dep, kind="latency").exists(),
            timeout=120, what="a first result", log=agent.output,
        )  # fmt: skip
        services.deployment_cancel(deployment=dep)
        failed = wait_for(
            lambda: DeploymentResult.objects.filter(deployment=dep, kind="failed").first(),
            timeout=120, what="the agent to stop the cancelled run", log=agent.output,
        )  # fmt: skip
        # The agent is still up and runs the next deployment.
        after = _deploy(org, device, tmp_path)
        wait_for(
            lambda: DeploymentTarget.objects.filter(deployment=after, status="succeeded").exists(),
            timeout=120, what="the next deployment", log=agent.output,
        )  # fmt: skip
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        agent.stop()
    assert failed.payload["reason"] == "cancelled"
    latencies = DeploymentResult.objects.filter(deployment=dep, kind="latency").count()
    assert 1 <= latencies < len(batches)  # stopped before its remaining batch sizes
    assert DeploymentTarget.objects.get(deployment=dep).status == "cancelled"
    assert f"deployment {dep.pk} was cancelled by the server" in agent.output()
