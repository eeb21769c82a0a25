"""The worker host benchmarks through the same agent code (one harness)."""

from __future__ import annotations

import io

import pytest
from agent_process import AgentProcess, wait_for
from device_onnx import write_linear_model
from django.core.management import call_command
from factories import make_organization

from device_registry import services
from device_registry.models import DeploymentResult, Device
from edgeslim_agent.config import AgentConfig
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_host_registers_as_a_device_and_benchmarks_through_the_agent(tmp_path, daphne_server):
    org = make_organization()
    state = tmp_path / "host"
    call_command(
        "edgeslim_host_agent", "--org", org.slug, "--server", daphne_server.base_url,
        "--state-dir", str(state), "--setup-only",
    )  # fmt: skip
    host = Device.objects.get(organization=org, is_host=True)
    assert AgentConfig.load(state).device_id == host.pk
    model = write_linear_model(tmp_path / "m.onnx")
    art = services.artifact_create(
        organization=org, name="m.onnx", file=io.BytesIO(model.read_bytes()), source="job:1"
    )
    services.deployment_create(
        organization=org, artifact=art, target_kind="tag", target_value="host",
        settings=BenchSettings(runs=5, warmup=1),
    )  # fmt: skip
    agent = AgentProcess(state, tmp_path / "host.log").start()
    try:
        wait_for(lambda: DeploymentResult.objects.filter(kind="complete").exists(), timeout=60,
                 what="the host's results", log=agent.output)  # fmt: skip
    finally:
        agent.stop()
    latency = DeploymentResult.objects.get(kind="latency")
    assert latency.device == host
    assert latency.payload["hardware"]["cores"] >= 1  # measured by compression.latency
    from device_registry.selectors import on_device_latency_for_source

    rows = on_device_latency_for_source(organization=org, source="job:1")
    assert [r["device"] for r in rows] == [host.name]
