"""Production settings that work behind the documented deployment (docker/, a TLS proxy).

Each test drives the real thing: daphne processes under the production or test settings, the
Docker health check's own command, the compose file as compose reads it, a password-protected
redis-server, and the cache's bytes in Redis.
"""

from __future__ import annotations

import asyncio
import datetime
import http.cookiejar
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from django.core.cache import cache
from stack import _stop, _wait, free_port, subprocess_env

from webapp.proxy import TrustedProxyMiddleware, forwarded_client, parse_networks

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


# --- helpers ----------------------------------------------------------------------------------
def _start_daphne(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
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


def _get(url: str, host: str) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``, enough for our file."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if values.get(name):
            return values[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)


def _compose(values: dict[str, str]) -> dict[str, Any]:
    loaded = yaml.safe_load(_interpolate((DOCKER / "compose.yml").read_text(), values))
    assert isinstance(loaded, dict)
    return loaded


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The production settings on the test database (``/healthz`` checks it)."""
    env = {k: v for k, v in subprocess_env().items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS"}}
    env.update(
        EDGESLIM_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="edgeslim.example.com",
        EDGESLIM_DATA_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


# --- the health check -------------------------------------------------------------------------
@pytest.fixture
def production_server(django_db_setup: None, tmp_path: Path) -> Iterator[str]:
    yield from _start_daphne(_production_env(tmp_path), tmp_path)


def _docker_health_check(dockerfile: Path, port: int) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?\bCMD (.+)$", text, re.MULTILINE)
    assert match, f"{dockerfile.name} has no HEALTHCHECK"
    return shlex.split(match.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}"))


@pytest.mark.slow
def test_the_web_images_health_check_passes_under_production_settings(production_server):
    port = int(urllib.parse.urlsplit(production_server).port or 0)
    command = _docker_health_check(DOCKER / "Dockerfile.web", port)
    assert command[0] == "python"
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # The exemption is only for /healthz: other pages still redirect to HTTPS, and unknown hosts
    # are still refused; a load balancer's plain-HTTP probe with the public host name passes.
    assert _get(f"{production_server}/healthz", "edgeslim.example.com")[0] == 200
    status, headers = _get(f"{production_server}/accounts/login/", "edgeslim.example.com")
    assert status == 301 and headers["Location"].startswith("https://")
    assert _get(f"{production_server}/healthz", "evil.example.org")[0] == 400
    assert _get(f"{production_server}/accounts/login/", "localhost")[0] == 400


# --- HSTS preload -------------------------------------------------------------------------------
# One process per setting: the header a request gets, then Django's deploy checks (which must
# pass with preload on too) in the same process, so the suite starts Django once per case.
_HSTS_PROBE = (
    "import django; django.setup(); from django.test import Client; "
    "from django.core.management import call_command; "
    "r = Client().get('/healthz', HTTP_HOST='edgeslim.example.com', secure=True); "
    "print(r.status_code, r.headers.get('Strict-Transport-Security'), flush=True); "
    "call_command('check', deploy=True, fail_level='WARNING')"
)


@pytest.mark.slow
@pytest.mark.parametrize(("preload", "expected"), [("", False), ("true", True)])
def test_hsts_preload_is_opt_in(django_db_setup, tmp_path, preload, expected):
    env = _production_env(tmp_path, SECURE_HSTS_PRELOAD=preload)
    probe = subprocess.run(
        [sys.executable, "-c", _HSTS_PROBE], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout + probe.stderr
    status, header = probe.stdout.strip().splitlines()[0].split(" ", 1)
    assert status == "200"
    assert "max-age=31536000" in header
    assert ("preload" in header) is expected


# --- the real client address behind a trusted proxy ---------------------------------------------
TRUSTED = parse_networks(["10.0.0.5", "172.16.0.0/12"])


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
        # The proxy appended the address it saw; the left entry is the client's own claim.
        ("10.0.0.5", ["198.51.100.99, 203.0.113.7"], "203.0.113.7"),
        # Two trusted hops (an LB in front of the proxy): skip both.
        ("172.18.0.3", ["203.0.113.7, 10.0.0.5"], "203.0.113.7"),
        ("172.18.0.3", ["203.0.113.7", "10.0.0.5"], "203.0.113.7"),
        ("10.0.0.5", ["[2001:db8::7]:4711"], "2001:db8::7"),
        ("::ffff:10.0.0.5", ["203.0.113.7:4711"], "203.0.113.7"),
        # A peer that is not a trusted proxy: its headers prove nothing.
        ("203.0.113.50", ["198.51.100.99"], None),
        # Garbage in the chain stops the walk at the last good hop.
        ("10.0.0.5", ["evil, 203.0.113.7"], "203.0.113.7"),
        ("10.0.0.5", ["203.0.113.7, evil"], None),
    ],
)
def test_forwarded_client_walks_the_chain_from_the_trusted_end(peer, header, expected):
    assert forwarded_client(peer, header, TRUSTED) == expected


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_the_middleware_rewrites_the_scope_client_for_trusted_peers_only(kind):
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    async def call(trusted: list[Any], scope: dict[str, Any]) -> None:
        await TrustedProxyMiddleware(app, trusted=trusted)(scope, None, None)  # type: ignore[arg-type]

    headers = [(b"host", b"x"), (b"X-Forwarded-For", b"198.51.100.99, 203.0.113.7")]
    for peer in ("10.0.0.5", "203.0.113.50"):
        scope = {"type": kind, "client": [peer, 5000], "headers": headers}
        asyncio.run(call(TRUSTED, scope))
        assert scope["client"] == [peer, 5000]  # the caller's scope is not mutated
    assert seen == [["203.0.113.7", 0], ["203.0.113.50", 5000]]
    # Nothing is trusted by default.
    asyncio.run(call([], {"type": kind, "client": ["10.0.0.5", 1], "headers": headers}))
    assert seen[-1] == ["10.0.0.5", 1]


def test_a_bad_trusted_proxy_entry_fails_at_start(tmp_path):
    env = {**os.environ, "EDGESLIM_TRUSTED_PROXIES": "10.0.0.5,not-an-address"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "EDGESLIM_TRUSTED_PROXIES" in result.stderr


@pytest.fixture
def proxied_server(transactional_db, tmp_path: Path) -> Iterator[str]:
    env = subprocess_env()
    env["EDGESLIM_TRUSTED_PROXIES"] = "127.0.0.1"
    yield from _start_daphne(env, tmp_path)


def _login_attempt(base_url: str, username: str, forwarded_for: str) -> int:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    headers = {"X-Forwarded-For": forwarded_for}
    url = f"{base_url}/accounts/login/"
    with opener.open(urllib.request.Request(url, headers=headers), timeout=20) as page:
        html = page.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token, "no CSRF token on the login page"
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token.group(1), "username": username, "password": "wrong"}
    ).encode()
    try:
        with opener.open(urllib.request.Request(url, body, headers), timeout=20) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_behind_a_trusted_proxy_the_login_throttle_counts_each_real_client(
    proxied_server, settings
):
    username = f"victim-{uuid.uuid4().hex[:8]}"
    for attempt in range(settings.LOGIN_THROTTLE_ATTEMPTS):
        # The spoofed left-hand entry changes every time; the proxy's own entry does not.
        status = _login_attempt(proxied_server, username, f"198.51.100.{attempt}, 203.0.113.7")
        assert status == 200, attempt
    assert _login_attempt(proxied_server, username, "203.0.113.7") == 429
    # Everyone else behind the same proxy is unaffected (without the trusted proxy, every
    # request came from 127.0.0.1 and this one was refused too).
    assert _login_attempt(proxied_server, username, "203.0.113.8") == 200


# --- compose: migrations once, Redis with a password ------------------------------------------
COMPOSE_VALUES = {"REDIS_PASSWORD": "s3cret-Pass_word", "POSTGRES_PASSWORD": "pg"}


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_runs_migrations_once_before_any_app_service():
    compose = _compose(COMPOSE_VALUES)
    migrators = {
        name: svc
        for name, svc in compose["services"].items()
        if "migrate" in " ".join(map(str, svc.get("command") or []))
    }
    assert list(migrators) == ["migrate"]
    migrate = migrators["migrate"]
    assert migrate["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert str(migrate["restart"]) == "no"
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name, svc in _app_services(compose).items():
        if name != "migrate":
            assert svc["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"
            }, name
    # The web image itself no longer migrates at start (every web container would race).
    cmd = re.findall(r"^CMD (.+)$", (DOCKER / "Dockerfile.web").read_text(), re.MULTILINE)
    assert cmd and "migrate" not in cmd[-1] and "daphne" in cmd[-1]


def test_compose_refuses_to_start_redis_without_a_password():
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        _compose({"POSTGRES_PASSWORD": "pg"})


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """redis-server started with compose's own command line, on a free port."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    compose = _compose(COMPOSE_VALUES)
    command = [str(arg) for arg in compose["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port, compose
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_compose_redis_needs_the_password_that_every_app_service_uses(compose_redis):
    port, compose = compose_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    urls = {svc["environment"]["REDIS_URL"] for svc in _app_services(compose).values()}
    assert len(urls) == 1
    url = urls.pop().replace("@redis:6379", f"@127.0.0.1:{port}")
    assert redis.Redis.from_url(url).ping()
    # The health check authenticates through redis-cli's REDISCLI_AUTH.
    redis_svc = compose["services"]["redis"]
    assert redis_svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    probe = subprocess.run(
        ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=10,
        env={**os.environ, **redis_svc["environment"]},
    )  # fmt: skip
    assert probe.stdout.strip() == "PONG", probe.stdout + probe.stderr


# --- the cache stores JSON, not pickles ----------------------------------------------------------
def test_the_cache_stores_json_and_what_it_holds_round_trips(settings):
    values: dict[str, Any] = {
        "count": 3,
        "until": time.time() + 300.5,
        "flag": True,
        "text": "5",
        "nested": {"a": [1, 2.5, None, "x"]},
    }
    cache.set_many(values, timeout=60)
    assert cache.get_many(list(values)) == values
    assert cache.incr("count") == 4
    assert cache.add("lock", 1, timeout=60) and not cache.add("lock", 1, timeout=60)
    # In Redis the bytes are JSON (pickle's would start with b"\x80").
    client = redis.Redis.from_url(settings.REDIS_URL)
    raw = client.get(cache.make_key("nested"))
    assert raw == b'{"a":[1,2.5,null,"x"]}'
    assert client.get(cache.make_key("text")) == b'"5"'
    # A value JSON cannot carry is refused when it is set, not pickled.
    with pytest.raises(TypeError):
        cache.set("when", datetime.datetime.now(tz=datetime.UTC), timeout=60)
