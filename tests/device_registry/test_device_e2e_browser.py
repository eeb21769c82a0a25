"""The whole fleet loop in Chromium over HTTPS: register in the browser, enroll a real agent
with the certificate fingerprint the page shows (pinned), run it, upload and deploy an artifact
in the browser, and watch the results arrive live."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest
from agent_process import AgentProcess, enroll
from browser import chromium_context, first_page
from device_onnx import write_eval_set, write_linear_model
from factories import PASSWORD, make_organization, make_user

from edgeslim_agent import __version__ as agent_version

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_register_enroll_deploy_and_watch_live_results(daphne_tls_server, tmp_path):
    user = make_user(username="grace")
    make_organization(name="Fleet Lab", owner=user)
    model = write_linear_model(tmp_path / "linear.onnx")
    eval_set = write_eval_set(tmp_path / "eval.npz", samples=60, wrong=6)
    # Playwright's sync API runs an event loop in this thread, so no ORM from here on: the page
    # and the agent's own output are the witnesses.
    with chromium_context(tmp_path, ignore_https_errors=True) as context:
        _fleet_loop(first_page(context), daphne_tls_server, tmp_path, model, eval_set)


def _fleet_loop(page, server_process, tmp_path, model, eval_set):
    base = server_process.base_url
    assert base.startswith("https://")
    from device_registry.public_url import display_fingerprint
    from device_registry.server_tls import fingerprint_of_pem

    served_cert = display_fingerprint(fingerprint_of_pem(server_process.cert.read_bytes()))

    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "grace")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    # 1. Register a device in the browser; the page shows the code and the exact commands.
    page.goto(f"{base}/devices/register/")
    page.fill("#id_name", "bench-pi")
    page.fill("#id_hardware", "this machine, pretending")
    page.fill("#id_tags", "pi lab")
    page.click("#register-form button[type=submit]")
    code = page.inner_text("#enrollment-code").strip()
    # The steps use the agent's own venv (Raspberry Pi OS refuses a bare pip install); with no
    # EDGESLIM_PUBLIC_URL the page prints the browser's address and warns about it.
    command = shlex.split(page.inner_text("#enroll-command"))
    assert command[:2] == ["~/edgeslim-agent/bin/edgeslim-agent", "enroll"]  # no --insecure-http
    assert command[command.index("--code") + 1] == code
    server = command[command.index("--server") + 1]
    assert server == base
    # the page shows the certificate the server really presents, and the command pins it
    fingerprint = command[command.index("--fingerprint") + 1]
    assert fingerprint == served_cert == page.inner_text("#tls-fingerprint")
    install = page.inner_text("#install-command")
    assert install.startswith("python3 -m venv ~/edgeslim-agent && ~/edgeslim-agent/bin/pip ")
    assert "--require-hashes" in install
    wheel_sha = page.inner_text("#wheel-sha256")
    wheel_url = f"{base}/agent/edgeslim_agent-{agent_version}-py3-none-any.whl"
    assert f"edgeslim-agent @ {wheel_url} --hash=sha256:{wheel_sha}" in install
    wheel = page.request.get(wheel_url)  # the bytes the device's pip would check
    assert wheel.ok and hashlib.sha256(wheel.body()).hexdigest() == wheel_sha
    assert len(page.inner_text("#signing-key-id")) == 16
    assert page.inner_text("#run-command") == "~/edgeslim-agent/bin/edgeslim-agent run"
    assert "EDGESLIM_PUBLIC_URL is not set" in page.inner_text("#public-url-warning")
    assert page.locator("#enroll-qr svg").count() == 1
    page.click('[data-copy-target="enroll-command"]')
    page.wait_for_selector('[data-copy-target="enroll-command"][data-copied="yes"]')

    # 2. Enroll over HTTPS with the pinned fingerprint, and run a real agent on this machine.
    # A wrong fingerprint is refused before anything is sent: the code still works after it.
    state = tmp_path / "agent"
    wrong = "sha256:" + ":".join(["00"] * 32)
    refused = enroll(state, server, code, fingerprint=wrong)
    assert refused.returncode == 2 and "nothing was sent" in refused.stderr, refused.stderr
    done = enroll(state, server, code, fingerprint=fingerprint)
    assert done.returncode == 0, done.stderr
    agent = AgentProcess(state, tmp_path / "agent.log", insecure_http=False).start()
    try:
        page.goto(f"{base}/devices/")
        row = page.locator("#device-table tr", has_text="bench-pi")
        for _ in range(60):
            if row.locator("[data-device-state]").text_content() == "online":
                break
            page.wait_for_timeout(500)
            page.reload()
        assert row.locator("[data-device-state]").text_content() == "online", agent.output()
        assert "CPUExecutionProvider" in row.inner_text()
        assert agent_version in row.inner_text()

        # 3. Upload an artifact with an evaluation set, and deploy it from the browser.
        page.goto(f"{base}/devices/artifacts/")
        page.fill("#id_name", "linear.onnx")
        page.set_input_files("#id_file", str(model))
        page.set_input_files("#id_eval_file", str(eval_set))
        page.click("form.stack button[type=submit]")
        page.click("text=Deploy >> nth=-1")
        page.select_option("#id_target_kind", "device")
        page.select_option("#id_device", label="bench-pi")
        page.fill("#id_batch_sizes", "1, 4")
        page.fill("#id_runs", "30")
        page.fill("#id_warmup", "2")
        page.check("#id_accuracy")
        page.click("#deploy-form button[type=submit]")
        page.wait_for_url("**/devices/deployments/*/")

        # 4. The results arrive live on the open page: rows, chart, accuracy, status.
        page.wait_for_selector("#latency-table tbody tr >> nth=1", timeout=60_000)
        page.wait_for_selector(
            '#target-table [data-target-status]:text("succeeded")', timeout=60_000
        )
        rows = page.locator("#latency-table tbody tr")
        assert rows.count() == 2
        assert "bench-pi" in rows.nth(0).inner_text()
        assert page.inner_text("#target-table [data-target-accuracy]").startswith("90.00 %")
        page.wait_for_selector('#deployment-status:text("finished")', timeout=10_000)
        page.wait_for_selector("#latency-chart .main-svg", timeout=10_000)
        assert page.locator("[data-results-empty]").is_hidden()
        assert "badge-succeeded" in (
            page.get_attribute("#target-table [data-target-status]", "class") or ""
        )
        assert "badge-finished" in (page.get_attribute("#deployment-status", "class") or "")
        shots = Path(os.environ.get("EDGESLIM_SCREENSHOT_DIR") or tmp_path)
        page.screenshot(path=str(shots / "device-deployment-live.png"), full_page=True)

        # The device page shows the same results beside the device's facts.
        page.click("#target-table a")
        page.wait_for_selector("#latency-table tbody tr >> nth=1")
        assert page.text_content("[data-device-state]") == "online"
    finally:
        agent.stop()
    log = agent.output()
    assert "connected to" in log
    assert "received: linear.onnx" in log and "accuracy top-1 90.00 %" in log
