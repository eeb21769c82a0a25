"""Artifact download (Range, credential, organisation) and organisation isolation of pages/API."""

from __future__ import annotations

import hashlib

import pytest
from asgiref.sync import async_to_sync
from device_factories import artifact, deployment, enrolled_device, org_admin
from django.test import AsyncClient
from factories import client_for, make_organization

from device_registry import services

pytestmark = pytest.mark.django_db(transaction=True)


async def _get(path: str, credential: str | None, **headers: str):
    client = AsyncClient()
    extra = dict(headers)
    if credential is not None:
        extra["Authorization"] = f"Device {credential}"
    response = await client.get(path, headers=extra)
    body = b""
    if response.status_code in (200, 206):
        body = b"".join([chunk async for chunk in response.streaming_content])
    return response, body


def test_the_artifact_downloads_whole_or_by_range(tmp_path):
    device, credential = enrolled_device()
    org = device.organization
    art = artifact(org, tmp_path, with_eval=True)
    deployment(org, art, device)
    full = (tmp_path / "model.onnx").read_bytes()
    path = f"/api/v1/agent/artifacts/{art.pk}"
    response, body = async_to_sync(_get)(path, credential)
    assert response.status_code == 200 and body == full
    assert hashlib.sha256(body).hexdigest() == art.sha256
    response, body = async_to_sync(_get)(path, credential, Range="bytes=10-")
    assert response.status_code == 206 and body == full[10:]
    assert response["Content-Range"] == f"bytes 10-{len(full) - 1}/{len(full)}"
    response, _ = async_to_sync(_get)(path, credential, Range=f"bytes={len(full)}-")
    assert response.status_code == 416
    response, body = async_to_sync(_get)(path + "/eval", credential)
    assert response.status_code == 200 and hashlib.sha256(body).hexdigest() == art.eval_sha256


def test_artifact_download_needs_this_devices_credential(tmp_path):
    device, credential = enrolled_device(name="a")
    org = device.organization
    art = artifact(org, tmp_path)
    path = f"/api/v1/agent/artifacts/{art.pk}"
    assert async_to_sync(_get)(path, None)[0].status_code == 401
    assert async_to_sync(_get)(path, "esd_nope")[0].status_code == 401
    # Same organisation, but not deployed to this device yet.
    assert async_to_sync(_get)(path, credential)[0].status_code == 404
    deployment(org, art, device)
    assert async_to_sync(_get)(path, credential)[0].status_code == 200
    # Another organisation's device.
    _, other_credential = enrolled_device(name="b")
    assert async_to_sync(_get)(path, other_credential)[0].status_code == 404
    services.device_revoke(device=device)
    assert async_to_sync(_get)(path, credential)[0].status_code == 401


def test_organisation_b_never_sees_a_devices_deployments_or_results(tmp_path):
    device, _ = enrolled_device(name="secret-pi")
    org_a = device.organization
    dep = deployment(org_a, artifact(org_a, tmp_path), device)
    org_b = make_organization(name="B")
    b = client_for(org_admin(org_b))
    for url in (
        f"/devices/{device.pk}/",
        f"/devices/deployments/{dep.pk}/",
        f"/api/v1/devices/{device.pk}/",
        f"/api/v1/deployments/{dep.pk}/",
    ):
        assert b.get(url).status_code == 404, url
    assert b.post(f"/devices/{device.pk}/revoke/").status_code == 404
    assert b.post(f"/api/v1/devices/{device.pk}/revoke/").status_code == 404
    assert "secret-pi" not in b.get("/devices/").content.decode()
    assert b.get("/api/v1/devices/").json() == []
    assert b.get("/api/v1/deployments/").json() == []
    created = b.post(
        "/api/v1/deployments/",
        {"artifact": dep.artifact_id, "target_kind": "fleet"},
        content_type="application/json",
    )
    assert created.status_code == 404
    a = client_for(org_admin(org_a))
    assert a.get(f"/devices/deployments/{dep.pk}/").status_code == 200
    assert [d["name"] for d in a.get("/api/v1/devices/").json()] == ["secret-pi"]


def test_deploying_through_the_api_by_tag(tmp_path):
    org = make_organization()
    enrolled_device(org, name="pi", tags=["arm"])
    enrolled_device(org, name="x86", tags=["x86"])
    art = artifact(org, tmp_path)
    a = client_for(org_admin(org))
    answer = a.post(
        "/api/v1/deployments/",
        {"artifact": art.pk, "target_kind": "tag", "target_value": "arm",
         "settings": {"runs": 3, "batch_sizes": [1, 2]}},
        content_type="application/json",
    )  # fmt: skip
    assert answer.status_code == 201, answer.content
    assert [t["device_name"] for t in answer.json()["targets"]] == ["pi"]
    none = a.post(
        "/api/v1/deployments/",
        {"artifact": art.pk, "target_kind": "tag", "target_value": "gpu"},
        content_type="application/json",
    )
    assert none.status_code == 400
