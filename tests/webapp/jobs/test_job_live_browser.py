"""The live job page in Chromium, on the live stack (daphne + a Celery worker), for each state a
job goes through: queued (position, no estimate), running (baseline apart, stage 1 running,
later stages pending, the bar moving, the chart's integer epochs and stage markers), succeeded
(downloads and the report link appear without a reload, no Cancel), failed (the stage marked
failed, the reason first, the traceback behind "details") and cancelled (Cancel asks first).

Jobs are LeNet-5 on the built-in digits with tiny recipes. A job is created with its enqueue
held back, so the page is open before the worker takes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user
from jobs_factories import make_digits, make_model_version

from webapp.jobs import services
from webapp.jobs.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 120_000
QUICK_EVAL = {"latency_runs": 3, "warmup": 1, "threads": 1, "rounds": 1}


@dataclass
class Live:
    base: str
    launch: Callable[[dict[str, Any]], Job]
    start: Callable[[Job], None]
    browse: Callable[[], Any]
    page: Any = None

    def open(self, job: Job) -> None:
        """Sign in (Chromium starts here: rows are made before, as Playwright's loop then runs
        in this thread) and open the job's page."""
        if self.page is None:
            self.page = self.browse()
        self.page.goto(f"{self.base}/jobs/{job.pk}/")
        self.page.evaluate("window.__samePage = true")  # gone if the page ever reloads

    def stage(self, selector: str, status: str) -> None:
        self.page.wait_for_selector(f'{selector}[data-stage-status="{status}"]', timeout=TIMEOUT_MS)

    def still_same_page(self) -> bool:
        return bool(self.page.evaluate("window.__samePage === true"))


@pytest.fixture
def live(edgeslim_stack, tmp_path, monkeypatch) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    # The cancel test reads a row while Playwright's loop runs in this thread.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user = make_user()
    org = make_organization(owner=user)
    model_version, dataset = make_model_version(org), make_digits(org)
    send = services._enqueue
    monkeypatch.setattr(services, "_enqueue", lambda job: None)  # held until start()

    def launch(recipe: dict[str, Any]) -> Job:
        return services.job_create(
            organization=org,
            user=user,
            model_version=model_version,
            dataset=dataset,
            recipe=recipe,
            queue="cpu",
        )

    base = edgeslim_stack.base_url
    with ExitStack() as stack:

        def browse() -> Any:
            context = stack.enter_context(
                chromium_context(tmp_path, viewport={"width": 1280, "height": 1000})
            )
            page = first_page(context)
            page.goto(f"{base}/accounts/login/")
            page.fill("#id_username", user.username)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            return page

        yield Live(base=base, launch=launch, start=send, browse=browse)


def _recipe(*stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": "live page", "seed": 0, "eval": QUICK_EVAL, "stages": list(stages)}


FINETUNE_1 = {"method": "finetune", "config": {"epochs": 1, "batch_size": 256}}
PTQ = {"method": "ptq_int8", "config": {"calibration_samples": 8}}


def test_a_succeeded_job_shows_downloads_and_the_report_link_without_a_reload(live):
    job = live.launch(_recipe(FINETUNE_1, PTQ))
    live.open(job)
    page = live.page
    # Queued: its place in the queue and no estimate (no finished job with these stages yet).
    assert page.inner_text("[data-job-status]") == "Queued"
    assert page.inner_text("[data-queue-position]").startswith("#")
    assert "no estimate yet" in page.inner_text("[data-job-timing]")
    assert page.is_hidden("[data-artifacts]") and page.locator("[data-report-link]").count() == 0

    live.start(job)
    page.wait_for_selector('[data-job-status="SUCCEEDED"]', timeout=TIMEOUT_MS)
    page.wait_for_selector('[data-artifact="onnx_int8"]', timeout=10_000)
    assert live.still_same_page()
    assert page.is_visible("[data-artifacts]") and page.is_visible('[data-artifact="onnx"]')
    assert page.is_visible("[data-report-link]")
    assert page.locator("[data-cancel-form]").count() == 0
    assert page.get_attribute("[data-job-progress]", "aria-valuenow") == "100"
    assert page.get_attribute("[data-baseline]", "data-stage-status") == "done"
    assert [page.get_attribute(f'[data-stage="{i}"]', "data-stage-status") for i in (0, 1)] == [
        "done",
        "done",
    ]
    stage_text = page.inner_text('[data-stage="1"]')
    assert re.search(r"Test accuracy\s+\d+\.\d %", stage_text), stage_text
    assert re.search(r"ONNX\s+[\d.]+ (KB|MB|bytes)", stage_text), stage_text
    shown = page.inner_text("main")
    assert "onnx_bytes" not in shown and "stage_fraction" not in shown
    assert "took" in page.inner_text("[data-job-timing]")


def test_a_running_job_shows_the_baseline_apart_and_cancel_asks_first(live):
    # Far more epochs than the test lasts (each takes tens of milliseconds even on an idle
    # machine): the job is still running whenever the page is read, and is cancelled below.
    # The bar shows whole percents and an epoch of 1000 moves it 0.04 %, so "past the
    # baseline's 5 %" waits for 13 epochs: batches of 256 make those ~1.8x cheaper than 64
    # (the wait is the worker's CPU, which a loaded machine stretches to minutes).
    long_finetune = {"method": "finetune", "config": {"epochs": 1000, "batch_size": 256}}
    job = live.launch(_recipe(long_finetune, PTQ))
    live.open(job)
    page = live.page
    live.start(job)

    live.stage("[data-baseline]", "done")
    live.stage('[data-stage="0"]', "running")
    assert page.get_attribute('[data-stage="1"]', "data-stage-status") == "pending"
    baseline = page.inner_text("[data-baseline]")
    assert re.search(r"Test accuracy\s+\d+\.\d %", baseline) and "MACs" in baseline
    assert page.inner_text('[data-stage="0"] [data-stage-metrics]').strip() == ""

    # Epochs arrive: the bar moves past the baseline's 5 %, and the chart counts whole epochs.
    page.wait_for_function(
        "document.querySelectorAll('#job-curves .xtick text').length >= 2", timeout=TIMEOUT_MS
    )
    page.wait_for_function(
        "+document.querySelector('[data-job-progress]').getAttribute('aria-valuenow') > 5",
        timeout=TIMEOUT_MS,
    )
    ticks = page.eval_on_selector_all(
        "#job-curves .xtick text", "els => els.map(e => e.textContent)"
    )
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    assert "stage 1 finetune" in page.inner_text("#job-curves")
    assert page.inner_text("[data-job-status]") == "Running"
    assert page.inner_text("[data-elapsed]").endswith("s")

    # Cancel asks first; saying no leaves the job running.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("[data-cancel-button]")
    page.wait_for_timeout(500)
    assert Job.objects.get(pk=job.pk).cancel_requested is False
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("[data-cancel-button]")
    page.wait_for_selector('[data-job-status="CANCELLED"]', timeout=TIMEOUT_MS)
    assert messages and messages[0].startswith(f"Cancel job #{job.pk}?")
    live.stage('[data-stage="0"]', "cancelled")
    assert page.inner_text('[data-stage="1"] [data-stage-state]') == "not run"
    assert page.locator("[data-cancel-form]").count() == 0
    assert page.locator("[data-report-link]").count() == 0
    assert page.is_visible("[data-job-cancelled]")


def test_a_failed_job_marks_its_stage_failed_with_the_reason_first_and_the_traceback_hidden(live):
    # LeNet-5 cannot shrink its MACs 100x with every layer capped at 10 % removed: stage 1 fails.
    impossible = {
        "method": "channel_pruning",
        "config": {
            "importance": "l1",
            "target_mac_reduction": 100.0,
            "max_layer_ratio": 0.1,
            "finetune_epochs": 0,
        },
    }
    job = live.launch(_recipe(impossible, PTQ))
    live.open(job)
    page = live.page
    live.start(job)
    page.wait_for_selector('[data-job-status="FAILED"]', timeout=TIMEOUT_MS)
    live.stage('[data-stage="0"]', "failed")
    assert live.still_same_page()
    assert page.inner_text('[data-stage="1"] [data-stage-state]') == "not run"
    assert page.get_attribute("[data-baseline]", "data-stage-status") == "done"
    reason = page.inner_text("[data-job-error-reason]")
    assert "MAC" in reason and "Traceback" not in reason
    details = page.locator("[data-job-error-details]")
    assert details.count() == 1 and details.get_attribute("open") is None
    assert not page.is_visible("[data-job-error-details] pre")  # folded away until asked for
    assert "Traceback" not in page.inner_text("[data-log-tail]")
    page.click("[data-job-error-details] summary")
    assert "Traceback (most recent call last)" in page.inner_text("[data-job-error-details] pre")
    assert page.locator("[data-cancel-form]").count() == 0
    assert page.locator("[data-report-link]").count() == 0
