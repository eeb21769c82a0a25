"""Comparing detectors (issue 15): the accuracy column is mAP@0.5 with mAP@0.5:0.95 and the
end-to-end latency beside it, on the page, in the API and in the exports; a device's mAP@0.5;
and a comparison that mixes a detector and a classifier says so instead of plotting both on
one axis."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from compare_factories import dataset, device, device_result, job, metrics, version
from detection_reports import detection_metrics
from django.test import Client
from django.urls import reverse
from factories import client_for, make_organization, make_user

from device_registry.models import DeploymentResult
from webapp.reports import charts
from webapp.reports.comparison import comparison_build

pytestmark = pytest.mark.django_db


def _det(map50: float, map50_95: float, p50: float, e2e: float, fmt: str) -> dict[str, Any]:
    return detection_metrics(
        map50, map50_95, p50=p50, e2e_p50=e2e, macs=90_000_000, size=1_000_000, fmt=fmt
    )


@pytest.fixture
def yolo() -> dict[str, Any]:
    """A detector upload and a job that pruned (fp32) and quantized (int8) it; int8 ran on a
    pi that measured its mAP; and a classifier upload measured on another data set."""
    owner = make_user()
    org = make_organization(owner=owner)
    scenes = dataset(org, name="scenes")
    base = version(org, fmt="torch", task="detection", size=8000)
    j = job(
        org, base, scenes,
        baseline=_det(0.7125, 0.4150, 8.0, 9.5, "torch"),
        stages=[_det(0.7075, 0.4100, 3.0, 4.25, "torch"), _det(0.7050, 0.4050, 1.5, 2.5, "onnx")],
        final=_det(0.7050, 0.4050, 1.5, 2.5, "onnx"),
    )  # fmt: skip
    fp32 = version(org, parent=base, job=j, label="fp32", task="detection", size=4000)
    int8 = version(org, parent=base, job=j, label="int8", task="detection", size=1000)
    pi = device(org, "pi")
    meta = {"dataset_id": scenes.pk, "dataset": scenes.name, "split_seed": 0, "count": 48}
    dep = device_result(org, int8, pi, p50=6.0, eval_meta=meta)
    DeploymentResult.objects.create(
        deployment=dep, device=pi, seq=2, kind="accuracy",
        payload={"task": "detection", "metric": "mAP@0.5", "map50": 0.69, "map50_95": 0.39,
                 "samples": 48, "boxes": 131},
    )  # fmt: skip
    lenet = version(org, fmt="torch")
    job(org, lenet, dataset(org, name="digits"), baseline=metrics(97.0, 0.5, fmt="torch"))
    return {"org": org, "owner": owner, "base": base, "fp32": fp32, "int8": int8, "pi": pi,
            "lenet": lenet}  # fmt: skip


def _cells(c: dict[str, Any], vid: int) -> dict[str, Any]:
    cells: dict[str, Any] = next(r for r in c["rows"] if r["id"] == vid)["cells"]
    return cells


def test_a_detection_comparison_carries_map_and_both_latencies(yolo: Any) -> None:
    base, fp32, int8, pi = yolo["base"], yolo["fp32"], yolo["int8"], yolo["pi"]
    c = comparison_build(organization=yolo["org"], version_ids=[base.pk, fp32.pk, int8.pk])

    assert (c["task"], c["metric"], c["mixed_tasks"]) == ("detection", "mAP@0.5", "")
    labels = {col["key"]: col["label"] for col in c["columns"]}
    assert labels["accuracy"] == "Test mAP@0.5"
    assert labels["map50_95"] == "Test mAP@0.5:0.95"
    assert labels["host_e2e_p50_ms"] == "Host p50 end to end"
    assert labels[f"device:{pi.pk}:map50_pct"] == "pi mAP@0.5"
    assert f"device:{pi.pk}:top1_pct" not in labels
    assert all(r["metric"] == "mAP@0.5" and r["task"] == "detection" for r in c["rows"])
    b, f, i = _cells(c, base.pk), _cells(c, fp32.pk), _cells(c, int8.pk)
    assert [x["accuracy"]["value"] for x in (b, f, i)] == [71.25, 70.75, 70.5]
    assert [x["map50_95"]["value"] for x in (b, f, i)] == [41.5, 41.0, 40.5]
    assert i["map50_95"]["delta"] == pytest.approx(-1.0) and b["map50_95"]["best"]
    assert [x["host_e2e_p50_ms"]["value"] for x in (b, f, i)] == [9.5, 4.25, 2.5]
    assert i["host_e2e_p50_ms"]["delta"] == pytest.approx(2.5 / 9.5)
    assert i[f"device:{pi.pk}:map50_pct"]["value"] == pytest.approx(69.0)
    assert "48 images" in i[f"device:{pi.pk}:map50_pct"]["note"]
    assert b[f"device:{pi.pk}:map50_pct"]["blank_reason"] == "Not run on pi."
    host = charts.comparison_figures(c)["chart-pareto-host"]["layout"]
    assert host["title"]["text"] == "Test mAP@0.5 against host p50 latency (ms)"
    assert host["yaxis"]["title"]["text"] == "test mAP@0.5 (host, full test split)"


def test_the_page_api_and_csv_label_map(yolo: Any, token_for: Any) -> None:
    ids = [yolo["base"].pk, yolo["int8"].pk]
    c = client_for(yolo["owner"])

    html = c.get(reverse("reports:compare"), {"v": ids}).content.decode()

    assert ">Test mAP@0.5 <span" in html and ">Test mAP@0.5:0.95 <span" in html
    assert "Test mAP@0.5 (and mAP@0.5:0.95)" in html and "Test accuracy" not in html
    assert "data-mixed-tasks" not in html
    api = (
        Client()
        .get(
            reverse("api:reports-compare"),
            {"versions": ",".join(map(str, ids))},
            **token_for(yolo["owner"]),
        )
        .json()
    )
    assert api["metric"] == "mAP@0.5" and api["rows"][1]["cells"]["map50_95"]["value"] == 40.5
    body = c.get(reverse("reports:compare_export", args=["csv"]), {"v": ids}).content.decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert rows[1]["metric"] == "mAP@0.5" and float(rows[1]["accuracy"]) == 70.5
    assert float(rows[1]["map50_95"]) == 40.5 and float(rows[1]["host_e2e_p50_ms"]) == 2.5
    assert float(rows[1][f"device:{yolo['pi'].pk}:pi:map50_pct"]) == pytest.approx(69.0)


def test_a_detector_and_a_classifier_are_not_plotted_on_one_axis(yolo: Any) -> None:
    org, base, lenet = yolo["org"], yolo["base"], yolo["lenet"]

    c = comparison_build(organization=org, version_ids=[lenet.pk, base.pk], baseline_id=lenet.pk)

    assert c["task"] == "classification" and c["rows"][1]["metric"] == "mAP@0.5"
    assert "mixes classification and detection models" in c["mixed_tasks"]
    cell = _cells(c, base.pk)["accuracy"]
    assert cell["value"] is None
    assert cell["blank_reason"] == (
        "A detection model (mAP@0.5); the baseline is classification (top-1): not comparable."
    )
    assert base.pk not in c["pareto"]["host"] and c["pareto"]["host"] == [lenet.pk]
    points = charts.comparison_figures(c)["chart-pareto-host"]["data"]
    assert sum(len(t["y"]) for t in points) == 1  # the classifier alone
    # The detector as the baseline: mAP@0.5 columns, the classifier left out.
    d = comparison_build(organization=org, version_ids=[lenet.pk, base.pk], baseline_id=base.pk)
    assert d["task"] == "detection" and "mixes detection and classification" in d["mixed_tasks"]
    assert _cells(d, lenet.pk)["accuracy"]["value"] is None
    assert _cells(d, lenet.pk)["map50_95"]["value"] is None
    assert _cells(d, base.pk)["accuracy"]["value"] == 71.25
    page = client_for(yolo["owner"]).get(
        reverse("reports:compare"), {"v": [lenet.pk, base.pk], "baseline": lenet.pk}
    )
    assert "data-mixed-tasks>This comparison mixes classification and detection" in (
        page.content.decode()
    )


def test_a_sweep_over_a_detector_names_its_metric_map(yolo: Any) -> None:
    from webapp.jobs.models import Sweep, SweepBaseline
    from webapp.reports.sweeps import sweep_results

    org, base = yolo["org"], yolo["base"]
    data = dataset(org, name="scenes-sweep")
    sweep = Sweep.objects.create(
        organization=org, name="prune", model_version=base, dataset=data, recipe={},
        grid=[{"stage": 0, "method": "channel_pruning", "param": "ratio", "values": [0.5]}],
        baseline_status=SweepBaseline.DONE, constraints={"max_accuracy_drop": 1.0},
    )  # fmt: skip
    j = job(
        org, base, data, baseline=_det(0.7125, 0.4150, 8.0, 9.5, "torch"),
        stages=[_det(0.7075, 0.4100, 3.0, 4.25, "torch")],
        final=_det(0.7075, 0.4100, 3.0, 4.25, "torch"),
    )  # fmt: skip
    j.sweep, j.sweep_point = sweep, {"ratio": 0.5}
    j.save(update_fields=["sweep", "sweep_point"])
    version(org, parent=base, job=j, label="fp32", task="detection", size=4000)

    results = sweep_results(sweep=sweep)

    assert results["metric"] == "mAP@0.5" and results["baseline"]["accuracy"] == 71.25
    assert results["points"][0]["accuracy_drop"] == pytest.approx(0.5)
    host = results["figures"]["chart-pareto-host"]["layout"]
    assert host["yaxis"]["title"]["text"] == "test mAP@0.5 (host, full test split)"
    page = client_for(yolo["owner"]).get(reverse("sweeps:detail", args=[sweep.pk]))
    html = page.content.decode()
    assert (
        '<th class="metric-case">Test mAP@0.5</th>' in html and "<th>Test accuracy</th>" not in html
    )
    assert "Drops are against it, in mAP@0.5 points." in html
