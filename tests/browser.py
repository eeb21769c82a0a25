"""Debian's Chromium under Playwright, launched one way for every browser test.

Never a downloaded browser: ``scripts/test`` installs the ``chromium`` package. The flags keep
Chromium off the network (this machine has none) and headless as root.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_context(tmp_path: Path, **options: Any) -> Iterator[Any]:
    """A fresh-profile browser context; ``options`` go to ``launch_persistent_context``."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    from playwright.sync_api import sync_playwright

    options.setdefault("viewport", {"width": 1280, "height": 900})
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            **options,
        )
        try:
            yield context
        finally:
            context.close()


def first_page(context: Any) -> Any:
    return context.pages[0] if context.pages else context.new_page()
