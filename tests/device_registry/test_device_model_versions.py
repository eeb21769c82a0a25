"""Deploying catalog model versions to devices, and their on-device results in the model page."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from device_onnx import write_linear_model
from django.urls import reverse
from factories import client_for, make_member, make_organization, make_user
from jobs_factories import make_model_version

from device_registry import model_versions
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
