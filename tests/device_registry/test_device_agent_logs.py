"""What a real agent process logs while it runs a deployment and when it is revoked."""

from __future__ import annotations

import re

import pytest
from agent_process import AgentProcess, enroll, wait_for
from device_factories import artifact, deployment
from factories import make_organization

from device_registry import services
from device_registry.models import DeploymentTarget, Device

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_agent_logs_each_step_of_a_deployment_and_the_revocation_reason(
    tmp_path, daphne_server
):
    org = make_organization()
    device, code = services.device_register(organization=org, name="log-pi")
    done = enroll(tmp_path / "agent", daphne_server.base_url, code)
    assert done.returncode == 0, done.stderr
    agent = AgentProcess(tmp_path / "agent", tmp_path / "agent.log").start()
    art = artifact(org, tmp_path, with_eval=True)
    dep = deployment(org, art, device, batch_sizes=[1, 2], accuracy=True)
    try:
        wait_for(
            lambda: DeploymentTarget.objects.get(deployment=dep).finished,
            timeout=90, what="the deployment to finish", log=agent.output,
        )  # fmt: skip
        services.device_revoke(
            device=Device.objects.get(pk=device.pk), reason="revoked by grace in the studio"
        )
        assert agent.proc is not None
        agent.proc.wait(timeout=30)
    finally:
        agent.stop()
    log = agent.output()
    n = dep.pk
    expected = [
        rf"INFO edgeslim\.agent: deployment {n} received: linear\.onnx \({art.size} bytes\), "
        r"batch sizes \[1, 2\], 1 warm-up \+ 5 runs, 1 threads, CPUExecutionProvider, "
        r"with accuracy",
        rf"deployment {n}: manifest signature verified",
        rf"deployment {n}: downloading linear\.onnx \({art.size} bytes\)",
        rf"deployment {n}: downloaded {art.size} bytes, size and sha256 {art.sha256[:12]}… verified",
        rf"deployment {n}: evaluation set downloaded \({art.eval_size} bytes\), sha256 verified",
        rf"deployment {n}: benchmark started \(batch sizes \[1, 2\]\)",
        rf"deployment {n}: batch 1: p50 \d+\.\d{{3}} ms, p90 \d+\.\d{{3}} ms, \d+\.\d samples/s",
        rf"deployment {n}: batch 2: p50 \d+\.\d{{3}} ms",
        rf"deployment {n}: accuracy top-1 90\.00 % \(54 of 60 images\)",
        rf"deployment {n} finished: 2 latency result\(s\), accuracy measured",
        r"ERROR edgeslim\.agent: this device was revoked by the server: revoked: credential "
        r"revoked by grace in the studio",
    ]
    position = 0
    for pattern in expected:  # each line, in this order
        match = re.compile(pattern).search(log, position)
        assert match, f"{pattern!r} not found after position {position}:\n{log}"
        position = match.end()
    assert agent.proc.returncode == 3
