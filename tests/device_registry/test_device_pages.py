"""Device pages as a user reads them: enrollment with the public URL, badges, settings, charts."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re

import pytest
import segno
from device_factories import artifact, deployment, enrolled_device, org_admin
from django.utils import timezone
from factories import client_for, make_organization

from device_registry import public_url, services, signing
from device_registry.models import Device
from edgeslim_agent.protocol import Result

pytestmark = pytest.mark.django_db

PUBLIC = "https://192.168.1.20:8443"
PIN = "ab" * 32  # a proxy's certificate, as EDGESLIM_TLS_FINGERPRINT names it
PIN_SHOWN = "sha256:" + ":".join(["AB"] * 32)


def _register(client, name="kitchen-pi", **extra):
    page = client.post(
        "/devices/register/", {"name": name, "hardware": "Pi 4", "tags": "pi"}, **extra
    )
    assert page.status_code == 200
    return page.content.decode()


def _pre(page: str, element_id: str) -> str:
    match = re.search(rf'<pre id="{element_id}">(.*?)</pre>', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def test_the_enrollment_page_prints_the_public_url_in_every_command(settings, monkeypatch):
    settings.EDGESLIM_PUBLIC_URL = PUBLIC
    monkeypatch.setenv("EDGESLIM_TLS_FINGERPRINT", PIN)
    org = make_organization()
    client = client_for(org_admin(org))
    page = _register(client)
    code = re.search(r'id="enrollment-code"[^>]*>([^<]+)<', page).group(1)
    install, enroll, run = (_pre(page, f"{k}-command") for k in ("install", "enroll", "run"))
    # the wheel the server serves is the one whose sha256 the page prints and pip checks
    wheel_name = re.search(r"(edgeslim_agent-[0-9.]+-py3-none-any\.whl)", install).group(1)
    served = b"".join(client.get(f"/agent/{wheel_name}").streaming_content)
    digest = hashlib.sha256(served).hexdigest()
    assert re.search(r'id="wheel-sha256">([0-9a-f]{64})<', page).group(1) == digest
    assert install.startswith(
        "python3 -m venv ~/edgeslim-agent && ~/edgeslim-agent/bin/pip install "
        "'onnxruntime>=1.16' 'numpy>=1.24' 'websockets>=13' 'cryptography>=42' && "
    )
    assert (
        f"echo 'edgeslim-agent @ {PUBLIC}/agent/{wheel_name} --hash=sha256:{digest}' "
        "> ~/edgeslim-agent/agent-requirements.txt && ~/edgeslim-agent/bin/pip install --no-deps "
        "--require-hashes --trusted-host 192.168.1.20 -r ~/edgeslim-agent/agent-requirements.txt"
    ) in install
    assert enroll == (
        f"~/edgeslim-agent/bin/edgeslim-agent enroll --server {PUBLIC} --fingerprint {PIN_SHOWN} "
        f"--code {code}"
    )
    assert run == "~/edgeslim-agent/bin/edgeslim-agent run"
    # the three fingerprints, each where a user can compare it
    assert f'<code id="tls-fingerprint">{PIN_SHOWN}</code>' in page
    kid = signing.active_key_id()
    assert f'<code id="signing-key-id">{kid}</code>' in page
    key_sha = hashlib.sha256(base64.b64decode(signing.public_key_b64())).hexdigest()
    assert key_sha.startswith(kid) and f'id="signing-key-sha256">{key_sha}<' in page
    assert "testserver" not in install + enroll
    assert 'id="public-url-warning"' not in page
    # Numbered steps, a copy button per command, the copy script, links to the instructions.
    assert '<ol class="enroll-steps"' in page
    for cid in ("install-command", "enroll-command", "run-command"):
        assert f'data-copy-target="{cid}"' in page
    assert "device_registry/copy.js" in page
    assert 'href="/devices/help/#raspberry-pi"' in page and 'href="/devices/help/#systemd"' in page


def test_the_page_shows_the_certificate_edgeslim_up_generated(settings, monkeypatch, tmp_path):
    from device_registry.server_tls import ensure_certificate, fingerprint_of_pem

    monkeypatch.delenv("EDGESLIM_TLS_FINGERPRINT", raising=False)
    settings.EDGESLIM_PUBLIC_URL = PUBLIC
    settings.DATA_DIR = tmp_path
    cert, _key, _ = ensure_certificate(tmp_path)
    shown = public_url.display_fingerprint(fingerprint_of_pem(cert.read_bytes()))
    page = _register(client_for(org_admin(make_organization())))
    assert f"--fingerprint {shown} --code" in _pre(page, "enroll-command")
    assert f'<code id="tls-fingerprint">{shown}</code>' in page


def test_plain_http_says_insecure_and_has_no_fingerprint(settings, monkeypatch):
    monkeypatch.delenv("EDGESLIM_TLS_FINGERPRINT", raising=False)
    settings.EDGESLIM_PUBLIC_URL = "http://192.168.1.20:8000"
    page = _register(client_for(org_admin(make_organization())))
    enroll, run = _pre(page, "enroll-command"), _pre(page, "run-command")
    assert enroll.startswith("~/edgeslim-agent/bin/edgeslim-agent --insecure-http enroll ")
    assert "--fingerprint" not in enroll
    assert run == "~/edgeslim-agent/bin/edgeslim-agent --insecure-http run"


def test_the_qr_code_is_segnos_code_of_exactly_the_printed_enroll_command(settings):
    settings.EDGESLIM_PUBLIC_URL = PUBLIC
    page = _register(client_for(org_admin(make_organization())))
    enroll = _pre(page, "enroll-command")
    figure = re.search(r'<figure id="enroll-qr"[^>]*>(.*?)</figure>', page, re.S).group(1)
    expected = segno.make(enroll, error="m").svg_inline(
        scale=3, border=2, title="Enrollment command"
    )
    assert figure == expected
    assert figure.startswith("<svg") and "<path" in figure
    # A different command would draw a different code: the comparison can fail.
    assert segno.make(enroll + "x", error="m").svg_inline(scale=3, border=2) != figure


def test_without_a_public_url_the_page_uses_the_browsers_address_and_warns(settings):
    settings.EDGESLIM_PUBLIC_URL = ""
    page = _register(client_for(org_admin(make_organization())))
    assert "--server http://testserver --code" in _pre(page, "enroll-command")
    warning = re.search(r'id="public-url-warning"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert "EDGESLIM_PUBLIC_URL is not set" in warning


def test_a_loopback_address_is_called_out(settings):
    settings.EDGESLIM_PUBLIC_URL = ""
    client = client_for(org_admin(make_organization()))
    page = _register(client, HTTP_HOST="127.0.0.1:8000")
    assert "--server http://127.0.0.1:8000 --code" in _pre(page, "enroll-command")
    assert "loopback address that works only on this machine" in page
    settings.EDGESLIM_PUBLIC_URL = "http://localhost:8000"
    page = _register(client, name="pi-2")
    assert "EDGESLIM_PUBLIC_URL is http://localhost:8000, a loopback address" in page


def test_the_api_answers_the_venv_enroll_command_with_the_public_url(settings):
    settings.EDGESLIM_PUBLIC_URL = PUBLIC
    client = client_for(org_admin(make_organization()))
    answer = client.post("/api/v1/devices/", {"name": "api-pi"}, content_type="application/json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["command"].startswith(
        f"~/edgeslim-agent/bin/edgeslim-agent enroll --server {PUBLIC} "
    )
    assert body["command"].endswith(f"--code {body['enrollment_code']}")


def test_the_help_page_has_the_raspberry_pi_and_systemd_sections_with_this_studio(settings):
    settings.EDGESLIM_PUBLIC_URL = PUBLIC
    page = client_for(org_admin(make_organization())).get("/devices/help/").content.decode()
    for anchor in ("public-url", "install", "raspberry-pi", "systemd", "troubleshooting"):
        assert f'id="{anchor}"' in page
    assert f"--server {PUBLIC}" in page and "--code &#x27;&lt;CODE&gt;&#x27;" in page
    assert "ExecStart=/opt/edgeslim-agent/bin/edgeslim-agent run" in page
    for cid in ("help-install", "help-systemd-install"):  # the user's venv and the service's
        assert "--no-deps --require-hashes" in _pre(page, cid)
    systemd = _pre(page, "help-systemd-install")
    assert "sudo sh -c" in systemd and "/opt/edgeslim-agent/agent-requirements.txt" in systemd
    assert "python3-venv" in page


def test_startup_advice_warns_about_loopback_and_is_quiet_with_a_routable_public_url():
    quiet = public_url.startup_advice(host="0.0.0.0", port=8000, public_url=PUBLIC)
    assert quiet == []
    local = public_url.startup_advice(host="127.0.0.1", port=8000, public_url="")
    assert "works only on this machine" in local[0]
    assert "EDGESLIM_PUBLIC_URL=https://" in local[1] and "--host 0.0.0.0" in local[1]
    assert public_url.startup_advice(host="0.0.0.0", port=8000, public_url="http://[::1]:8000")
    assert public_url.is_loopback("http://localhost:8000") and public_url.is_loopback(
        "http://127.3.0.1"
    )
    assert not public_url.is_loopback(PUBLIC) and not public_url.is_loopback("https://studio.lab")


def test_each_device_state_has_its_own_badge_colour():
    org = make_organization()
    client = client_for(org_admin(org))
    online, _ = enrolled_device(org, name="a-online")
    Device.objects.filter(pk=online.pk).update(connection_channel="x", last_seen=timezone.now())
    enrolled_device(org, name="b-offline")
    revoked, _ = enrolled_device(org, name="c-revoked")
    services.device_revoke(device=revoked, reason="revoked by a test")
    services.device_register(organization=org, name="d-pending")
    page = client.get("/devices/").content.decode()
    badges = dict(re.findall(r'class="badge (badge-[a-z-]+)" data-device-state>([^<]+)<', page))
    assert badges == {
        "badge-online": "online",
        "badge-offline": "offline",
        "badge-revoked": "revoked",
        "badge-awaiting-enrollment": "awaiting enrollment",
    }
    detail = client.get(f"/devices/{revoked.pk}/").content.decode()
    assert 'class="badge badge-revoked" data-device-state>revoked<' in detail


def test_deployment_lists_name_the_devices_and_show_a_status(tmp_path):
    org = make_organization()
    client = client_for(org_admin(org))
    device, _ = enrolled_device(org, name="bench-pi")
    dep = deployment(org, artifact(org, tmp_path), device)
    for url in ("/devices/deployments/", "/devices/", f"/devices/{device.pk}/"):
        page = client.get(url).content.decode()
        row = re.search(rf'<tr data-deployment-id="{dep.pk}">(.*?)</tr>', page, re.S)
        assert row, url
        assert f'<a href="/devices/{device.pk}/">bench-pi</a>' in row.group(1)
        assert 'class="badge badge-running" data-deployment-status>running<' in row.group(1)


def test_the_deployment_page_shows_settings_as_a_table_and_an_empty_state(tmp_path):
    org = make_organization()
    device, _ = enrolled_device(org)
    dep = deployment(org, artifact(org, tmp_path), device, batch_sizes=[1, 4], threads=2)
    page = client_for(org_admin(org)).get(f"/devices/deployments/{dep.pk}/").content.decode()
    table = re.search(
        r'<table class="table settings-table" id="deployment-settings">(.*?)</table>', page, re.S
    )
    cells = dict(re.findall(r"<th scope=\"row\">([^<]+)</th><td>([^<]*)</td>", table.group(1)))
    assert cells["Warm-up runs"] == "1" and cells["Timed runs"] == "5"
    assert cells["Threads"] == "2" and cells["Batch sizes"] == "1, 4"
    assert cells["Providers"] == "CPUExecutionProvider" and cells["Accuracy"] == "no"
    assert "{&#x27;warmup&#x27;" not in page and "{'warmup'" not in page
    # No results: the text says so, and the chart containers stay hidden (no empty axes).
    assert re.search(r"<p class=\"muted chart-empty\" data-results-empty >No results yet", page)
    assert "<div data-results-present hidden>" in page
    assert "<div data-op-profile-section hidden>" in page


def _latency(dep, device, *, profile=None):
    data = {"batch_size": 1, "p50_ms": 1.5, "p90_ms": 2.0, "mean_ms": 1.6, "throughput": 600.0,
            "cv": 0.01, "runs": 5}  # fmt: skip
    if profile is not None:
        data["op_profile_ms"] = profile
    services.deployment_result_store(
        device_id=device.pk, result=Result(deployment_id=dep.pk, seq=1, kind="latency", data=data)
    )


def test_the_per_operator_profile_is_charted_when_a_result_carries_it(tmp_path):
    org = make_organization()
    client = client_for(org_admin(org))
    device, _ = enrolled_device(org, name="bench-pi")
    art = artifact(org, tmp_path)
    profiled = deployment(org, art, device, profile=True)
    _latency(profiled, device, profile={"Gemm": 0.8, "Softmax": 0.1})
    page = client.get(f"/devices/deployments/{profiled.pk}/").content.decode()
    assert "<div data-op-profile-section >" in page
    assert 'id="op-profile-chart"' in page
    assert "<div data-results-present >" in page and "data-results-empty hidden" in page
    rows = json.loads(
        re.search(r'<script id="latency-rows" type="application/json">(.*?)</script>', page).group(
            1
        )
    )
    assert rows[0]["op_profile_ms"] == {"Gemm": 0.8, "Softmax": 0.1}
    # The device page shows it too; a result without a profile leaves the section hidden.
    assert "<div data-op-profile-section >" in client.get(f"/devices/{device.pk}/").content.decode()
    plain = deployment(org, art, device)
    _latency(plain, device)
    page = client.get(f"/devices/deployments/{plain.pk}/").content.decode()
    assert "<div data-op-profile-section hidden>" in page
