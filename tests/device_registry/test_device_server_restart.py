"""Restarting the server under a connected agent: it reconnects with backoff, nothing is lost."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.request

import pytest
from agent_process import AgentProcess, enroll, wait_for
from device_factories import result_rows
from device_onnx import write_matmul_model
from factories import make_organization
from stack import free_port, subprocess_env

from device_registry import services
from device_registry.models import DeploymentTarget
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _daphne(port: int, log) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "webapp.asgi:application"],
        stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), start_new_session=True,
    )  # fmt: skip


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_server_restart_mid_deployment_loses_no_result(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "daphne.log").open("ab")
    server = _daphne(port, log)
    agent = None
    try:
        wait_for(lambda: _healthy(base), timeout=90, what="daphne")
        org = make_organization()
        device, code = services.device_register(organization=org, name="pi")
        assert enroll(tmp_path / "pi", base, code).returncode == 0
        model = write_matmul_model(tmp_path / "big.onnx")
        art = services.artifact_create(
            organization=org, name="big.onnx", file=io.BytesIO(model.read_bytes())
        )
        dep = services.deployment_create(
            organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
            settings=BenchSettings(warmup=1, runs=150, batch_sizes=[1, 64, 128, 256]),
        )  # fmt: skip
        agent = AgentProcess(tmp_path / "pi", tmp_path / "agent.log").start()
        wait_for(lambda: len(result_rows(dep)) >= 1, timeout=90, what="a first result",
                 log=agent.output)  # fmt: skip
        server.kill()  # the server goes away mid-benchmark
        server.wait(timeout=10)
        wait_for(lambda: "reconnecting in" in agent.output(), timeout=30,
                 what="the agent to notice", log=agent.output)  # fmt: skip
        server = _daphne(port, log)
        wait_for(lambda: _healthy(base), timeout=90, what="daphne again")
        wait_for(
            lambda: DeploymentTarget.objects.get(deployment=dep).finished,
            timeout=180, what="the deployment to finish", log=agent.output,
        )  # fmt: skip
    finally:
        if agent is not None:
            agent.stop()
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=15)
        log.close()
    assert sorted(result_rows(dep)) == [(1, "latency"), (2, "latency"), (3, "latency"),
                                  (4, "latency"), (6, "complete")]  # fmt: skip
    assert agent.output().count("connected to") >= 2
