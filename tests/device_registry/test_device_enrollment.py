"""Registration, one-time enrollment codes and credentials: stored hashed, shown once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from device_factories import enrolled_device, org_admin
from django.test import Client
from django.utils import timezone
from factories import client_for, make_organization

from device_registry import services
from device_registry.models import Device, EnrollmentCode, secret_hash
from device_registry.selectors import device_by_credential

pytestmark = pytest.mark.django_db


def test_a_code_trades_once_for_a_credential_and_neither_is_stored_in_clear():
    org = make_organization()
    device, code = services.device_register(organization=org, name="pi", tags="Pi, lab pi")
    assert device.tags == ["pi", "lab"]
    row = EnrollmentCode.objects.get(device=device)
    assert row.code_hash == secret_hash(code) and code not in row.code_hash
    device, credential = services.enrollment_code_redeem(code=code.lower().replace("-", " "))
    assert device.credential_hash == secret_hash(credential)
    assert not Device.objects.filter(credential_hash=credential).exists()
    assert device_by_credential(credential=credential) == device
    with pytest.raises(services.EnrollmentError, match="already used"):
        services.enrollment_code_redeem(code=code)


def test_an_expired_code_is_refused():
    device, code = services.device_register(organization=make_organization(), name="pi")
    EnrollmentCode.objects.filter(device=device).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(services.EnrollmentError, match="expired"):
        services.enrollment_code_redeem(code=code)


def test_a_new_code_voids_the_old_one():
    device, first = services.device_register(organization=make_organization(), name="pi")
    second = services.enrollment_code_issue(device=device)
    with pytest.raises(services.EnrollmentError):
        services.enrollment_code_redeem(code=first)
    services.enrollment_code_redeem(code=second)


def test_the_enroll_endpoint_answers_the_credential_and_the_signing_key():
    device, code = services.device_register(organization=make_organization(), name="pi")
    client = Client()
    answer = client.post(
        "/api/v1/agent/enroll", data=json.dumps({"code": code}), content_type="application/json"
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["device_id"] == device.pk and body["credential"].startswith("esd_")
    assert len(body["server_public_key"]) == 44
    # the keys to trust, each named by its id (the hash of its public key)
    from device_registry import signing
    from edgeslim_agent.trust import key_id

    keys = {k["kid"]: k for k in body["signing_keys"]}
    assert signing.active_key_id() in keys
    assert all(key_id(k["public_key"]) == kid for kid, k in keys.items())
    again = client.post(
        "/api/v1/agent/enroll", data=json.dumps({"code": code}), content_type="application/json"
    )
    assert again.status_code == 403
    bad = client.post("/api/v1/agent/enroll", data="nope", content_type="application/json")
    assert bad.status_code == 400


def test_revoking_stops_the_credential():
    device, credential = enrolled_device()
    services.device_revoke(device=device)
    assert device_by_credential(credential=credential) is None


def test_the_register_page_shows_the_code_once_and_the_commands():
    org = make_organization()
    client = client_for(org_admin(org))
    page = client.post(
        "/devices/register/", {"name": "kitchen-pi", "hardware": "Pi 4", "tags": "pi"}
    )
    assert page.status_code == 200
    html = page.content.decode()
    # the test client is plain http: the command says --insecure-http out loud
    assert "edgeslim-agent --insecure-http enroll --server http://testserver --code " in html
    assert "edgeslim-agent @ http://testserver/agent/edgeslim_agent-" in html
    assert "--require-hashes" in html
    device = Device.objects.get(name="kitchen-pi")
    listing = client.get("/devices/").content.decode()
    assert "kitchen-pi" in listing and "awaiting enrollment" in listing
    assert client.get(f"/devices/{device.pk}/").status_code == 200


def test_online_means_connected_and_recently_seen():
    device, _ = enrolled_device()
    assert device.state == "offline"
    device.connection_channel = "agent.x"
    device.last_seen = timezone.now()
    assert device.state == "online"
    device.last_seen = timezone.now() - timedelta(minutes=5)
    assert device.state == "offline"  # a server that died without clearing the connection
    device.revoked_at = timezone.now()
    assert device.state == "revoked"
