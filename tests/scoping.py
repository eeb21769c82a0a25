"""Checks that another organisation's objects stay invisible (RELIABILITY item 27).

Later apps reuse these: give each URL of an org-scoped object of organisation B, and a client
signed in to organisation A.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.test import Client


def assert_other_org_gets_404(
    client: Client, urls: Iterable[str], *, methods: Iterable[str] = ("get", "post")
) -> None:
    """Every method on every URL answers 404, so the object's existence isn't revealed."""
    for url in urls:
        for method in methods:
            response = getattr(client, method)(url)
            assert response.status_code == 404, (
                f"{method.upper()} {url} answered {response.status_code}, expected 404"
            )
