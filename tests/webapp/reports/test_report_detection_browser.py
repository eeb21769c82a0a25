"""In Chromium: a detection job's report draws its Plotly charts with mAP@0.5 axes and shows the
detections grid, loaded through the job's artifact download (an attachment, image/png)."""

from __future__ import annotations

from typing import Any

import pytest
from browser import chromium_context, first_page
from detection_reports import GRID_PATH, detection_report, png_bytes
from django.core.files.base import ContentFile
from factories import client_for, make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import selectors as job_selectors
from webapp.jobs.artifacts import job_storage, job_storage_name
from webapp.jobs.models import Job, JobStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_detection_report_draws_map_charts_and_the_grid(
    live_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The jobs app lists the grid among a job's downloads under this key (issue 15).
    monkeypatch.setitem(job_selectors.ARTIFACTS, "detections_grid", (GRID_PATH, "image/png"))
    user = make_user()
    org = make_organization(owner=user)
    job = Job.objects.create(
        organization=org, name="yolo", model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), status=JobStatus.SUCCEEDED,
        report=detection_report(), created_by=user,
    )  # fmt: skip
    job_storage().save(job_storage_name(job, GRID_PATH), ContentFile(png_bytes(320, 160)))
    session = client_for(user).cookies["sessionid"].value

    with chromium_context(tmp_path) as context:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = first_page(context)
        page.goto(f"{live_server.url}/reports/jobs/{job.pk}/")
        page.wait_for_function("document.documentElement.dataset.chartsDrawn")
        assert page.locator("#chart-map-latency .main-svg").count() >= 1
        # What Plotly drew with: its full layout, after it laid the chart out.
        title = "(id) => document.getElementById(id)._fullLayout.yaxis.title.text"
        assert page.evaluate(title, "chart-map-latency") == "test mAP@0.5"
        assert page.evaluate(title, "chart-acc-size") == "test mAP@0.5"
        traces = page.evaluate(
            "() => document.getElementById('chart-map-latency')._fullData.map(t => t.name)"
        )
        assert traces == ["network alone", "end to end (+ decode, NMS)"]
        final = page.locator('[data-task="detection"] tr[data-row="final"]')
        assert final.locator("td[data-map50]").inner_text() == "70.50%"
        assert final.locator("td[data-latency-e2e] [data-e2e-p50]").inner_text() == "2.500 ms"
        grid = page.locator("img[data-grid-image]")
        grid.scroll_into_view_if_needed()
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=grid.element_handle()
        )
        assert grid.evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [320, 160]
