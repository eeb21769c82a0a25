"""A report with a decomposition stage lists each factored layer with its ranks, and each
skipped one with its reason; a report without one shows no such table."""

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


def _job(org: Any, user: Any, report: dict[str, Any]) -> Any:
    job = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    job.status = JobStatus.SUCCEEDED
    job.report = report
    job.save()
    return job


def _report(layers: list[dict[str, Any]]) -> dict[str, Any]:
    m = {"accuracy": 95.0, "onnx_bytes": 405_000}
    stage = {"index": 0, "method": "tucker_decomposition", "name": "t", "metrics": m,
             "layers": layers, "history": []}  # fmt: skip
    return {"baseline": m, "stages": [stage], "final": m}


LAYERS = [
    {"name": "layer3.0.conv2", "kind": "conv", "ranks": [12, 9], "params_before": 36864,
     "params_after": 2556, "macs_before": 2359296, "macs_after": 163584,
     "note": "Tucker-2 ranks out 12 / in 9 (EVBMF), weight error 0.412"},
    {"name": "layer1.0.conv1", "kind": "conv", "params_before": 2304, "params_after": 2304,
     "note": "skipped: 16 -> 16 channels: below min_channels 32 (a low-dimensional conv)"},
    {"name": "fc", "kind": "linear", "channels_before": 64, "channels_after": 64},
]  # fmt: skip
# Rows of a stage with the latency gate on: one kept, one skipped, both with measured µs; the
# kept one as an older report wrote it (no latency_speedup: the page falls back to the µs ratio).
GATED = [
    {"name": "features.18", "kind": "conv", "ranks": [205, 205], "params_before": 2359296,
     "params_after": 588800, "latency_us_before": 1393.2, "latency_us_after": 244.4,
     "note": "Tucker-2 ranks out 205 / in 205 (ratio 5), weight error 0.7; measured ORT 1393 µs "
             "dense -> 244 µs chain, 5.70x faster"},
    {"name": "features.22", "kind": "conv", "params_before": 2359296, "params_after": 2359296,
     "latency_us_before": 219.0, "latency_us_after": 146.0, "latency_speedup": 1.48,
     "note": "skipped: Tucker-2 ranks out 205 / in 205 (ratio 5): measured ORT 219 µs dense -> "
             "146 µs chain, 1.48x faster (rounds 1.41-1.55x) at batch 1 on 512x2x2 (needs 3x, "
             "min_measured_speedup)"},
]  # fmt: skip


def test_the_selector_keeps_factored_and_skipped_layers_only() -> None:
    rows = selectors.report_factored_layers(_report(LAYERS))
    assert [r["name"] for r in rows] == ["layer3.0.conv2", "layer1.0.conv1"]
    assert rows[0]["ranks"] == "12/9" and not rows[0]["skipped"]
    assert rows[1]["ranks"] == "" and rows[1]["skipped"]


def test_the_selector_carries_the_latency_gate_timings() -> None:
    rows = {r["name"]: r for r in selectors.report_factored_layers(_report(LAYERS + GATED))}
    assert rows["features.18"]["gate_speedup"] == pytest.approx(1393.2 / 244.4)
    assert rows["features.22"]["latency_us_after"] == 146.0 and rows["features.22"]["skipped"]
    assert rows["features.22"]["gate_speedup"] == 1.48  # the paired speedup the gate decided on
    assert rows["layer3.0.conv2"]["gate_speedup"] is None  # the gate was off for that stage


def test_the_report_page_shows_the_gate_timings(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, _report(LAYERS + GATED))
    html = client_for(user).get(reverse("reports:detail", args=[job.pk])).content.decode()
    assert "Measured (ORT)" in html
    assert "1393 → 244 µs (5.70x)" in html and "219 → 146 µs (1.48x)" in html
    assert "(needs 3x, min_measured_speedup)" in html


def test_the_report_page_shows_ranks_and_reasons(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, _report(LAYERS))
    html = client_for(user).get(reverse("reports:detail", args=[job.pk])).content.decode()
    assert "data-factored-table" in html
    assert "12/9" in html and "Tucker-2 ranks out 12 / in 9 (EVBMF)" in html
    assert "below min_channels 32" in html
    plain = _job(org, user, _report(LAYERS[2:]))
    html = client_for(user).get(reverse("reports:detail", args=[plain.pk])).content.decode()
    assert "data-factored-table" not in html
