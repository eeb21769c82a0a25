"""Cancelling a deployment in Chromium: the button asks first (dismissed: nothing happens), then
the deployment and its unfinished devices show cancelled while the finished one keeps its state;
an expired deployment shows its timed-out device and no button."""

from __future__ import annotations

from datetime import timedelta

import pytest
from device_factories import artifact, enrolled_device
from django.utils import timezone
from factories import PASSWORD, make_member

from device_registry import services
from device_registry.models import Deployment
from edgeslim_agent.protocol import BenchSettings, Result
from webapp.accounts.models import Role

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _text(page, selector: str) -> str:
    """An element's text as written (badges are upper-cased by CSS only)."""
    return str(page.text_content(selector)).strip()


def test_cancel_asks_first_then_shows_cancelled_and_an_expired_one_its_timed_out_device(
    daphne_server, tmp_path, request
):
    pi, _ = enrolled_device(name="pi", tags=["lab"])
    org = pi.organization
    enrolled_device(org, name="jetson", tags=["lab"])
    make_member(org, role=Role.ENGINEER, username="ada")
    art = artifact(org, tmp_path)

    def deploy():
        return services.deployment_create(
            organization=org, artifact=art, target_kind="tag", target_value="lab",
            settings=BenchSettings(warmup=1, runs=5),
        )  # fmt: skip

    dep, old = deploy(), deploy()
    for seq, kind in ((1, "latency"), (3, "complete")):  # pi finished the first one
        services.deployment_result_store(
            device_id=pi.pk,
            result=Result(deployment_id=dep.pk, seq=seq, kind=kind, data={"p50_ms": 1.0}),
        )
    Deployment.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    # Playwright's sync API runs an event loop in this thread: no ORM from here on.
    page = request.getfixturevalue("chromium_page")
    base = daphne_server.base_url
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/devices/deployments/{dep.pk}/")
    assert _text(page, "#deployment-status") == "running"
    assert "Deadline" in page.inner_text("#deployment-deadline")
    dialogs: list[str] = []

    def dismiss(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("#cancel-deployment")
    assert dialogs and dialogs[0].startswith(f"Cancel deployment #{dep.pk}?")
    page.reload()
    assert _text(page, "#deployment-status") == "running"  # dismissed: nothing changed

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-deployment")
    page.wait_for_selector("#deployment-status.badge-cancelled")
    rows = {
        row.query_selector("td").text_content().strip(): row.text_content()
        for row in page.query_selector_all("#target-table tbody tr")
    }
    assert "succeeded" in rows["pi"] and "cancelled" in rows["jetson"]
    assert page.locator("#cancel-deployment").count() == 0
    assert "Cancelled" in page.inner_text("#deployment-deadline")
    assert "by ada" in page.inner_text("#deployment-deadline")

    # The older deployment's deadline passed an hour ago: the page applies it when read.
    page.goto(f"{base}/devices/deployments/{old.pk}/")
    assert _text(page, "#deployment-status") == "expired"
    badges = [b.text_content() for b in page.query_selector_all("[data-target-status]")]
    assert badges == ["timed out", "timed out"]
    assert page.locator("#cancel-deployment").count() == 0
    page.goto(f"{base}/devices/deployments/")
    statuses = {
        row.get_attribute("data-deployment-id"): row.query_selector(
            "[data-deployment-status]"
        ).text_content()
        for row in page.query_selector_all("[data-deployment-table] tbody tr")
    }
    assert statuses == {str(dep.pk): "cancelled", str(old.pk): "expired"}
