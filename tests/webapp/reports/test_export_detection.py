"""A detection job's exports (JSON, CSV, PDF with the detections grid) and a detector on the
fleet view and the lineage: mAP@0.5 and the end-to-end latency carried with their names."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from compare_factories import dataset, device, device_result, version
from detection_reports import GRID_PATH, detection_report, png_bytes
from django.core.files.base import ContentFile
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from device_registry.models import DeploymentResult
from webapp.jobs import selectors as job_selectors
from webapp.jobs.artifacts import job_storage, job_storage_name
from webapp.jobs.models import Job, JobStatus
from webapp.reports import pdf as pdf_service
from webapp.reports.fleet import fleet_build, fleet_csv_rows
from webapp.reports.lineage import lineage_build, lineage_csv_rows

pytestmark = pytest.mark.django_db


def _job(org: Any, user: Any) -> Job:
    return Job.objects.create(
        organization=org,
        name="yolo by hand",
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        status=JobStatus.SUCCEEDED,
        report=detection_report(),
        created_by=user,
    )


def test_the_json_and_csv_exports_name_the_metric_and_carry_map_and_e2e(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user)
    c = client_for(user)

    data = c.get(reverse("reports:export", args=[job.pk, "json"])).json()

    assert (data["task"], data["metric"]) == ("detection", "mAP@0.5")
    base, final = data["states"][0], data["states"][-1]
    assert (base["metric"], base["accuracy"], base["map50_95"]) == ("mAP@0.5", 71.25, 41.5)
    assert final["map50_95_delta"] == pytest.approx(-1.0)
    assert base["latency_e2e"]["p50_ms"] == 9.5 and final["latency_e2e"]["p50_ms"] == 2.5
    assert final["latency"]["p50_ms"] == 1.5 and final["speedup_e2e"] == pytest.approx(3.8)
    assert final["throughput_e2e"] == pytest.approx(400.0)
    assert [p["class"] for p in data["per_class"]] == ["3", "7", "9"]
    assert data["per_class"][0]["delta_ap50"] == pytest.approx(-2.5)
    body = c.get(reverse("reports:export", args=[job.pk, "csv"])).content.decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [r["kind"] for r in rows] == ["baseline", "stage", "stage", "final"]
    assert rows[0]["metric"] == "mAP@0.5" and rows[0]["task"] == "detection"
    assert float(rows[-1]["accuracy"]) == 70.5 and float(rows[-1]["map50_95"]) == 40.5
    assert float(rows[-1]["latency_e2e_p50_ms"]) == 2.5 and float(rows[0]["latency_p50_ms"]) == 8.0


def test_a_classification_export_says_top_1_and_has_no_detection_figures(org_a: Any) -> None:
    org, user = org_a
    report = {
        "baseline": {"accuracy": 97.0, "onnx_bytes": 1000, "latency": {"p50_ms": 1.0}},
        "stages": [],
        "final": {"accuracy": 96.0, "onnx_bytes": 500, "latency": {"p50_ms": 0.5}},
    }
    job = _job(org, user)
    job.report = report
    job.save(update_fields=["report"])

    data = client_for(user).get(reverse("reports:export", args=[job.pk, "json"])).json()

    assert (data["task"], data["metric"], data["per_class"]) == ("classification", "top-1", [])
    assert data["states"][0]["map50_95"] is None and data["states"][0]["latency_e2e"] is None


def test_a_detector_on_the_fleet_and_the_lineage_shows_map_and_e2e(org_a: Any) -> None:
    org, user = org_a
    scenes = dataset(org, name="scenes")
    yolo = version(org, fmt="onnx", task="detection")
    pi = device(org, "pi")
    meta = {"dataset_id": scenes.pk, "dataset": scenes.name, "split_seed": 0, "count": 48}
    dep = device_result(org, yolo, pi, p50=6.0, eval_meta=meta)
    latency = DeploymentResult.objects.get(deployment=dep, kind="latency")
    latency.payload.update(e2e_p50_ms=7.5, e2e_p90_ms=8.0, fps=160.0, fps_e2e=130.0)
    latency.save(update_fields=["payload"])
    DeploymentResult.objects.create(
        deployment=dep, device=pi, seq=2, kind="accuracy",
        payload={"task": "detection", "metric": "mAP@0.5", "map50": 0.69, "map50_95": 0.39,
                 "samples": 48, "boxes": 131},
    )  # fmt: skip

    fleet = fleet_build(organization=org, version_id=yolo.pk)

    assert fleet["task"] == "detection"
    (row,) = fleet["rows"]
    assert row["map50_pct"] == pytest.approx(69.0) and row["map50_95_pct"] == pytest.approx(39.0)
    assert (row["e2e_p50_ms"], row["fps"], row["fps_e2e"]) == (7.5, 160.0, 130.0)
    assert row["top1_pct"] is None
    header, line = fleet_csv_rows(fleet)
    assert dict(zip(header, line, strict=True))["e2e_p50_ms"] == 7.5
    html = client_for(user).get(reverse("reports:fleet", args=[yolo.pk])).content.decode()
    assert ">mAP@0.5</th>" in html and ">Top-1</th>" not in html
    assert "69.00%" in html and "7.500 ms" in html and "160.0 · 130.0" in html
    lineage = lineage_build(organization=org, version_id=yolo.pk)
    (node,) = lineage["versions"]
    assert node["devices"][0]["map50_pct"] == pytest.approx(69.0)
    header, line = lineage_csv_rows(lineage)
    assert float(dict(zip(header, line, strict=True))[f"device:{pi.pk}:pi:map50_pct"]) == 69.0


@pytest.mark.browser
def test_the_pdf_prints_the_map_table_and_the_grid_image(
    org_a: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path(pdf_service.chromium_path()).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    import pypdfium2 as pdfium

    monkeypatch.setitem(job_selectors.ARTIFACTS, "detections_grid", (GRID_PATH, "image/png"))
    org, user = org_a
    job = _job(org, user)
    # A grid of one colour no chart uses, big enough to count in the rendered PDF.
    job_storage().save(
        job_storage_name(job, GRID_PATH), ContentFile(png_bytes(400, 200, (0, 200, 0)))
    )

    response = client_for(user).get(reverse("reports:export", args=[job.pk, "pdf"]))

    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    doc = pdfium.PdfDocument(response.content)
    text = "".join(doc[i].get_textpage().get_text_bounded() for i in range(len(doc)))
    assert "mAP@0.5" in text and "APperclass" in text.replace(" ", "").replace("\n", "")
    green = 0
    for i in range(len(doc)):
        img = doc[i].render(scale=1.0).to_pil().convert("RGB")
        colours = img.getcolors(maxcolors=1 << 24) or []
        green += sum(n for n, (r, g, b) in colours if r < 20 and 185 < g < 215 and b < 20)
    assert green > 5000  # the grid was printed, not a broken image
