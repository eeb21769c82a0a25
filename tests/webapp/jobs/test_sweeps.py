"""Sweeps: the grid is refused before anything is saved or queued; children share one baseline
measurement; the sweep's state, results and recommendation; the API (runner called as a plain
function; the live stack is tests/webapp/reports/test_sweep_live.py)."""

from __future__ import annotations

from typing import Any

import pytest
from factories import client_for
from jobs_factories import make_digits, make_model_version

from webapp.jobs import sweep_services
from webapp.jobs.errors import JobInputError
from webapp.jobs.models import Job, JobEvent, JobEventKind, Sweep, SweepBaseline
from webapp.jobs.runner import JobRunner
from webapp.jobs.sweep_runner import sweep_baseline_run
from webapp.jobs.sweep_selectors import sweep_children, sweep_state
from webapp.reports.sweeps import sweep_results

RECIPE: dict[str, Any] = {
    "name": "tiny sweep",
    "seed": 0,
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1, "rounds": 2},
    "stages": [{"method": "finetune", "config": {"epochs": 1, "batch_size": 128}}],
}


@pytest.fixture
def baselines_sent(monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(sweep_services, "_enqueue_baseline", lambda sweep: sent.append(sweep.pk))
    return sent


def _create(org, user, grid, **kw):
    return sweep_services.sweep_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=RECIPE,
        grid=grid,
        queue="cpu",
        **kw,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("grid", "field", "says"),
    [
        ({"lr": [0.001 * i for i in range(1, 10)], "epochs": list(range(1, 9))}, "grid",
         "9 x 8 = 72 points; a sweep runs at most 64"),
        ({"target_mac_reduction": [2, 4]}, "grid",
         "finetune has no parameter 'target_mac_reduction'"),
        ({"lr": [0.1], "epochs": [1], "batch_size": [8]}, "grid", "at most 2 parameters"),
        ({"epochs": [1, 0]}, "grid", "epochs=0"),
    ],
)  # fmt: skip
def test_a_bad_grid_is_refused_before_anything_is_saved_or_queued(
    org_a, baselines_sent, grid, field, says
):
    org, user = org_a
    with pytest.raises(JobInputError) as exc:
        _create(org, user, grid)
    assert exc.value.field == field and says in exc.value.message
    assert not Sweep.objects.exists() and not Job.objects.exists() and baselines_sent == []


@pytest.mark.django_db
def test_bad_constraints_are_refused(org_a, baselines_sent):
    org, user = org_a
    with pytest.raises(JobInputError) as exc:
        _create(org, user, {"lr": [0.01]}, constraints={"max_p50_ms": "fast"})
    assert exc.value.field == "constraints.max_p50_ms"
    with pytest.raises(JobInputError) as exc:
        _create(org, user, {"lr": [0.01]}, constraints={"latency": 3})
    assert "unknown constraint" in exc.value.message


@pytest.mark.django_db(transaction=True)
def test_children_share_one_baseline_measurement_and_the_sweep_recommends_under_constraints(
    org_a, baselines_sent
):
    org, user = org_a
    sweep = _create(org, user, {"lr": [0.05, 0.0001]}, constraints={"max_accuracy_drop": 100})
    children = sweep_children(sweep=sweep)
    assert baselines_sent == [sweep.pk]
    assert [c.sweep_point for c in children] == [{"lr": 0.05}, {"lr": 0.0001}]
    assert [c.recipe["stages"][0]["config"]["lr"] for c in children] == [0.05, 0.0001]
    assert sweep_state(sweep=sweep, children=children)["status"] == "QUEUED"

    assert sweep_baseline_run(sweep.pk) == "measured"
    assert sweep_baseline_run(sweep.pk) == "done"  # a redelivery measures nothing again
    sweep.refresh_from_db()
    assert sweep.baseline_status == SweepBaseline.DONE
    assert sweep.baseline["metrics"]["latency"]["p50_ms"] > 0
    for child in children:
        assert JobRunner(child.pk).run().outcome == "succeeded"
        child.refresh_from_db()
        # The child reused the sweep's numbers: same baseline, and it never measured one.
        baseline = {k: v for k, v in child.report["baseline"].items() if k != "onnx_path"}
        assert baseline == {k: v for k, v in sweep.baseline["metrics"].items() if k != "onnx_path"}
        stages = JobEvent.objects.filter(job=child, kind=JobEventKind.STAGE_STARTED)
        assert [e.payload["stage"] for e in stages] == [0]
        logs = JobEvent.objects.filter(job=child, kind=JobEventKind.LOG)
        assert any("reusing the sweep's baseline" in e.payload["line"] for e in logs)

    results = sweep_results(sweep=sweep)
    assert results["state"]["status"] == "SUCCEEDED"
    points = results["points"]
    assert all(p["version"] and p["host_p50_ms"] and p["accuracy"] is not None for p in points)
    assert results["baseline"]["accuracy"] is not None
    rec = results["recommendation"]
    fastest = min(points, key=lambda p: (p["host_p50_ms"], p["accuracy_drop"]))
    assert rec["choice"] == fastest["version"] and rec["job"] == fastest["job"]
    assert "accuracy drop ≤ 100 pt" in rec["constraints"]
    assert set(results["figures"]) >= {"chart-pareto-host", "chart-pareto-size"}

    # A constraint nothing meets: no recommendation, each point says why.
    none = sweep_results(sweep=sweep, query={"max_p50_ms": "0.000001"})["recommendation"]
    assert none["choice"] is None and "No version meets" in none["summary"]
    assert all("p50" in r[0] for r in none["excluded"].values())
    # The most accurate, when asked.
    best = sweep_results(sweep=sweep, query={"prefer": "accuracy"})["recommendation"]
    top = max(points, key=lambda p: p["accuracy"])
    assert best["choice"] == top["version"] or top["accuracy"] == next(
        p["accuracy"] for p in points if p["version"] == best["choice"]
    )
    # A device nobody ran on: every point lacks that latency.
    dev = sweep_results(sweep=sweep, query={"device": "pi-4", "max_p50_ms": "9"})
    assert dev["recommendation"]["choice"] is None
    assert "no p50 latency on pi-4" in next(iter(dev["recommendation"]["excluded"].values()))[0]

    # The page and the API show the same.
    client = client_for(user)
    page = client.get(f"/reports/sweeps/{sweep.pk}/")
    assert page.status_code == 200 and f'data-recommended="{rec["choice"]}"' in page.text
    api = client.get(f"/api/v1/sweeps/{sweep.pk}/results/?prefer=latency").json()
    assert api["recommendation"]["choice"] == rec["choice"] and "figures" not in api
    assert client.get(f"/api/v1/sweeps/{sweep.pk}/results/?max_p50_ms=x").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_failed_baseline_fails_every_waiting_child_with_the_reason(org_a, baselines_sent):
    org, user = org_a
    sweep = sweep_services.sweep_create(
        organization=org,
        user=user,
        model_version=make_model_version(org, corrupt=True),
        dataset=make_digits(org),
        recipe=RECIPE,
        grid={"lr": [0.01, 0.02]},
        queue="cpu",
    )
    assert sweep_baseline_run(sweep.pk) == "failed"
    sweep.refresh_from_db()
    children = sweep_children(sweep=sweep)
    assert sweep.baseline_status == SweepBaseline.FAILED and sweep.error
    assert {c.status for c in children} == {"FAILED"}
    assert all("shared baseline could not be measured" in c.error for c in children)
    assert sweep_state(sweep=sweep, children=children)["status"] == "FAILED"


@pytest.mark.django_db
def test_cancel_ends_every_queued_child_and_the_api_creates_lists_and_refuses(
    org_a, org_b, token_for, baselines_sent
):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    client = client_for(user)
    auth = token_for(user)
    body = {"model_version": mv.pk, "dataset": ds.pk, "recipe": RECIPE}
    bad = client.post(
        "/api/v1/sweeps/",
        {**body, "grid": {"sparsity": [0.5]}},
        content_type="application/json",
        **auth,
    )
    assert bad.status_code == 400 and bad.json()["field"] == "grid"
    assert "finetune has no parameter 'sparsity'" in bad.json()["detail"]
    too_big = client.post(
        "/api/v1/sweeps/",
        {**body, "grid": {"lr": [i / 1000 for i in range(1, 66)]}},
        content_type="application/json",
        **auth,
    )
    assert too_big.status_code == 400 and "65 points" in too_big.json()["detail"]
    assert not Sweep.objects.exists() and not Job.objects.exists()
    made = client.post(
        "/api/v1/sweeps/",
        {
            **body,
            "grid": {"lr": [0.01, 0.02], "epochs": [1, 2]},
            "constraints": {"max_accuracy_drop": 1},
        },
        content_type="application/json",
        **auth,
    )
    assert made.status_code == 201, made.json()
    data = made.json()
    assert len(data["children"]) == 4 and data["state"]["status"] == "QUEUED"
    assert data["constraints"] == {"max_accuracy_drop": 1.0}
    assert [c["values"] for c in data["children"]][1] == {"lr": 0.01, "epochs": 2}
    assert client.get("/api/v1/sweeps/", **auth).json()[0]["id"] == data["id"]
    # The pages link the sweep: the jobs list, each child's page, the sweep list.
    assert "data-sweeps-link" in client.get("/jobs/").text
    child_page = client.get(f"/jobs/{data['children'][0]['id']}/").text
    assert f'href="/reports/sweeps/{data["id"]}/" data-sweep-link' in child_page
    assert f"/reports/sweeps/{data['id']}/" in client.get("/reports/sweeps/").text
    # Another organisation sees nothing.
    other = token_for(org_b[1])
    assert client_for(org_b[1]).get(f"/api/v1/sweeps/{data['id']}/", **other).status_code == 404
    assert client_for(org_b[1]).get(f"/reports/sweeps/{data['id']}/").status_code == 404
    cancelled = client.post(f"/api/v1/sweeps/{data['id']}/cancel/", **auth).json()
    assert cancelled["state"]["counts"]["cancelled"] == 4
    assert client.post(f"/api/v1/sweeps/{data['id']}/cancel/", **auth).status_code == 409
    schema = client.get("/api/schema/", **auth).text
    assert "/api/v1/sweeps/{id}/results/" in schema and "SweepCreate" in schema
