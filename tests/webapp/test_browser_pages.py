"""Pages in Chromium: the API console runs from the studio alone and works with the session,
and wide tables scroll inside their box on a phone instead of widening the page."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import chromium_context, first_page
from factories import client_for, make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs.models import Job, JobStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _metrics(acc: float, p50: float) -> dict[str, Any]:
    return {
        "accuracy": acc,
        "val_accuracy": acc + 0.5,
        "eval_split": "test",
        "test_images": 360,
        "params": 61706,
        "nonzero_params": 61706,
        "macs": 416520,
        "onnx_bytes": 250_000,
        "onnx_zip_bytes": 230_000,
        "format": "onnx",
        "latency": {"p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "iqr_ms": 0.01, "rounds": 5},
    }


def _signed_in_cookie(live_server: Any) -> tuple[dict[str, Any], Job]:
    """A user with one finished job; the session cookie for Playwright (rows made first: the
    ORM refuses to run beside Playwright's event loop)."""
    user = make_user(username="grace")
    org = make_organization(name="Console Lab", owner=user)
    job = Job.objects.create(
        organization=org,
        name="lenet5-slim",
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        status=JobStatus.SUCCEEDED,
        report={
            "baseline": _metrics(97.25, 1.234),
            "stages": [{"index": 0, "method": "channel_pruning", "metrics": _metrics(96.5, 0.6)}],
            "final": _metrics(96.25, 0.42),
            "targets": {"max_accuracy_drop": 1.0, "accuracy_drop": 1.0, "met": True},
        },
        created_by=user,
    )
    session = client_for(user).cookies["sessionid"].value
    cookie = {"name": "sessionid", "value": session, "url": live_server.url}
    return cookie, job


def test_the_api_console_loads_from_the_studio_alone_and_calls_the_api_with_the_session(
    live_server, tmp_path
):
    cookie, _job = _signed_in_cookie(live_server)
    with chromium_context(tmp_path, viewport={"width": 1280, "height": 800}) as context:
        context.add_cookies([cookie])
        page = first_page(context)
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(urlsplit(request.url).hostname or ""))

        logs: list[str] = []
        page.on("console", lambda msg: logs.append(msg.text))
        page.goto(f"{live_server.url}/api/docs/")
        try:
            page.wait_for_selector("#api-console .opblock", timeout=60_000)
        except Exception as exc:  # say what the browser said
            raise AssertionError(f"the console never rendered; browser console: {logs}") from exc
        me = page.locator(".opblock-get", has=page.locator('[data-path="/api/v1/me/"]')).first
        me.locator(".opblock-summary").click()
        me.locator("button.try-out__btn").click()
        me.locator("button.execute").click()
        body = me.locator(".responses-wrapper .live-responses-table .response-col_description pre")
        body.first.wait_for(timeout=15_000)

        assert '"username": "grace"' in body.first.inner_text()
        # Every request (scripts, styles, fonts, the schema, the call) went to the studio itself.
        assert hosts == {urlsplit(live_server.url).hostname}, hosts
        assert hosts <= {"127.0.0.1", "localhost"}


def test_the_report_table_scrolls_inside_its_box_on_a_phone(live_server, tmp_path):
    cookie, job = _signed_in_cookie(live_server)
    with chromium_context(tmp_path, viewport={"width": 390, "height": 844}) as context:
        context.add_cookies([cookie])
        page = first_page(context)
        page.goto(f"{live_server.url}/reports/jobs/{job.pk}/")
        page.wait_for_selector("[data-report-table]")
        box = page.evaluate(
            """() => {
              const table = document.querySelector("[data-report-table]");
              const box = table.closest(".table-scroll, .table-wrap");
              const style = getComputedStyle(box);
              return {scroll: box.scrollWidth, client: box.clientWidth, overflow: style.overflowX};
            }"""
        )
        page_width = page.evaluate("() => document.documentElement.scrollWidth")
        wide = page.evaluate(
            """() => [...document.querySelectorAll("body *")]
              .filter((el) => el.getBoundingClientRect().right > 392
                && !el.closest(".table-scroll, .table-wrap, .js-plotly-plot"))
              .slice(0, 8).map((el) => el.tagName + "." + el.className + " " + el.outerHTML.slice(0, 120))"""
        )

        assert box["overflow"] == "auto"
        assert box["scroll"] > box["client"]  # the table is wider than the phone: it scrolls
        assert page_width <= 390, wide  # and the page itself does not
