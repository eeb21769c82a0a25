"""On-device accuracy for real: a real agent process benchmarks a catalog version a job produced,
on the test split that shipped with it, and reports the accuracy onnxruntime gives on the host."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from catalog_versions import deploy_and_measure, host_accuracy, job_onnx_version
from django.urls import reverse
from factories import client_for, make_organization, make_user

from device_registry import model_versions
from device_registry.models import DeploymentResult

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_real_agent_measures_a_job_versions_accuracy_on_its_shipped_test_split(
    tmp_path, daphne_server, settings
):
    settings.EDGESLIM_EVAL_SET_MAX_SAMPLES = 200
    user = make_user()
    org = make_organization(owner=user)
    version, job = job_onnx_version(org, tmp_path)
    art = model_versions.artifact_for_model_version(
        organization=org, user=user, model_version=version
    )
    assert art.eval_meta["count"] == 200 and art.eval_meta["dataset"] == job.dataset.name
    dep, target, log = deploy_and_measure(org, art, tmp_path, daphne_server.base_url)
    assert stat.S_IMODE((tmp_path / "pi" / "credential.json").stat().st_mode) == 0o600
    assert target.status == "succeeded", (target.message, log[-3000:])

    # The same model and the same shipped bytes, scored by onnxruntime here.
    model = tmp_path / "host.onnx"
    model.write_bytes(version.file.open("rb").read())
    npz = tmp_path / "host.npz"
    npz.write_bytes(art.eval_file.open("rb").read())
    correct, samples = host_accuracy(model, npz)
    with np.load(npz, allow_pickle=False) as data:
        assert str(data["split"]) == "test" and len(data["y"]) == samples == 200
    assert 0 < correct < samples  # a real classifier: neither all wrong nor trivially perfect

    measured = DeploymentResult.objects.get(deployment=dep, kind="accuracy").payload
    assert (measured["correct"], measured["samples"]) == (correct, samples)
    assert measured["top1_pct"] == 100.0 * correct / samples  # exact: percent, one formula
    assert "top1" not in measured

    # The model page shows it in percent, next to the device's latency.
    page = client_for(user).get(reverse("catalog:model_version_detail", args=[version.pk]))
    [row] = page.context["device_rows"]
    assert row["top1_pct"] == measured["top1_pct"] and row["samples"] == 200
    html = page.content.decode()
    assert f"{measured['top1_pct']:.2f} %" in html and "Accuracy (top-1, %)" in html
