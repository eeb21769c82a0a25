"""In Chromium: a YOLO zip uploaded as a plain dataset is open on its page while the worker
checks it; when it turns ready the page becomes the detection report by itself, with the
box-size histogram drawn by Plotly, the problems by file and line and the box-drawn samples."""

from __future__ import annotations

import threading
import time

import pytest
from browser import chromium_context, first_page
from factories import client_for
from test_catalog_detection import yolo_zip

from webapp.catalog import services
from webapp.catalog.models import Dataset
from webapp.catalog.services import uploads

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_detection_report_appears_when_the_check_ends(
    live_server, tmp_path, org_a, user_a, monkeypatch
):
    # This test plays the worker (the thread below), so the validation it queues is kept here:
    # a live stack that an earlier test left running would otherwise take it from the broker
    # and check the zip without this test's storage (the row turns invalid under the page).
    queued: list[tuple[str, int]] = []
    monkeypatch.setattr(uploads, "_enqueue", lambda name, pk: queued.append((name, pk)))
    # Rows first: the ORM refuses to run beside Playwright's event loop.
    dataset = services.dataset_upload_create(
        organization=org_a, user=user_a, path=yolo_zip(tmp_path / "shapes.zip")
    )
    assert queued == [(uploads.DATASET_VALIDATE_TASK, dataset.pk)]
    session = client_for(user_a).cookies["sessionid"].value

    checked: list[tuple[str, str]] = []

    def validate() -> None:  # the worker's part, on a thread of its own (no event loop there)
        from django.db import connection

        try:
            services.dataset_validate(dataset=Dataset.objects.get(pk=dataset.pk))
            checked.append(Dataset.objects.values_list("status", "error").get(pk=dataset.pk))
        finally:
            connection.close()

    with chromium_context(tmp_path) as context:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = first_page(context)
        # What the page's polls got, so a page that never turns ready says why.
        polls: list[str] = []
        page.on("requestfinished", lambda r: polls.append(f"{r.url} -> {r.response().status}"))
        page.on("requestfailed", lambda r: polls.append(f"{r.url} failed: {r.failure}"))
        page.on("console", lambda m: polls.append(f"console {m.type}: {m.text}"))
        page.goto(f"{live_server.url}/datasets/{dataset.pk}/")
        assert page.get_attribute("#item-body", "data-item-status") == "pending"
        worker = threading.Thread(target=validate)
        worker.start()
        # Keep Playwright's loop turning while the worker runs (a blocked join would not).
        deadline = time.monotonic() + 180
        while worker.is_alive() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        # The row first (a failed check says why here, not as a page timeout), then the page,
        # which htmx re-polls every 2 s (each poll gives up after 10 s, so one lost request
        # cannot stop the polling).
        assert checked and checked[0][0] == "ready", checked
        try:
            page.wait_for_selector('#item-body[data-item-status="ready"]', timeout=60_000)
        except Exception as exc:  # the page's last requests and messages, then the error
            raise AssertionError("\n".join(polls[-20:])) from exc
        assert page.inner_text("[data-task]") == "Object detection"
        assert page.inner_text("[data-format]") == "YOLO"
        assert page.inner_text("[data-boxes]").startswith("18")
        # the histogram: Plotly's bars, one per size bin, drawn after the htmx swap
        page.wait_for_selector("[data-size-histogram] .main-svg", timeout=30_000)
        assert page.locator("[data-size-histogram] .bars path").count() == 8
        problems = page.inner_text("[data-problem-list]")
        assert "shapes/labels/03.txt:3 — class id 9 is not in 0..1; dropped" in problems
        # every sample image loads (the worker's PNGs through the org-scoped view)
        samples = page.locator("img[data-det-sample]")
        assert samples.count() >= 2
        page.wait_for_function(
            "[...document.querySelectorAll('img[data-det-sample]')]"
            ".every(i => i.complete && i.naturalWidth === 192)"
        )
