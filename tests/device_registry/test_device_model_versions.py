"""Deploying catalog model versions to devices, and their on-device results in the model page."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from device_factories import enrolled_device
from device_onnx import write_linear_model
from django.urls import reverse
from factories import client_for, make_member, make_organization, make_user
from jobs_factories import make_model_version

from device_registry import model_versions, services
from device_registry.agent.protocol import BenchSettings, Result
from device_registry.models import DeployableArtifact
from webapp.accounts.models import Role
from webapp.catalog.models import ModelVersion
from webapp.catalog.services import model_version_create_from_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def org_and_user():
    user = make_user()
    return make_organization(owner=user), user


def onnx_version(org, tmp_path: Path, *, label: str = "fp32", job_id: int = 7) -> ModelVersion:
    """An ONNX version as a job leaves it: a child of a torch upload, ready, with its sha256."""
    parent = make_model_version(org)
    path = write_linear_model(tmp_path / f"{label}.onnx")
    return model_version_create_from_job(
        organization=org,
        parent=parent,
        job_id=job_id,
        recipe={},
        file_path=path,
        format="onnx",
        label=label,
        info={"params": 15},
    )


def record_results(org, artifact: DeployableArtifact, *, p50: float, top1: float) -> str:
    """A deployment of ``artifact`` to a fresh device, with the agent's results stored."""
    device, _ = enrolled_device(org, name=f"pi-{artifact.pk}-{p50}")
    dep = services.deployment_create(
        organization=org,
        artifact=artifact,
        target_kind="device",
        target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5, accuracy=True),
    )
    latency = {"batch_size": 1, "p50_ms": p50, "p99_ms": p50 * 2, "throughput": 1000 / p50}
    for seq, kind, data in (
        (1, "latency", latency),
        (2, "accuracy", {"top1": top1, "samples": 60}),
        (3, "complete", {}),
    ):
        result = Result(deployment_id=dep.pk, seq=seq, kind=kind, data=data)
        services.deployment_result_store(device_id=device.pk, result=result)
    return device.name


def test_deploy_action_makes_one_artifact_per_version_and_opens_the_deploy_page(
    org_and_user, tmp_path
):
    org, user = org_and_user
    version = onnx_version(org, tmp_path)
    stored = (tmp_path / "fp32.onnx").read_bytes()
    c = client_for(user)
    url = reverse("devices:deploy_model_version", args=[version.pk])

    first = c.post(url)
    second = c.post(url)

    artifact = DeployableArtifact.objects.get(organization=org)
    assert artifact.source == f"model_version:{version.pk}"
    assert artifact.sha256 == hashlib.sha256(stored).hexdigest() == version.sha256
    assert artifact.size == len(stored) == version.size_bytes
    deploy_page = f"{reverse('devices:deploy')}?artifact={artifact.pk}"
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"] == deploy_page
    page = c.get(deploy_page)
    assert page.status_code == 200
    assert str(page.context["form"].initial["artifact"]) == str(artifact.pk)


def test_artifact_for_model_version_is_idempotent_and_reads_the_stored_file(org_and_user, tmp_path):
    org, user = org_and_user
    fp32 = onnx_version(org, tmp_path, label="fp32")
    int8 = onnx_version(org, tmp_path, label="int8")
    a = model_versions.artifact_for_model_version(organization=org, user=user, model_version=fp32)
    b = model_versions.artifact_for_model_version(organization=org, user=user, model_version=fp32)
    c = model_versions.artifact_for_model_version(organization=org, user=user, model_version=int8)
    assert a.pk == b.pk != c.pk
    assert a.file.read() == fp32.file.read()
    assert a.name.endswith("-fp32.onnx") and a.created_by == user


def test_another_organisation_gets_404_and_no_artifact(org_and_user, tmp_path):
    org, _ = org_and_user
    version = onnx_version(org, tmp_path)
    stranger = make_user()
    make_organization(owner=stranger)
    c = client_for(stranger)
    assert c.post(reverse("devices:deploy_model_version", args=[version.pk])).status_code == 404
    assert c.get(reverse("catalog:model_version_detail", args=[version.pk])).status_code == 404
    assert not DeployableArtifact.objects.exists()


def test_a_manager_cannot_deploy_and_sees_no_button(org_and_user, tmp_path):
    org, _ = org_and_user
    version = onnx_version(org, tmp_path)
    manager = make_member(org, role=Role.MANAGER)
    c = client_for(manager)
    assert c.post(reverse("devices:deploy_model_version", args=[version.pk])).status_code == 403
    assert not DeployableArtifact.objects.exists()
    page = c.get(reverse("catalog:model_version_detail", args=[version.pk])).content.decode()
    assert "data-deploy-version" not in page


def test_deploy_needs_a_post(org_and_user, tmp_path):
    org, user = org_and_user
    version = onnx_version(org, tmp_path)
    url = reverse("devices:deploy_model_version", args=[version.pk])
    assert client_for(user).get(url).status_code == 405


def test_a_torch_version_shows_why_it_cannot_be_deployed(org_and_user):
    org, user = org_and_user
    version = make_model_version(org)
    c = client_for(user)
    page = c.get(reverse("catalog:model_version_detail", args=[version.pk])).content.decode()
    assert "data-deploy-reason" in page and "Export it via a job first" in page
    assert "data-deploy-version" not in page
    response = c.post(reverse("devices:deploy_model_version", args=[version.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse(
        "catalog:model_version_detail", args=[version.pk]
    )
    assert "Export it via a job first" in response.content.decode()
    assert not DeployableArtifact.objects.exists()


def test_an_onnx_version_page_offers_deploy_and_an_empty_state(org_and_user, tmp_path):
    org, user = org_and_user
    version = onnx_version(org, tmp_path)
    page = client_for(user).get(reverse("catalog:model_version_detail", args=[version.pk]))
    html = page.content.decode()
    assert f'data-deploy-version="{version.pk}"' in html
    assert "data-on-device-empty" in html and page.context["device_rows"] == []


def test_device_results_of_the_versions_artifact_appear_on_the_model_page(org_and_user, tmp_path):
    org, user = org_and_user
    version = onnx_version(org, tmp_path)
    other = onnx_version(org, tmp_path, label="int8")
    artifact = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    device_name = record_results(org, artifact, p50=2.5, top1=0.9)
    other_art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=other
    )
    record_results(org, other_art, p50=9.75, top1=0.5)

    page = client_for(user).get(reverse("catalog:model_version_detail", args=[version.pk]))
    rows = page.context["device_rows"]
    assert [(r["device"], r["p50_ms"], r["p99_ms"], r["top1"]) for r in rows] == [
        (device_name, 2.5, 5.0, 0.9)
    ]
    html = page.content.decode()
    assert "data-on-device-table" in html and "2.500 ms" in html and "0.9000" in html
    assert "9.750 ms" not in html
    assert model_versions.p50_by_device(rows) == {device_name: 2.5}
