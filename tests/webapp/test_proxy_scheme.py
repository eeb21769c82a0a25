"""``X-Forwarded-Proto`` is believed only from ``EDGESLIM_TRUSTED_PROXIES``: the ASGI middleware
sets the scope's scheme for a trusted peer, and the production settings no longer set Django's
``SECURE_PROXY_SSL_HEADER`` (which believed any client). Checked on the middleware and on a
real daphne under the production settings, where a client that claims HTTPS over plain HTTP is
still redirected to HTTPS and a trusted proxy's HTTPS request is served."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import _stop, _wait, free_port, subprocess_env

from webapp.proxy import TrustedProxyMiddleware, forwarded_scheme, parse_networks

ROOT = Path(__file__).resolve().parents[2]
TRUSTED = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("values", "websocket", "expected"),
    [
        (["https"], False, "https"),
        (["HTTPS"], False, "https"),
        (["http"], False, "http"),
        (["https"], True, "wss"),
        (["http"], True, "ws"),
        # The right-most value is the one the nearest (trusted) proxy wrote.
        (["https, http"], False, "http"),
        (["http", "https"], False, "https"),
        (["gopher"], False, None),
        ([""], False, None),
        ([], False, None),
    ],
)
def test_forwarded_scheme_takes_the_nearest_proxys_value(values, websocket, expected):
    assert forwarded_scheme(values, websocket=websocket) == expected


@pytest.mark.parametrize(
    ("kind", "plain", "secure"), [("http", "http", "https"), ("websocket", "ws", "wss")]
)
def test_the_middleware_takes_the_scheme_from_trusted_peers_only(kind, plain, secure):
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("scheme"))

    def call(trusted: list[Any], peer: str, headers: list[tuple[bytes, bytes]]) -> None:
        scope = {"type": kind, "scheme": plain, "client": [peer, 5000], "headers": headers}
        middleware = TrustedProxyMiddleware(app, trusted=trusted)
        asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
        assert scope["scheme"] == plain  # the caller's scope is not mutated

    claim = [(b"host", b"x"), (b"X-Forwarded-Proto", b"https")]
    call(TRUSTED, "10.0.0.5", claim)  # the proxy terminated TLS
    call(TRUSTED, "203.0.113.50", claim)  # a client claiming HTTPS over plain HTTP
    call([], "10.0.0.5", claim)  # nothing is trusted by default
    call(TRUSTED, "10.0.0.5", [(b"host", b"x")])  # no header: the connection's own scheme
    assert seen == [secure, plain, plain, plain]


def test_the_production_settings_do_not_believe_the_header_from_any_client(tmp_path):
    env = _production_env(tmp_path)
    code = "import django; django.setup(); from django.conf import settings; "
    code += "print(repr(settings.SECURE_PROXY_SSL_HEADER), settings.SECURE_SSL_REDIRECT)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "True"]


# --- a real daphne under the production settings ------------------------------------------------
def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS"}}
    env.pop("EDGESLIM_TRUSTED_PROXIES", None)
    env.update(
        EDGESLIM_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="edgeslim.example.com",
        EDGESLIM_DATA_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _daphne(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "daphne.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "webapp.asgi:application"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    _wait(listening, proc, log, "daphne")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    headers = {"Host": "edgeslim.example.com", "Accept": "application/json", **headers}
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=90) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return exc.code, str(exc.headers.get("Location", ""))


@pytest.fixture
def untrusting_server(django_db_setup: None, tmp_path: Path) -> Iterator[str]:
    yield from _daphne(_production_env(tmp_path), tmp_path)


@pytest.fixture
def proxied_server(django_db_setup: None, tmp_path: Path) -> Iterator[str]:
    yield from _daphne(_production_env(tmp_path, EDGESLIM_TRUSTED_PROXIES="127.0.0.1"), tmp_path)


# An API path: answered (401 without a token) without rendering a page, so no static files
# (whose manifest a production install builds with collectstatic) are needed.
PATH = "/api/v1/jobs/"


@pytest.mark.slow
def test_a_client_claiming_https_over_plain_http_is_still_redirected(untrusting_server):
    status, location = _get(f"{untrusting_server}{PATH}", {"X-Forwarded-Proto": "https"})
    assert status == 301 and location == f"https://edgeslim.example.com{PATH}"


@pytest.mark.slow
def test_a_trusted_proxys_https_request_is_served_and_plain_http_redirected(proxied_server):
    url = f"{proxied_server}{PATH}"
    assert _get(url, {"X-Forwarded-Proto": "https"}) == (401, "")
    status, location = _get(url, {"X-Forwarded-Proto": "http"})
    assert status == 301 and location == f"https://edgeslim.example.com{PATH}"
    assert _get(url, {})[0] == 301  # no header: the connection's own scheme, plain HTTP
