"""A final model slower or larger than its reference is flagged in red with the reason, and the
stage that did better is offered with a link to its checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import services
from webapp.jobs.models import JobStatus
from webapp.reports import selectors

pytestmark = pytest.mark.django_db


def _metrics(acc: float, p50: float, size: int) -> dict[str, Any]:
    return {"accuracy": acc, "onnx_bytes": size, "latency": {"p50_ms": p50}}


def _report(*, final_p50: float, reference: str = "baseline") -> dict[str, Any]:
    """Baseline 2 ms; stage 1 trains (1.8 ms), stage 2 prunes (1 ms), stage 3 quantizes."""
    final = _metrics(95.0, final_p50, 300)
    return {
        "baseline": _metrics(10.0, 2.0, 1000),
        "stages": [
            {"index": 0, "method": "finetune", "metrics": _metrics(97.0, 1.8, 1000)},
            {"index": 1, "method": "channel_pruning", "metrics": _metrics(96.0, 1.0, 500)},
            {"index": 2, "method": "ptq_int8", "metrics": final},
        ],
        "final": final,
        "targets": {"reference": reference},
    }


def test_a_slower_final_model_is_flagged_and_the_faster_stage_offered():
    report = _report(final_p50=2.7, reference="stage:0")
    artifacts = [
        {"key": "checkpoint:stage_01_channel_pruning.safetensors"},
        {"key": "checkpoint:stage_02_ptq_int8.onnx"},
    ]
    flags = selectors.report_verdict_flags(report, selectors.report_rows(report), artifacts)
    # Judged against the trained model after stage 1 (1.8 ms), not the random baseline.
    assert flags["problems"] == [
        "The final model is slower than its reference, stage 1 (finetune): 0.67x its speed "
        "(p50 2.700 ms against 1.800 ms)."
    ]
    best = flags["best"]
    assert (best["number"], best["name"], best["what"]) == (2, "channel_pruning", "faster")
    assert best["ratio"] == pytest.approx(1.8)
    assert best["artifact"]["key"] == "checkpoint:stage_01_channel_pruning.safetensors"


def test_a_faster_and_smaller_final_model_raises_no_flag():
    report = _report(final_p50=0.8)
    flags = selectors.report_verdict_flags(report, selectors.report_rows(report), [])
    assert flags == {"problems": [], "best": None}


def test_the_report_page_shows_the_flag_in_red_with_the_best_stage(org_a):
    org, user = org_a
    job = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    job.status, job.report = JobStatus.SUCCEEDED, _report(final_p50=2.7, reference="stage:0")
    job.save()
    html = client_for(user).get(reverse("reports:detail", args=[job.pk])).content.decode()
    assert "data-verdict-flag" in html and "slower than its reference, stage 1 (finetune)" in html
    assert "Stage 2 (channel_pruning) was faster: 1.80x" in html
