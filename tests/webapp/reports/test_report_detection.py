"""A detection job's report page (issue 15, item 7), from report.json written to the contract:
mAP@0.5 (never "accuracy" or "top-1"), mAP@0.5:0.95, size, MACs and latency of the network
alone and end to end for every state, AP per class, the detections grid, and the charts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from detection_reports import GRID_PATH, detection_report, png_bytes
from django.core.files.base import ContentFile
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import selectors as job_selectors
from webapp.jobs.artifacts import job_storage, job_storage_name
from webapp.jobs.models import Job, JobStatus
from webapp.reports import charts, selectors

pytestmark = pytest.mark.django_db


def _job(org: Any, user: Any, report: dict[str, Any]) -> Job:
    return Job.objects.create(
        organization=org,
        name="yolo by hand",
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        status=JobStatus.SUCCEEDED,
        report=report,
        created_by=user,
    )


def _main(html: str) -> str:
    """The report's own sections: from the table to the charts (the nav and the on-device
    cards, drawn by other apps, left out)."""
    return html[html.index("data-detection-report") : html.index('<div class="charts-grid">')]


def _spans(html: str, attr: str) -> list[str]:
    return re.findall(rf'<span class="[^"]*" {attr}>(.*?)</span>', html, re.S)


def _cells(html: str, attr: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"<td {attr}(?:\s[^>]*)?>(.*?)</td>", html, re.S)]


def test_the_table_puts_map_size_macs_and_both_latencies_side_by_side(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, detection_report())

    page = client_for(user).get(reverse("reports:detail", args=[job.pk]))

    assert page.status_code == 200
    assert page.context["task"] == "detection" and page.context["metric_label"] == "mAP@0.5"
    html = page.content.decode()
    main = _main(html)
    assert 'data-task="detection"' in main
    for label in ("test mAP@0.5", "Δ mAP@0.5", "val mAP@0.5", "mAP@0.5:0.95", "MACs", "Size",
                  "Latency (network)", "Latency (end to end)"):  # fmt: skip
        assert f">{label}</th>" in main, label
    lowered = main.lower()
    assert "accuracy" not in lowered and "top-1" not in lowered and "test acc." not in lowered
    # baseline, the two stages, the final model
    assert _cells(main, "data-map50") == ["71.25%", "70.75%", "70.50%", "70.50%"]
    assert _cells(main, "data-map50-delta") == ["0.00 pt", "-0.50 pt", "-0.75 pt", "-0.75 pt"]
    assert _cells(main, "data-val-map50") == ["72.25%", "71.75%", "71.50%", "71.50%"]
    assert _cells(main, "data-map50-95") == ["41.50%", "41.00%", "40.50%", "40.50%"]
    assert _cells(main, "data-map50-95-delta")[-1] == "-1.00 pt"
    assert _cells(main, "data-macs") == ["300000000", "90000000", "90000000", "90000000"]
    assert _cells(main, "data-size")[0].startswith("7.6\xa0MB")
    assert "<span data-p50>8.000 ms</span>" in main and "<span data-e2e-p50>9.500 ms</span>" in main
    assert "<span data-e2e-p50>2.500 ms</span>" in main
    assert _spans(main, "data-fps-e2e")[-1] == "400.0 FPS"
    assert _spans(main, "data-speedup")[-1] == "5.33x speed-up"
    assert _spans(main, "data-speedup-e2e")[-1] == "3.80x speed-up"
    assert _spans(main, "data-smaller")[-1] == "11.43x smaller"
    assert 'class="metric-case"' in main  # "mAP", not "MAP", under the uppercase headings
    assert "mAP@0.5 drop ≤ 1.0 pt" in main and "(48 images, 131 boxes)" in main
    assert "1050 train / 128 val / 131 test" in html  # boxes per split in "Measured on"
    assert "data-report-table>" not in html  # the classification table is not drawn
    assert "predates the preprocessing record" not in html


def test_the_per_class_table_compares_baseline_and_final(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, detection_report())

    html = client_for(user).get(reverse("reports:detail", args=[job.pk])).content.decode()

    table = html[html.index("data-per-class-table") :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<tr data-class="([^"]+)">', table) == ["3", "7", "9"]
    row3 = table[table.index('data-class="3"') : table.index('data-class="7"')]
    assert _cells(row3, "data-base-ap50") == ["80.00%"]
    assert _cells(row3, "data-final-ap50") == ["77.50%"]
    assert _cells(row3, "data-delta-ap50") == ["-2.50 pt"]
    assert _cells(row3, "data-delta-ap50-95") == ["-2.00 pt"]
    row7 = table[table.index('data-class="7"') : table.index('data-class="9"')]
    assert _cells(row7, "data-delta-ap50") == ["1.00 pt"]
    row9 = table[table.index('data-class="9"') :]
    assert _cells(row9, "data-base-ap50") == ["—"] and _cells(row9, "data-delta-ap50") == [""]


def test_the_grid_image_is_served_from_the_jobs_storage_through_the_artifact_path(
    org_a: Any, org_b: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page shows the grid through ``jobs:artifact`` once the job's downloads list the
    ``detections_grid`` key (webapp/jobs' ARTIFACTS: added here as the jobs app is asked to)."""
    monkeypatch.setitem(job_selectors.ARTIFACTS, "detections_grid", (GRID_PATH, "image/png"))
    org, user = org_a
    job = _job(org, user, detection_report())
    png = png_bytes()
    job_storage().save(job_storage_name(job, GRID_PATH), ContentFile(png))
    c = client_for(user)

    html = c.get(reverse("reports:detail", args=[job.pk])).content.decode()

    url = reverse("jobs:artifact", args=[job.pk, "detections_grid"])
    assert f'<img src="{url}"' in html and "data-grid-image" in html
    assert "data-grid-missing" not in html
    image = c.get(url)
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert b"".join(image.streaming_content) == png
    # another organisation's member gets neither the page nor the image
    _, stranger = org_b
    assert client_for(stranger).get(url).status_code == 404


def test_a_grid_the_job_did_not_store_says_so_and_no_grid_shows_nothing(org_a: Any) -> None:
    org, user = org_a
    c = client_for(user)
    drawn = _job(org, user, detection_report())  # named in the report, not stored

    html = c.get(reverse("reports:detail", args=[drawn.pk])).content.decode()

    assert "data-grid-missing" in html and "<img" not in _main(html)
    none = _job(org, user, detection_report(grid=False))
    html = c.get(reverse("reports:detail", args=[none.pk])).content.decode()
    assert "data-detections-grid" not in html


def test_the_charts_label_their_axes_map_at_0_5(org_a: Any) -> None:
    org, user = org_a
    report = detection_report()
    report["stages"][0]["history"] = [
        {"epoch": 1.0, "loss": 9.0, "val_map50": 0.40},
        {"epoch": 2.0, "loss": 7.0, "val_map50": 0.55},
    ]
    job = _job(org, user, report)

    figures = client_for(user).get(reverse("reports:detail", args=[job.pk])).context["figures"]

    assert {"chart-size", "chart-acc-size", "chart-map-latency", "chart-training"} <= set(figures)
    acc = figures["chart-acc-size"]["layout"]
    assert acc["title"]["text"] == "mAP@0.5 against size"
    assert acc["yaxis"]["title"]["text"] == "test mAP@0.5"
    lat = figures["chart-map-latency"]
    assert [t["name"] for t in lat["data"]] == ["network alone", "end to end (+ decode, NMS)"]
    assert list(lat["data"][0]["x"]) == [8.0, 3.0, 1.5] and list(lat["data"][1]["x"]) == [
        9.5,
        4.25,
        2.5,
    ]
    assert lat["layout"]["yaxis"]["title"]["text"] == "test mAP@0.5"
    training = figures["chart-training"]
    assert training["data"][1]["name"] == "val mAP@0.5 (%)"
    assert [round(v, 6) for v in training["data"][1]["y"]] == [40.0, 55.0]
    assert training["layout"]["yaxis2"]["title"]["text"] == "val mAP@0.5"


def test_a_classification_report_keeps_its_table_and_labels() -> None:
    report = {
        "baseline": {"accuracy": 95.0, "onnx_bytes": 4000, "latency": {"p50_ms": 1.0}},
        "stages": [],
        "final": {"accuracy": 94.0, "onnx_bytes": 2000, "latency": {"p50_ms": 0.5}},
    }
    assert selectors.report_task(report) == "classification"
    rows = selectors.report_rows(report)
    assert rows[0]["metric"] == "top-1" and rows[0]["map50_95"] is None
    assert rows[0]["e2e_p50_ms"] is None and rows[-1]["e2e_speedup"] is None
    assert selectors.report_per_class(report) == []
    assert selectors.report_grid(report, []) is None
    figures = charts.report_figures(rows, {"layers": []}, [])
    assert "chart-map-latency" not in figures
    assert figures["chart-acc-size"]["layout"]["title"]["text"] == "Accuracy against size"


def test_selectors_read_the_task_per_class_dicts_and_refuse_unsafe_grid_paths() -> None:
    # No top-level task (a report from a pipeline that only marks the metrics).
    bare = {"baseline": {"metric": "mAP@0.5", "accuracy": 50.0}, "final": {}}
    assert selectors.report_task(bare) == "detection"
    # per_class as compression.detection_metrics.DetectionMetrics.to_dict() writes it.
    report = {
        "baseline": {"detection": {"per_class": {"cat": {"map50": 0.5, "map50_95": 0.25}}}},
        "final": {"detection": {"per_class": {"cat": {"map50": 0.625, "map50_95": None}}}},
        "dataset": {"classes": ["dog", "cat"]},
    }
    (cat,) = selectors.report_per_class(report)
    assert (cat["class"], cat["base_ap50"], cat["final_ap50"]) == ("cat", 50.0, 62.5)
    assert cat["delta_ap50"] == 12.5 and cat["delta_ap50_95"] is None
    # a class id is shown with the data set's name for it
    ids = {"baseline": {"detection": {"per_class": [{"class": "1", "ap50": 0.5}]}},
           "dataset": {"classes": ["dog", "cat"]}}  # fmt: skip
    assert selectors.report_per_class(ids)[0]["label"] == "1 (cat)"
    for bad in ("../../etc/passwd.png", "/abs/grid.png", "grid.jpg", "a\\b.png", ""):
        arts = {"artifacts": [{"kind": "detections_grid", "path": bad}]}
        assert selectors.report_grid_path(arts) is None, bad
    ok = {"artifacts": [{"kind": "detections_grid", "path": "eval/grid.png"}]}
    assert selectors.report_grid(ok, [{"key": "detections_grid", "size_bytes": 9}]) == {
        "path": "eval/grid.png",
        "key": "detections_grid",
        "size_bytes": 9,
    }
