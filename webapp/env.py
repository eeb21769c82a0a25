"""Tiny typed helpers for reading settings from the environment (after healthchecks)."""

from __future__ import annotations

import os
from pathlib import Path


def env(name: str, default: str = "") -> str:
    """Read ``name``, or the contents of the file named by ``name_FILE`` (for secrets)."""
    file_var = os.environ.get(f"{name}_FILE")
    if file_var:
        return Path(file_var).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool = False) -> bool:
    value = env(name, "")
    if not value:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    value = env(name, "")
    return int(value) if value else default


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]
