"""Sweeps on the live stack (daphne + a Celery worker + Redis + PostgreSQL): launched in Chromium
from the wizard, the sweep page's Pareto chart fills over its socket as children finish; and
``edgeslim jobs sweep`` follows one to the end with a progress bar and prints the
recommendation. Every child reuses the one baseline its sweep measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user
from jobs_factories import make_digits, make_model_version

from webapp.accounts.services import api_token_create
from webapp.jobs.models import Job, JobEvent, JobEventKind, Sweep

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EDGESLIM = str(Path(sys.executable).parent / "edgeslim")
RECIPE_YAML = """\
name: cli sweep
eval: {latency_runs: 3, warmup: 1, threads: 1, rounds: 2}
stages:
  - method: finetune
    config: {epochs: 1, batch_size: 128}
"""


def _one_baseline_measurement(sweep: Sweep) -> None:
    children = list(Job.objects.filter(sweep=sweep))
    assert children and all(c.status == "SUCCEEDED" for c in children), [c.error for c in children]
    ids = [c.pk for c in children]
    # No child measured a baseline of its own (that is the pipeline's stage -1) ...
    assert not JobEvent.objects.filter(
        job_id__in=ids, kind=JobEventKind.STAGE_STARTED, payload__stage=-1
    ).exists()
    # ... each reused the sweep's, measured once.
    reused = JobEvent.objects.filter(
        job_id__in=ids, kind=JobEventKind.LOG, payload__line__startswith="reusing the sweep's"
    )
    assert reused.count() == len(children)
    sweep.refresh_from_db()
    for child in children:
        assert child.report["baseline"]["latency"] == sweep.baseline["metrics"]["latency"]


@pytest.mark.browser
def test_a_sweep_launched_in_the_wizard_fills_its_pareto_chart_live(edgeslim_stack, tmp_path):
    user = make_user(username="grace")
    org = make_organization(name="Sweep Lab", owner=user)
    mv, ds = make_model_version(org, name="lenet-sweep"), make_digits(org)
    base = edgeslim_stack.base_url
    with chromium_context(tmp_path) as context:
        page = first_page(context)
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "grace")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/jobs/new/")
        page.select_option("select[name=model_version]", str(mv.pk))
        page.select_option("select[name=dataset]", str(ds.pk))
        page.click("[data-wizard-next]")
        page.check("input[name=goal][value=custom]")
        page.select_option("select[name=stage_0]", "finetune")
        page.click("[data-wizard-next]")
        page.fill("input[name=s0-epochs]", "1")
        page.fill("input[name=s0-batch_size]", "128")
        page.click("[data-wizard-next]")
        page.click("[data-wizard-next]")  # targets: none
        text = page.input_value("textarea[name=recipe_yaml]")
        text = text.replace("latency_runs: 50", "latency_runs: 3").replace("rounds: 5", "rounds: 2")
        page.fill("textarea[name=recipe_yaml]", text)
        page.click("[data-sweep-option] summary")
        # A parameter with a value the method refuses: refused on the page, nothing queued.
        page.select_option("select[name=sweep-param_1]", "0.lr")
        page.fill("input[name=sweep-values_1]", "0.01, -1")
        page.click("[data-wizard-next]")
        assert "lr=-1" in page.inner_text("[data-sweep-option]")
        page.fill("input[name=sweep-values_1]", "0.01, 0.001")
        page.fill("input[name=sweep-max_accuracy_drop]", "100")
        page.click("[data-wizard-next]")
        page.wait_for_url("**/reports/sweeps/*/")
        # Nothing has finished when the page is drawn: the chart fills over the socket.
        assert page.locator("[data-no-charts]").count() == 1
        page.wait_for_selector("body[data-sweep-socket=open]", timeout=60_000)
        page.wait_for_selector("#chart-pareto-host .main-svg", timeout=300_000)
        page.wait_for_selector("[data-sweep-state=SUCCEEDED]", timeout=300_000)
        page.wait_for_function(
            "document.querySelectorAll('#chart-pareto-host .scatterlayer .point').length === 3",
            timeout=30_000,
        )  # the baseline and both points
        assert int(page.evaluate("document.body.dataset.sweepRefreshes")) >= 2
        assert page.locator("[data-recommended]").count() == 1
        assert page.locator("tr[data-point-status=SUCCEEDED]").count() == 2
        labels = " ".join(page.locator("#chart-pareto-host text").all_text_contents())
        assert "lr=0.01" in labels or "lr=0.001" in labels
        sweep_id = int(page.url.rstrip("/").split("/")[-1])
    assert Sweep.objects.count() == 1  # the refused grid queued nothing
    _one_baseline_measurement(Sweep.objects.get(pk=sweep_id))


def test_edgeslim_jobs_sweep_follows_a_sweep_and_prints_the_recommendation(
    edgeslim_stack, tmp_path
):
    user = make_user(username="ada")
    org = make_organization(name="CLI Lab", owner=user)
    mv, ds = make_model_version(org, name="lenet-cli"), make_digits(org)
    _, token = api_token_create(user=user, name="cli")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE_YAML)
    env = {**os.environ, "EDGESLIM_TOKEN": token}
    common = ["--server", edgeslim_stack.base_url, "--model", str(mv.pk), "--dataset", str(ds.pk)]

    refused = subprocess.run(
        [EDGESLIM, "jobs", "sweep", str(recipe), *common, "--grid", "target_mac_reduction=2,4"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "finetune has no parameter 'target_mac_reduction'" in refused.stderr
    assert not Sweep.objects.exists()

    proc = subprocess.run(
        [EDGESLIM, "jobs", "sweep", str(recipe), *common, "--grid", "lr=0.01,0.001",
         "--max-accuracy-drop", "100", "--prefer", "accuracy"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = Sweep.objects.get(pk=int(proc.stdout.strip().splitlines()[-1]))
    assert "2/2 points" in proc.stderr  # the progress bar's last state
    assert "lr=0.01: SUCCEEDED" in proc.stderr and "lr=0.001: SUCCEEDED" in proc.stderr
    assert "recommended under accuracy drop ≤ 100 pt" in proc.stderr
    assert "the most accurate of the 2 version(s)" in proc.stderr
    _one_baseline_measurement(sweep)
