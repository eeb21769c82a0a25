"""In Chromium: an engineer opens a finished sensitivity analysis, sees the heatmap drawn, picks
a tolerance, and one click opens the wizard with a channel_pruning stage whose per-layer ratios
are filled in; launched, the job's recipe carries them."""

from __future__ import annotations

import json
import re

import pytest
from browser import chromium_context, first_page
from factories import client_for
from jobs_factories import make_digits, make_model_version

from compression.sensitivity import SensitivityResult, ratios_within
from webapp.jobs.models import Job
from webapp.sensitivity import services
from webapp.sensitivity.runner import analysis_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_one_click_turns_the_heatmap_into_a_prefilled_pruning_stage(live_server, org_a, tmp_path):
    # Rows first: the ORM refuses to run beside Playwright's event loop.
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    analysis = services.analysis_create(
        organization=org, user=user, model_version=mv, dataset=ds, ratios=[0.25, 0.5, 0.75]
    )
    assert analysis_run(analysis.pk) == "succeeded"
    analysis.refresh_from_db()
    result = SensitivityResult.from_dict(analysis.result)
    tolerance = 0.5
    expected = ratios_within(result, tolerance)
    assert expected  # an untrained LeNet loses little: some layer fits
    session = client_for(user).cookies["sessionid"].value

    with chromium_context(tmp_path) as context:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = first_page(context)
        page.goto(f"{live_server.url}/reports/")
        page.click("[data-sensitivity-link]")
        page.wait_for_url("**/sensitivity/")
        page.click(f'tr[data-analysis="{analysis.pk}"] a')
        page.wait_for_selector("#sensitivity-heatmap .main-svg", timeout=30_000)
        assert page.locator("html").get_attribute("data-charts-drawn") == "1"
        # The heatmap's rows are the layers, top to bottom in module order.
        labels = page.eval_on_selector_all(
            "#sensitivity-heatmap .ytick text",
            "els => els.map(e => [e.getBoundingClientRect().top, e.textContent])"
            ".sort((a, b) => a[0] - b[0]).map(p => p[1])",
        )
        assert labels == [layer.name for layer in result.layers]
        assert page.locator("[data-sensitivity-table] tbody tr").count() == len(result.layers)
        page.fill("input[name=max_drop]", str(tolerance))
        page.click("[data-to-wizard-button]")
        page.wait_for_url("**/jobs/new/params/")
        assert page.locator("fieldset[data-method=channel_pruning]").count() == 1
        prefilled = json.loads(page.input_value("textarea[name=s0-layer_ratios]"))
        assert prefilled == expected
        assert page.input_value("select[name=s0-importance]") == "l1"
        assert page.locator("textarea[name=s0-layer_ratios]").is_visible()  # not under Advanced
        page.click("[data-wizard-next]")
        page.wait_for_url("**/jobs/new/targets/")
        page.click("[data-wizard-next]")
        page.wait_for_url("**/jobs/new/review/")
        assert page.locator("[data-recipe-error]").count() == 0, page.inner_text("main")
        page.click("[data-wizard-next]")
        page.wait_for_url(re.compile(r".*/jobs/\d+/$"))
        job_id = int(page.url.rstrip("/").split("/")[-1])

    job = Job.objects.get(pk=job_id)
    (stage,) = job.recipe["stages"]
    assert stage["method"] == "channel_pruning"
    assert stage["config"]["layer_ratios"] == expected
    assert job.model_version_id == mv.pk and job.dataset_id == ds.pk
