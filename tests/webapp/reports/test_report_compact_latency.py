"""The report's latency column stays compact: the p50 on one line, the spread and rounds on a
small second line, and timing that varied too much flagged by a badge that explains itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import services
from webapp.jobs.models import JobStatus

pytestmark = pytest.mark.django_db


def _metrics(p50: float, iqr: float, cv: float) -> dict[str, Any]:
    latency = {"p50_ms": p50, "iqr_ms": iqr, "rounds": 5, "runs": 20, "cv": cv}
    return {"accuracy": 90.0, "onnx_bytes": 1000, "latency": latency}


def _latency_cells(html: str) -> list[str]:
    return re.findall(r'<td data-latency class="latency-cell">(.*?)</td>', html)


def test_the_latency_cell_is_a_p50_line_and_a_small_spread_line(org_a):
    org, user = org_a
    job = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    steady, noisy = _metrics(0.412, 0.01, 0.01), _metrics(0.2, 0.004, 0.08)
    job.status = JobStatus.SUCCEEDED
    job.report = {"baseline": steady, "stages": [], "final": noisy}
    job.save()
    html = client_for(user).get(reverse("reports:detail", args=[job.pk])).content.decode()
    base, final = _latency_cells(html)
    assert "<span data-p50>0.412 ms</span>" in base
    assert '<span class="latency-spread" data-latency-spread>± 0.010 IQR · 5 rounds</span>' in base
    assert "data-unstable" not in base and "p50 0.412" not in base
    badge = re.search(
        r'<span class="badge badge-warn" data-unstable title="([^"]+)">noisy</span>', final
    )
    assert badge and "8%" in badge.group(1) and "over 5%" in badge.group(1)


def test_the_spread_line_is_small_and_never_wraps():
    path = finders.find("jobs/jobs.css")
    assert isinstance(path, str)
    with open(path, encoding="utf-8") as fh:
        rule = re.search(r"\.latency-spread \{([^}]*)\}", fh.read())
    assert rule and "white-space: nowrap" in rule.group(1) and "display: block" in rule.group(1)
