"""A detector's results arrive live in Chromium: the deployment page is open while a real agent
benchmarks a tiny YOLO, and the detector table fills with FPS and then the on-device mAP."""

from __future__ import annotations

import pytest
from agent_process import AgentProcess, enroll
from browser import chromium_context, first_page
from detector_onnx import detector_job_version
from factories import PASSWORD, make_organization, make_user

from device_registry import model_versions, services
from device_registry.models import DeploymentResult
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_deployment_page_shows_a_detectors_fps_and_map_live(
    tmp_path, daphne_server, monkeypatch
):
    user = make_user(username="ada")
    org = make_organization(owner=user)
    version, _ = detector_job_version(org, tmp_path, monkeypatch)
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    base = daphne_server.base_url
    device, code = services.device_register(organization=org, name="pi")
    assert enroll(tmp_path / "pi", base, code).returncode == 0
    dep = services.deployment_create(
        organization=org, artifact=art, target_kind="device", target_value=str(device.pk),
        settings=BenchSettings(warmup=1, runs=5, accuracy=True),
    )  # fmt: skip
    # Playwright's sync API runs an event loop in this thread: no ORM until the context closes.
    with chromium_context(tmp_path) as context:
        page = first_page(context)
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "ada")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/devices/deployments/{dep.pk}/")
        assert page.text_content('#target-table th[data-col="map"]') == "mAP@0.5 · mAP@0.5:0.95"
        assert page.locator("[data-detector-empty]").is_visible()
        page.wait_for_selector('[data-live-status="live"]', state="attached", timeout=30_000)
        agent = AgentProcess(tmp_path / "pi", tmp_path / "pi.log").start()
        try:
            row = "#detector-table tbody tr"
            page.wait_for_selector(f"{row} td[data-fps-e2e]", timeout=120_000)
            page.wait_for_function(
                "() => { const c = document.querySelector('#detector-table td[data-map50]');"
                " return c && c.textContent.trim() !== '—'; }",
                timeout=120_000,
            )
            page.wait_for_function(
                "() => document.querySelector('#target-table [data-target-accuracy]')"
                ".textContent.startsWith('mAP@0.5 ')",
                timeout=30_000,
            )
            fps_e2e = float(page.inner_text(f"{row} td[data-fps-e2e]"))
            fps = float(page.inner_text(f"{row} td[data-fps]"))
            map50 = page.inner_text(f"{row} td[data-map50]")
            map50_95 = page.inner_text(f"{row} td[data-map50-95]")
            accuracy_cell = page.inner_text("#target-table [data-target-accuracy]")
            assert page.locator("[data-detector-empty]").is_hidden()
        finally:
            agent.stop()
    stored = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    latency = DeploymentResult.objects.get(deployment=dep, kind="latency").payload
    assert fps == pytest.approx(latency["fps"], abs=0.05)
    assert fps_e2e == pytest.approx(latency["fps_e2e"], abs=0.05)
    assert map50 == f"{stored['map50']:.3f}" and map50_95 == f"{stored['map50_95']:.3f}"
    assert accuracy_cell == (
        f"mAP@0.5 {stored['map50']:.3f} · mAP@0.5:0.95 {stored['map50_95']:.3f} (12 images)"
    )
