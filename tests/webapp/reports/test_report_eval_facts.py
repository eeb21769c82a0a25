"""The report page shows test and val accuracy, the latency spread, the preprocessing and the
split it was measured on, from a report.json written by hand with the issue-8 fields."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from compression.preprocessing import Preprocessing
from webapp.jobs.models import Job, JobStatus
from webapp.reports import selectors

pytestmark = pytest.mark.django_db


def _metrics(acc: float, val: float, p50: float, iqr: float, p99: float | None) -> dict[str, Any]:
    return {
        "accuracy": acc,
        "val_accuracy": val,
        "eval_split": "test",
        "test_images": 360,
        "params": 61706,
        "nonzero_params": 61706,
        "macs": 416520,
        "onnx_bytes": 250_000,
        "onnx_zip_bytes": 230_000,
        "format": "onnx",
        "latency": {
            "p50_ms": p50,
            "p90_ms": p50 * 1.1,
            "p99_ms": p99,
            "iqr_ms": iqr,
            "rounds": 5,
            "runs": 10,
            "round_p50_ms": [p50] * 5,
            "throughput": 812.5,
            "cv": 0.01,
        },
    }


def _report() -> dict[str, Any]:
    pre = Preprocessing(
        input_size=(32, 32),
        channels=1,
        mean=(0.1234,),
        std=(0.3012,),
        class_names=tuple(str(d) for d in range(10)),
    )
    return {
        "recipe": {"eval": {"batch_size": 1, "threads": 2}},
        "baseline": _metrics(97.25, 98.5, 1.234, 0.051, None),
        "stages": [
            {
                "index": 0,
                "method": "channel_pruning",
                "metrics": _metrics(96.75, 97.0, 0.61, 0.02, None),
            }
        ],
        "final": _metrics(96.5, 96.75, 0.42, 0.011, 0.55),
        "targets": {"max_accuracy_drop": 1.0, "accuracy_drop": 0.75, "met": True},
        "preprocessing": pre.to_dict(),
        "dataset": {
            "name": "digits",
            "split_seed": 7,
            "fingerprint": "ab" * 32,
            "totals": {"train": 1078, "val": 359, "test": 360},
        },
        "identity": {"model_sha256": "cd" * 32, "dataset_fingerprint": "ab" * 32},
    }


def _finished_job(org: Any, user: Any, report: dict[str, Any]) -> Job:
    return Job.objects.create(
        organization=org,
        name="by hand",
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        status=JobStatus.SUCCEEDED,
        report=report,
        created_by=user,
    )


def test_the_report_shows_test_and_val_accuracy_latency_spread_preprocessing_and_splits(org_a):
    org, user = org_a
    job = _finished_job(org, user, _report())

    page = client_for(user).get(reverse("reports:detail", args=[job.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert "test acc." in html and "val acc." in html
    rows = page.context["rows"]
    assert [r["val_accuracy"] for r in rows] == [98.5, 97.0, 96.75]
    assert "97.25%" in html and "98.50%" in html  # percent, one unit
    assert "<span data-p50>1.234 ms</span>" in html and "± 0.051 IQR · 5 rounds" in html
    assert "812.5/s" in html
    # p99 below 100 timed runs is null and shows as a dash; the final's is shown
    p99_cells = [c.split(">", 1)[1].split("</td>")[0] for c in html.split("<td data-p99")[1:]]
    assert "—" in p99_cells[0] and "—" in p99_cells[1] and "0.550 ms" in p99_cells[2]
    assert "grayscale 32x32" in html and "0.1234" in html and "0.3012" in html
    assert "1078 train / 359 val / 360 test" in html
    facts = page.context["facts"]
    assert facts["split_seed"] == 7 and facts["eval_split"] == "test"


def test_an_old_report_without_the_new_fields_still_renders(org_a):
    org, user = org_a
    report = {
        "recipe": {"eval": {"batch_size": 1, "threads": 2}},
        "baseline": {"accuracy": 97.0, "onnx_bytes": 1000, "latency": {"p50_ms": 1.0}},
        "stages": [],
        "final": {"accuracy": 96.0, "onnx_bytes": 500, "latency": {"p50_ms": 0.5}},
    }
    job = _finished_job(org, user, report)

    page = client_for(user).get(reverse("reports:detail", args=[job.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert "acc. (val split)" in html and "predates the preprocessing record" in html
    table = html.split("data-report-table")[1][:3000]
    assert "<span data-p50>1.000 ms</span>" in html and "IQR" not in table
    assert selectors.report_rows(report)[0]["p99_ms"] is None
