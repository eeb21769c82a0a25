"""Failed-login throttling shared by the login page and the token endpoint.

Failures are counted in the cache (Redis) per (normalised username, client address) pair, so
one person's typos lock out only that username from that address, and per address with a looser
cap against spraying many usernames from one place. Each window starts at its first failure and
its end is stored beside the count, so the refusal names the real remaining wait. Unknown
usernames count like known ones, so the answers never tell which usernames exist.
"""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest


def _normalise_username(username: str) -> str:
    return unicodedata.normalize("NFKC", username or "").strip().casefold()


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: behind a trusted proxy webapp.proxy has already set it from
    # X-Forwarded-For; anyone else's X-Forwarded-For is client-controlled.
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _counters(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    """(cache key, limit) of each counter that one attempt touches: the pair, then the address."""
    ip = _digest(client_ip(request))
    pair = _digest(f"{_normalise_username(username)}\0{client_ip(request)}")
    return [
        (f"login-fail:pair:{pair}", settings.LOGIN_THROTTLE_ATTEMPTS),
        (f"login-fail:ip:{ip}", settings.LOGIN_THROTTLE_ADDRESS_ATTEMPTS),
    ]


def _wait_s(now: float, until: object) -> float:
    try:
        return max(0.0, float(until) - now)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def login_wait_seconds(request: HttpRequest, username: str) -> int:
    """Seconds until ``username`` may try again from this address; 0 when not throttled."""
    counters = _counters(request, username)
    keys = [key for key, _ in counters] + [f"{key}:until" for key, _ in counters]
    values = cache.get_many(keys)
    now = time.time()
    wait = 0.0
    for key, limit in counters:
        if int(values.get(key) or 0) >= limit:
            # A count without its end (evicted) still refuses, for a whole window at most.
            remaining = _wait_s(now, values.get(f"{key}:until")) or settings.LOGIN_THROTTLE_WINDOW_S
            wait = max(wait, remaining)
    return math.ceil(wait)


def throttled_message(wait_s: int) -> str:
    """The refusal, with the wait as "4 min 12 s"; identical for known and unknown usernames."""
    minutes, seconds = divmod(max(1, wait_s), 60)
    if minutes and seconds:
        wait = f"{minutes} min {seconds} s"
    elif minutes:
        wait = f"{minutes} min"
    else:
        wait = f"{seconds} s"
    return f"Too many failed sign-in attempts. Try again in {wait}."


def login_failure_record(request: HttpRequest, username: str) -> None:
    window = settings.LOGIN_THROTTLE_WINDOW_S
    for key, _limit in _counters(request, username):
        # add() starts the window only when the key is new; incr() keeps its expiry.
        if cache.add(key, 1, timeout=window):
            cache.set(f"{key}:until", time.time() + window, timeout=window)
            continue
        try:
            cache.incr(key)
        except ValueError:  # expired between add() and incr()
            cache.set(key, 1, timeout=window)
            cache.set(f"{key}:until", time.time() + window, timeout=window)


def login_success_record(request: HttpRequest, username: str) -> None:
    # Only the pair's counter resets: one good password must not unlock a spraying address.
    key = _counters(request, username)[0][0]
    cache.delete_many([key, f"{key}:until"])
