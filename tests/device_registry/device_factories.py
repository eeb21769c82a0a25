"""Rows and helpers for the device tests, made through the services like the app does."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from channels.testing import WebsocketCommunicator
from device_onnx import write_eval_set, write_linear_model
from factories import make_organization

from device_registry import services
from device_registry.models import DeployableArtifact, Deployment, DeploymentResult, Device
from edgeslim_agent.protocol import BenchSettings, DeviceFacts
from webapp.accounts.models import Membership, Organization

FACTS = DeviceFacts(
    cpu="test cpu", cores=2, memory_mb=1024, os="Linux", arch="x86_64", python="3.11",
    ort_version="1.32.0", providers=["CPUExecutionProvider"],
)  # fmt: skip


def org_admin(org: Organization) -> Any:
    return Membership.objects.filter(organization=org).first().user  # type: ignore[union-attr]


def enrolled_device(
    org: Organization | None = None, *, name: str = "pi", tags: Any = ()
) -> tuple[Device, str]:
    org = org or make_organization()
    device, code = services.device_register(organization=org, name=name, tags=tags)
    device, credential = services.enrollment_code_redeem(code=code, agent_version="0.1.0")
    return device, credential


def artifact(org: Organization, tmp_path: Path, *, with_eval: bool = False) -> DeployableArtifact:
    model = write_linear_model(tmp_path / "model.onnx")
    eval_file = None
    if with_eval:
        eval_file = io.BytesIO(write_eval_set(tmp_path / "eval.npz").read_bytes())
    return services.artifact_create(
        organization=org,
        name="linear.onnx",
        file=io.BytesIO(model.read_bytes()),
        eval_file=eval_file,
    )


def deployment(
    org: Organization, art: DeployableArtifact, device: Device, **settings: Any
) -> Deployment:
    return services.deployment_create(
        organization=org,
        artifact=art,
        target_kind="device",
        target_value=str(device.pk),
        settings=BenchSettings(**({"warmup": 1, "runs": 5} | settings)),
    )


def agent_socket(credential: str | None, *, origin: str | None = "http://127.0.0.1"):
    from webapp.asgi import application

    headers = [(b"host", b"127.0.0.1")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if credential is not None:
        headers.append((b"authorization", f"Device {credential}".encode()))
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


def result_rows(deployment: Deployment) -> list[tuple[int, str]]:
    return list(DeploymentResult.objects.filter(deployment=deployment).values_list("seq", "kind"))
