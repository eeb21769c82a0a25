"""Detectors on devices for real: a real agent process benchmarks a tiny YOLO a job produced
(FPS of the network alone and end to end with decode + NMS) and measures its mAP on the test
split of the job's detection data set that shipped with it; the server stores the figures and
the deployment, device and model pages show them."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_versions import deploy_and_measure
from detector_onnx import SIZE, detector_job_version
from django.urls import reverse
from factories import client_for, make_organization, make_user

from device_registry import model_versions
from device_registry.models import DeploymentResult
from edgeslim_agent.bench import accuracy_check
from edgeslim_agent.protocol import BenchSettings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_real_agent_reports_a_detectors_fps_and_map_and_the_pages_show_them(
    tmp_path, daphne_server, monkeypatch
):
    user = make_user()
    org = make_organization(owner=user)
    version, scenes = detector_job_version(org, tmp_path, monkeypatch)
    assert version.task == "detection"
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    assert art.task == "detection"
    assert art.eval_meta["task"] == "detection" and art.eval_meta["count"] == 12
    assert art.eval_meta["boxes"] == sum(len(s.labels) for s in scenes.test)

    dep, target, log = deploy_and_measure(org, art, tmp_path, daphne_server.base_url)
    assert target.status == "succeeded", (target.message, log[-3000:])
    assert "FPS end to end" in log and "mAP@0.5" in log

    latency = DeploymentResult.objects.get(deployment=dep, kind="latency").payload
    assert latency["task"] == "detection" and latency["p50_ms"] > 0
    assert latency["fps"] > 0 and 0 < latency["fps_e2e"] <= latency["fps"] * 1.05
    assert latency["e2e_p50_ms"] > 0 and latency["e2e_images"] == "evaluation set"

    # The same model and the same shipped bytes, scored here: the device's mAP is the host's.
    model = tmp_path / "host.onnx"
    model.write_bytes(version.file.open("rb").read())
    npz = tmp_path / "host.npz"
    npz.write_bytes(art.eval_file.open("rb").read())
    with np.load(npz, allow_pickle=False) as data:
        assert str(data["task"]) == "detection" and data["x"].shape == (12, 3, SIZE, SIZE)
    host = accuracy_check(model, npz, BenchSettings(accuracy=True))
    measured = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    assert measured["metric"] == "mAP@0.5" and "top1_pct" not in measured
    assert measured["map50"] == pytest.approx(host["map50"], abs=1e-9)
    assert measured["map50_95"] == pytest.approx(host["map50_95"], abs=1e-9)
    assert measured["samples"] == 12 and measured["boxes"] == art.eval_meta["boxes"]

    client = client_for(user)
    page = client.get(reverse("devices:deployment", args=[dep.pk]))
    html = page.content.decode()
    assert 'data-col="map"' in html and "Accuracy (top-1, %)" not in html
    assert f"mAP@0.5 {measured['map50']:.3f}" in html
    [row] = page.context["detector_rows"]
    assert row["fps_e2e"] == latency["fps_e2e"] and row["map50"] == measured["map50"]
    assert 'id="detector-table"' in html and f"{latency['fps_e2e']:.1f}" in html

    device_page = client.get(reverse("devices:detail", args=[target.device_id]))
    assert 'id="detector-table"' in device_page.content.decode()
    assert [r["map50_95"] for r in device_page.context["detector_rows"]] == [measured["map50_95"]]

    model_page = client.get(reverse("catalog:model_version_detail", args=[version.pk]))
    [row] = model_page.context["device_rows"]
    assert row["map50"] == measured["map50"] and row["fps_e2e"] == latency["fps_e2e"]
    model_html = model_page.content.decode()
    assert "mAP@0.5:0.95" in model_html and "Accuracy (top-1, %)" not in model_html
