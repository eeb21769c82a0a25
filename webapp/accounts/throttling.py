"""Failed-login throttling shared by the login page and the token endpoint.

Failures are counted in the cache (Redis) per normalised username and per client IP. The
window starts at the first failure. Unknown usernames count like known ones, so the answers
never tell which usernames exist.
"""

from __future__ import annotations

import hashlib
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

THROTTLED_MESSAGE = "Too many failed sign-in attempts. Wait a few minutes and try again."


def _normalise_username(username: str) -> str:
    return unicodedata.normalize("NFKC", username or "").strip().casefold()


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it.
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _keys(request: HttpRequest, username: str) -> list[str]:
    user_digest = hashlib.sha256(_normalise_username(username).encode()).hexdigest()[:32]
    ip_digest = hashlib.sha256(client_ip(request).encode()).hexdigest()[:32]
    return [f"login-fail:user:{user_digest}", f"login-fail:ip:{ip_digest}"]


def login_is_throttled(request: HttpRequest, username: str) -> bool:
    counts = cache.get_many(_keys(request, username))
    return any(int(n) >= settings.LOGIN_THROTTLE_ATTEMPTS for n in counts.values())


def login_failure_record(request: HttpRequest, username: str) -> None:
    for key in _keys(request, username):
        # add() starts the window only when the key is new; incr() keeps its expiry.
        if not cache.add(key, 1, timeout=settings.LOGIN_THROTTLE_WINDOW_S):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, timeout=settings.LOGIN_THROTTLE_WINDOW_S)


def login_success_record(request: HttpRequest, username: str) -> None:
    # Only the username counter resets: one good password must not unlock a guessing IP.
    cache.delete(_keys(request, username)[0])
