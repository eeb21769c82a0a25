"""Accounts in Chromium: invite a teammate by link, who signs up, changes the password, and makes
and revokes an API token. Driven by Playwright against daphne on the test database."""

from __future__ import annotations

import re
import urllib.request

import pytest
from browser import chromium_context, first_page
from factories import PASSWORD, make_organization, make_user

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NEW_PASSWORD = "another-long-passphrase-77"


def _sign_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/")


def _status(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_invite_sign_up_change_password_and_make_and_revoke_a_token(daphne_server, tmp_path):
    admin = make_user(username="ada")
    make_organization(name="Edge Lab", owner=admin)
    # Rows first: Django's ORM refuses to run beside Playwright's event loop in this thread.
    base = daphne_server.base_url

    with chromium_context(tmp_path) as context:
        page = first_page(context)
        _sign_in(page, base, "ada", PASSWORD)
        page.click(".user-menu summary")
        page.click("text=Organisation settings")
        page.fill("#invitations input[name=email]", "grace@example.com")
        page.select_option("#invitations select[name=role]", "manager")
        page.click("#invitations button[type=submit]")
        flash = page.locator(".flash-success").inner_text()
        link = re.search(r"(http://\S+/accounts/invitations/[\w-]+/)", flash)
        assert link, flash
        assert "grace@example.com" in page.locator("#invitation-table").inner_text()

    with chromium_context(tmp_path) as context:
        page = first_page(context)
        page.goto(link.group(1))
        assert "Join Edge Lab" in page.locator("h1").inner_text()
        page.fill("#id_username", "grace")
        page.fill("#id_password1", "short")
        page.fill("#id_password2", "short")
        page.click("main button[type=submit]")
        assert "too short" in page.locator("#id_password1-errors").inner_text()
        page.fill("#id_password1", PASSWORD)
        page.fill("#id_password2", PASSWORD)
        page.click("main button[type=submit]")
        page.wait_for_url(f"{base}/")
        assert "Welcome to Edge Lab" in page.locator(".messages").inner_text()
        assert "manager" in page.locator(".user-menu summary").inner_text().lower()

        page.click(".user-menu summary")
        page.click("text=Password and API tokens")
        page.fill("#id_old_password", PASSWORD)
        page.fill("#id_new_password1", NEW_PASSWORD)
        page.fill("#id_new_password2", NEW_PASSWORD)
        page.click("main form button[type=submit]")
        page.wait_for_url(f"{base}/")
        assert "password was changed" in page.locator(".messages").inner_text()

        page.goto(f"{base}/accounts/tokens/")
        page.fill("#id_name", "CI on the lab server")
        page.select_option("#id_expires_in", "30")
        page.click("main form[action$='/tokens/'] button[type=submit]")
        key = page.locator("#new-token").inner_text().strip()
        assert key.startswith("es_")
        assert _status(f"{base}/api/v1/me/", key) == 200
        row = page.locator("#token-table tbody tr", has_text="CI on the lab server")
        assert key[:10] in row.inner_text()
        page.on("dialog", lambda dialog: dialog.accept())
        row.locator("button", has_text="Revoke").click()
        page.wait_for_selector("text=was revoked")
        assert page.locator("#token-table").count() == 0
        assert _status(f"{base}/api/v1/me/", key) == 401

    with chromium_context(tmp_path) as context:
        page = first_page(context)
        _sign_in(page, base, "grace", NEW_PASSWORD)
