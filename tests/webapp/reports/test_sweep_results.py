"""A sweep's results over its largest grid (64 points), from rows as a finished sweep leaves
them: every point on the chart, the recommendation, and a query count that does not grow."""

from __future__ import annotations

import pytest
from compare_factories import dataset, job, metrics, version
from django.db import connection
from django.test.utils import CaptureQueriesContext
from factories import make_organization, make_user

from webapp.jobs.models import Sweep, SweepBaseline
from webapp.reports.sweeps import sweep_results

pytestmark = pytest.mark.django_db


def _sweep(points: int) -> Sweep:
    org = make_organization(owner=make_user())
    data = dataset(org)
    base = version(org, fmt="torch", size=8000)
    sweep = Sweep.objects.create(
        organization=org, name="big", model_version=base, dataset=data, recipe={},
        grid=[{"stage": 0, "method": "channel_pruning", "param": "ratio",
               "values": [round(0.01 * (i + 1), 2) for i in range(points)]}],
        baseline_status=SweepBaseline.DONE, constraints={"max_accuracy_drop": 1.0},
    )  # fmt: skip
    for i in range(points):
        # Each point: 0.05 pt less accurate and 1 % faster than the one before.
        j = job(
            org,
            base,
            data,
            baseline=metrics(98.0, 2.0, fmt="torch"),
            stages=[metrics(98.0 - 0.05 * i, 2.0 * (1 - 0.01 * i), fmt="torch")],
            final=metrics(98.0 - 0.05 * i, 2.0 * (1 - 0.01 * i), fmt="torch"),
        )
        j.sweep, j.sweep_point = sweep, {"ratio": round(0.01 * (i + 1), 2)}
        j.save(update_fields=["sweep", "sweep_point"])
        version(org, parent=base, job=j, label="fp32", size=8000 - 50 * i)
    return sweep


def test_a_64_point_sweep_is_charted_and_recommended_in_a_fixed_number_of_queries():
    small = _sweep(4)
    with CaptureQueriesContext(connection) as few:
        sweep_results(sweep=small)
    sweep = _sweep(64)
    with CaptureQueriesContext(connection) as many:
        results = sweep_results(sweep=sweep)
    assert len(many) == len(few)
    assert len(results["points"]) == 64 and results["state"]["status"] == "SUCCEEDED"
    assert all(p["version"] and p["accuracy_drop"] is not None for p in results["points"])
    # Within 1 pt: points 0..20 (drop 0.05 * i); the fastest of them is point 20.
    rec = results["recommendation"]
    chosen = next(p for p in results["points"] if p["version"] == rec["choice"])
    assert chosen["values"] == {"ratio": 0.21}
    assert len(rec["eligible"]) == 21 and len(rec["excluded"]) == 43
    host = results["figures"]["chart-pareto-host"]
    assert sum(len(trace["x"]) for trace in host["data"]) == 65  # every point and the baseline
    assert "ratio=0.21" in host["data"][1]["text"]
