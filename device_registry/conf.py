"""Device-registry knobs, read from settings when set there, else from the environment."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings


def _num(name: str, default: float) -> float:
    value: Any = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return float(value)


def heartbeat_s() -> float:
    """How often agents send a heartbeat (the server tells them in ``welcome``)."""
    return _num("EDGESLIM_AGENT_HEARTBEAT_S", 15.0)


def online_window_s() -> float:
    """A connected device counts as online while its last recorded heartbeat is this recent.

    Heartbeats are written at most every 30 s per socket and flushed every 5 s, so the window
    must exceed that with room to spare.
    """
    return max(4 * heartbeat_s(), 60.0)


def deployment_timeout_s() -> float:
    """How long a deployment's targets have to end (a ``complete`` or ``failed`` result) before
    they are marked timed out: 24 h by default, so a device that is switched off overnight still
    gets its deployment when it comes back. A deployment may set its own (the API's ``timeout_s``).
    """
    return _num("EDGESLIM_DEPLOYMENT_TIMEOUT_S", 86400.0)


def enrollment_ttl_s() -> float:
    return _num("EDGESLIM_ENROLLMENT_TTL_S", 3600.0)


def agent_rate() -> tuple[float, float]:
    """Per-connection message budget: (messages per second, burst)."""
    return _num("EDGESLIM_AGENT_RATE", 20.0), _num("EDGESLIM_AGENT_BURST", 100.0)


def eval_set_max_samples() -> int:
    """How many test-split images a catalog version's evaluation set holds at most (first N)."""
    return int(_num("EDGESLIM_EVAL_SET_MAX_SAMPLES", 1000))


def public_url() -> str:
    """``EDGESLIM_PUBLIC_URL`` without its trailing slash, or "" when it is not configured."""
    value: Any = getattr(settings, "EDGESLIM_PUBLIC_URL", None)
    if value is None:
        value = os.environ.get("EDGESLIM_PUBLIC_URL", "")
    return str(value or "").strip().rstrip("/")
