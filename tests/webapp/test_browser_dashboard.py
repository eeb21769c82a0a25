"""The whole stack in Chromium: daphne + a Celery worker + Redis + PostgreSQL, driven by Playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser_page(tmp_path):
    """A Chromium page (Debian's package, never a downloaded browser), fresh profile."""
    with chromium_context(tmp_path, viewport={"width": 1280, "height": 800}) as context:
        yield first_page(context)


def test_sign_in_browse_sections_and_see_a_test_event_arrive_live(
    edgeslim_stack, tmp_path, request
):
    user = make_user(username="ada")
    org = make_organization(name="Edge Lab", owner=user)
    # Playwright's sync API runs an event loop in this thread; Django's ORM would refuse to run
    # beside it, so every row is created above, before the browser starts.
    page = request.getfixturevalue("browser_page")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    base = edgeslim_stack.base_url

    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.locator("h1").inner_text() == "Edge Lab"

    for section in ["Models", "Devices", "Reports"]:
        page.click(f"nav >> text={section}")
        page.wait_for_url(f"{base}/{section.lower()}/")
        assert page.locator('nav a[aria-current="page"]').inner_text() == section
        assert "edge lab" in page.locator("main").inner_text().lower()

    page.click("a.brand")
    page.wait_for_url(f"{base}/")
    page.wait_for_selector('[data-live-status="live"]', timeout=20_000)
    from webapp.live.tasks import org_ping

    # The dashboard has no developer button any more; a worker task sends the message instead.
    org_ping.delay(org.pk, "Test event from ada")
    try:
        # Generous: one solo worker may first finish tasks queued by the signup (inspections).
        event = page.wait_for_selector('#live-events li[data-kind="ping"]', timeout=150_000)
    except PlaywrightTimeout:
        pytest.fail(
            "the test event never reached the page\n--- worker log ---\n"
            + edgeslim_stack.worker_log.read_text()[-3000:]
            + "\n--- server log ---\n"
            + edgeslim_stack.server_log.read_text()[-3000:]
        )
    assert "Test event from ada" in event.inner_text()

    shots = Path(os.environ.get("EDGESLIM_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
    assert (shots / "dashboard.png").stat().st_size > 10_000
    assert org.pk
