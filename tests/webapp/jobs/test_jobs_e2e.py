"""Done when: the whole flow on the live stack (daphne + a Celery worker + Redis + PostgreSQL).

In Chromium: sign in, upload a small model and a dataset on the catalog pages, launch a
two-stage recipe (finetune 1 epoch + ptq_int8) in the wizard, watch progress arrive live over
the job socket, open the report and download the ONNX. Then the same flow through the REST API
and through ``edgeslim jobs submit``.

The organisations' built-in samples exist beforehand, pending, with no build sent: the one test
worker would otherwise train and inspect six of them before it got to the uploads here. Their
build on the live stack is ``test_wizard_presets_browser.py``'s subject.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user
from jobs_factories import image_zip, lenet5_file

from webapp.accounts.services import api_token_create

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EDGESLIM = str(Path(sys.executable).parent / "edgeslim")
READY_TIMEOUT_MS = 240_000  # the shared worker may be building the built-in samples first
RECIPE_YAML = """\
name: e2e two-stage
eval: {latency_runs: 5, warmup: 1, threads: 1}
stages:
  - method: finetune
    config: {epochs: 1, batch_size: 8}
  - method: ptq_int8
    config: {calibration_samples: 8}
"""


def _builtins_without_builds(org, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The organisation's built-in rows, made as the catalog pages make them but with no build
    sent to the worker (so the pages find them and send nothing either)."""
    from webapp.catalog.services import builtin_samples

    with monkeypatch.context() as patch:
        patch.setattr(builtin_samples, "_enqueue", lambda task, pk: None)
        builtin_samples.builtin_samples_ensure(organization=org)


@pytest.fixture
def browser_page(tmp_path):  # type: ignore[no-untyped-def]
    with chromium_context(
        tmp_path, viewport={"width": 1280, "height": 900}, accept_downloads=True
    ) as context:
        yield first_page(context)


def _upload(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    page.set_input_files("[data-upload-input]", str(path))
    with page.expect_navigation(timeout=60_000):
        page.click("[data-upload-submit]")
    page.wait_for_selector('#item-body[data-item-status="ready"]', timeout=READY_TIMEOUT_MS)


@pytest.mark.browser
def test_a_new_user_uploads_launches_in_the_wizard_watches_live_and_downloads_the_onnx(
    edgeslim_stack, tmp_path, request, monkeypatch
):
    import onnx

    user = make_user(username="hedy")
    _builtins_without_builds(make_organization(name="Jobs Lab", owner=user), monkeypatch)
    model_file = lenet5_file(tmp_path / "tiny lenet.safetensors")
    zip_file = image_zip(tmp_path / "pets.zip")
    page = request.getfixturevalue("browser_page")  # after the rows: the ORM can't run beside it
    base = edgeslim_stack.base_url

    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "hedy")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/models/")
    page.select_option("select[name=arch]", "lenet5")
    page.fill("input[name=name]", "Tiny LeNet")
    _upload(page, model_file)
    model_id = page.url.rstrip("/").split("/")[-1]
    page.goto(f"{base}/datasets/")
    _upload(page, zip_file)
    dataset_id = page.url.rstrip("/").split("/")[-1]

    started = time.monotonic()
    page.goto(f"{base}/jobs/new/")
    page.select_option("select[name=model_version]", model_id)
    page.select_option("select[name=dataset]", dataset_id)
    page.click("[data-wizard-next]")
    page.check("input[name=goal][value=custom]")
    page.select_option("select[name=stage_0]", "finetune")
    page.select_option("select[name=stage_1]", "ptq_int8")
    page.click("[data-wizard-next]")
    assert "passes over the training set" in page.content()  # generated from the registry
    page.fill("input[name=s0-epochs]", "1")
    page.fill("input[name=s0-batch_size]", "8")
    page.fill("input[name=s1-calibration_samples]", "8")
    page.click("[data-wizard-next]")
    page.fill("input[name=name]", "browser job")
    page.fill("input[name=max_accuracy_drop]", "100")
    page.click("[data-wizard-next]")
    yaml_text = page.input_value("textarea[name=recipe_yaml]")
    assert "method: finetune" in yaml_text and "method: ptq_int8" in yaml_text
    # Keep the latency measurement short on this shared 2-core machine.
    page.fill(
        "textarea[name=recipe_yaml]", yaml_text.replace("latency_runs: 50", "latency_runs: 5")
    )
    page.click("[data-wizard-next]")
    page.wait_for_url("**/jobs/*/")
    job_id = int(page.url.rstrip("/").split("/")[-1])

    # Progress arrives live over the socket: events are applied after the page rendered.
    page.wait_for_function("window.edgeslimJob && window.edgeslimJob.received > 0", timeout=120_000)
    page.wait_for_selector("[data-job-status]:text('SUCCEEDED')", timeout=180_000)
    assert page.evaluate("window.edgeslimJob.received") >= 3
    assert page.get_attribute("[data-job-progress]", "aria-valuenow") == "100"
    assert page.locator("[data-stage].stage-done").count() == 2
    assert page.locator("#job-curves .main-svg").count() > 0  # the training curve was drawn
    launch_to_done = time.monotonic() - started

    page.click("[data-report-link]")
    page.wait_for_url(f"**/reports/jobs/{job_id}/")
    assert page.locator("[data-report-table] tbody tr").count() == 4
    page.wait_for_selector("#chart-size .main-svg")
    with page.expect_download() as info:
        page.click("[data-artifact=onnx_int8]")
    target = tmp_path / "model.int8.onnx"
    info.value.save_as(target)
    onnx.checker.check_model(onnx.load(str(target)))
    assert launch_to_done < 180


def _api(base: str, token: str, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return (
            json.loads(resp.read())
            if "json" in resp.headers.get("Content-Type", "")
            else resp.read()
        )


def test_the_same_flow_through_the_api_and_the_cli(edgeslim_stack, tmp_path, monkeypatch):
    from webapp.cli.jobs import Client

    user = make_user(username="katherine")
    _builtins_without_builds(make_organization(name="API Lab", owner=user), monkeypatch)
    _, token = api_token_create(user=user, name="e2e")
    base = edgeslim_stack.base_url
    client = Client(base, token)

    # API: upload, wait until ready, create, follow, report, download.
    mv = client.upload(
        "/api/v1/models/", lenet5_file(tmp_path / "m.safetensors"), {"arch": "lenet5"}
    )
    ds = client.upload("/api/v1/datasets/", image_zip(tmp_path / "d.zip"), {"name": "pets"})
    deadline = time.monotonic() + READY_TIMEOUT_MS / 1000
    while not all(
        client.get(u)["status"] == "ready"
        for u in (f"/api/v1/models/{mv['id']}/", f"/api/v1/datasets/{ds['id']}/")
    ):
        assert time.monotonic() < deadline, "uploads never became ready"
        time.sleep(0.5)
    bad = None
    try:
        client.post(
            "/api/v1/jobs/",
            {
                "model_version": mv["id"],
                "dataset": ds["id"],
                "recipe": {"stages": [{"method": "finetune", "config": {"epochs": 0}}]},
            },
        )
    except Exception as exc:  # ApiError
        bad = exc
    assert (
        bad is not None
        and bad.status == 400
        and bad.body["field"] == "recipe.stages[0].config.epochs"
    )
    job = client.post(
        "/api/v1/jobs/", {"model_version": mv["id"], "dataset": ds["id"], "recipe": RECIPE_YAML}
    )
    deadline = time.monotonic() + 180
    while (job := client.get(f"/api/v1/jobs/{job['id']}/"))["status"] not in (
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job["status"] == "SUCCEEDED", job["error"]
    report = client.get(f"/api/v1/jobs/{job['id']}/report/")
    assert [s["method"] for s in report["stages"]] == ["finetune", "ptq_int8"]
    size = client.download(f"/api/v1/jobs/{job['id']}/artifacts/onnx/", tmp_path / "api.onnx")
    assert size == (tmp_path / "api.onnx").stat().st_size > 1000

    # CLI: upload both again, submit the same recipe, follow it, download the results.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE_YAML)
    out = tmp_path / "cli-results"
    env = {**os.environ, "EDGESLIM_TOKEN": token}
    proc = subprocess.run(
        [EDGESLIM, "jobs", "submit", str(recipe), "--server", base,
         "--upload-model", str(tmp_path / "m.safetensors"), "--arch", "lenet5",
         "--upload-dataset", str(tmp_path / "d.zip"), "--download", str(out)],
        capture_output=True, text=True, timeout=400, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_job = int(proc.stdout.strip().splitlines()[-1])
    assert "succeeded" in proc.stderr
    assert {p.name for p in out.iterdir()} >= {
        "final.onnx",
        "final.int8.onnx",
        "report.json",
        "recipe.yaml",
    }
    status = subprocess.run(
        [EDGESLIM, "jobs", "status", str(cli_job), "--server", base],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    refused = subprocess.run(
        [EDGESLIM, "jobs", "submit", str(tmp_path / "nope.yaml"),
         "--server", base, "--model", "1", "--dataset", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode == 2
