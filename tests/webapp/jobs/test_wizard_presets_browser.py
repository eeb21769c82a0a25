"""Every goal preset, run for real: in Chromium, on the live stack (daphne + a Celery worker), a
user takes the wizard through each preset on the built-in LeNet-5 and on a LeNet-5 they upload
through the page, with the built-in digits, lowers each stage's epochs to one in the parameters
step (methods and importance stay as the preset chose), launches, and sees every job succeed
and its report open.

The digits (1,169 training and 359 test images, at the model's 32x32) rather than MNIST 5k
(3,500 and 1,000): the presets do not depend on the data set, and every training epoch and
evaluation of the six jobs costs a third as much.

The larger built-ins (ResNet-20, VGG-11-BN) take minutes a run; ``scripts/first_hour`` runs
every preset on them from ``edgeslim up``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user
from jobs_factories import lenet5_file

from webapp.jobs.presets import PRESETS

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

GOALS = [key for key in PRESETS if key != "custom"]
READY_TIMEOUT_MS = 300_000  # the worker trains the three built-ins first
JOB_TIMEOUT_MS = 300_000
EPOCH_FIELD = re.compile(r"s\d+-(epochs|finetune_epochs|sparsity_epochs)")

# The value of the first <option> of a <select> whose text holds a phrase ("" when none).
OPTION_VALUE = """([name, phrase]) => {
  const option = [...document.querySelectorAll(`select[name=${name}] option`)]
    .find(o => o.textContent.includes(phrase));
  return option ? option.value : "";
}"""


def _option(page: Any, name: str, phrase: str) -> str:
    return str(page.evaluate(OPTION_VALUE, [name, phrase]))


def _pick_when_ready(page: Any, base: str, model: str, dataset: str) -> None:
    """Step 1 lists ready items only: reload it, as a user would, until both are offered."""
    for _ in range(int(READY_TIMEOUT_MS / 3000)):
        page.goto(f"{base}/jobs/new/")
        model_id = _option(page, "model_version", model)
        dataset_id = _option(page, "dataset", dataset)
        if model_id and dataset_id:
            page.select_option("select[name=model_version]", model_id)
            page.select_option("select[name=dataset]", dataset_id)
            page.click("[data-wizard-next]")
            page.wait_for_url("**/jobs/new/goal/")
            return
        page.wait_for_timeout(3000)
    pytest.fail(f"{model!r} or {dataset!r} never became ready")


def _launch(page: Any, base: str, *, model: str, goal: str) -> tuple[int, list[str]]:
    """Take the wizard through ``goal`` with every epoch count lowered to one; return the job's
    id and the stage methods the preset chose."""
    _pick_when_ready(page, base, model, "Digits")
    page.check(f"input[name=goal][value={goal}]")
    page.click("[data-wizard-next]")
    page.wait_for_url("**/jobs/new/params/")
    methods = page.eval_on_selector_all(
        "fieldset[data-method]", "els => els.map(e => e.dataset.method)"
    )
    for name in page.eval_on_selector_all("input[name]", "els => els.map(e => e.name)"):
        if EPOCH_FIELD.fullmatch(name) and int(page.input_value(f"input[name={name}]")) > 1:
            page.fill(f"input[name={name}]", "1")
    page.click("[data-wizard-next]")
    page.wait_for_url("**/jobs/new/targets/")
    page.fill("input[name=name]", f"{goal} on {model}")
    page.click("[data-wizard-next]")
    page.wait_for_url("**/jobs/new/review/")
    assert page.locator("[data-recipe-error]").count() == 0, page.inner_text("main")
    page.click("[data-wizard-next]")
    page.wait_for_url(re.compile(r".*/jobs/\d+/$"))
    return int(page.url.rstrip("/").split("/")[-1]), methods


def test_every_goal_preset_succeeds_on_the_built_in_and_an_uploaded_lenet5(
    edgeslim_stack, tmp_path
):
    user = make_user(username="ada")
    make_organization(name="Preset Lab", owner=user)
    model_file = lenet5_file(tmp_path / "my lenet.safetensors", num_classes=10, in_channels=1)
    with chromium_context(tmp_path) as context:  # after the rows: the ORM can't run beside it
        page = first_page(context)
        base = edgeslim_stack.base_url
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "ada")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")

        # The models page makes the built-ins; the upload then waits behind their training.
        page.goto(f"{base}/models/")
        page.select_option("select[name=arch]", "lenet5")
        page.fill("input[name=name]", "My LeNet")
        page.set_input_files("[data-upload-input]", str(model_file))
        with page.expect_navigation(timeout=60_000):
            page.click("[data-upload-submit]")
        page.wait_for_selector('#item-body[data-item-status="ready"]', timeout=READY_TIMEOUT_MS)

        launched: list[tuple[str, str, int, list[str]]] = []
        for model in ("LeNet-5 (built-in)", "My LeNet"):
            for goal in GOALS:
                job_id, methods = _launch(page, base, model=model, goal=goal)
                launched.append((model, goal, job_id, methods))

        for model, goal, job_id, methods in launched:
            assert methods and "channel_pruning" in methods, (model, goal, methods)
            page.goto(f"{base}/jobs/{job_id}/")
            page.wait_for_selector(
                '[data-job-status="SUCCEEDED"], [data-job-status="FAILED"]',
                timeout=JOB_TIMEOUT_MS,
            )
            status = page.get_attribute("[data-job-status]", "data-job-status")
            reason = (
                page.inner_text("[data-job-error-reason]")
                if page.locator("[data-job-error-reason]").count()
                else ""
            )
            assert status == "SUCCEEDED", f"{goal} on {model} (job {job_id}): {status} {reason}"
            assert page.inner_text("[data-job-status]") == "Succeeded"
            page.click("[data-report-link]")
            page.wait_for_url(f"**/reports/jobs/{job_id}/")
            rows = page.locator("[data-report-table] tbody tr")
            assert rows.count() == len(methods) + 2, (model, goal)  # baseline, stages, final
