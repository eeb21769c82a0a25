"""Fixtures of the device registry tests (this folder is on sys.path for its helper modules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium_context, first_page


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[Any]:
    """A page in Debian's Chromium (never a downloaded browser), with a fresh profile."""
    with chromium_context(tmp_path, viewport={"width": 1280, "height": 900}) as context:
        yield first_page(context)
