"""Smoke test of the embedded default: ``edgeslim up`` with no DATABASE_URL and no REDIS_URL.

It runs the real command in a temporary data folder, signs in over HTTPS with the one-time
password it prints, opens the live websocket, has the Celery worker send an event, and stops
the whole stack with SIGINT, as Ctrl-C would; then runs it again on the same folder, which
reuses the database, the account and the certificate. One test does both, so the suite starts
the whole stack twice rather than three times.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.slow

EDGESLIM = str(Path(sys.executable).with_name("edgeslim"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The beat schedule's jobs sweep, short here so the test sees the first one without waiting the
# shipped 15 s (set the way an operator would; the shipped value is checked in test_job_reaper).
REAPER_INTERVAL_S = 2


def _embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGESLIM_", "DJANGO_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        env.pop(name, None)
    env["EDGESLIM_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Up:
    """A running ``edgeslim up`` and what it printed."""

    def __init__(self, data_dir: Path, port: int, *extra: str, **env: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [EDGESLIM, "up", "--data-dir", str(data_dir), "--port", str(port), *extra],
            env=_embedded_env(data_dir, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"never printed {pattern!r}; output:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines.append(out)
        return self.proc.returncode


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "data", _free_port(), EDGESLIM_REAPER_INTERVAL_S=str(REAPER_INTERVAL_S))
    try:
        yield running
    finally:
        running.stop()


def _login(
    base: str, username: str, password: str, context: ssl.SSLContext
) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=context)
    )
    page = opener.open(f"{base}/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the login page has no CSRF token"
    body = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    ).encode()
    request = urllib.request.Request(
        f"{base}/accounts/login/", data=body, headers={"Referer": f"{base}/accounts/login/"}
    )
    response = opener.open(request)
    assert response.status == 200
    if urllib.parse.urlparse(response.url).path == "/accounts/password/":
        # The one-time password must be changed first (every page redirects here until then).
        page = response.read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, "the password page has no CSRF token"
        body = urllib.parse.urlencode(
            {
                "old_password": password,
                "new_password1": NEW_PASSWORD,
                "new_password2": NEW_PASSWORD,
                "csrfmiddlewaretoken": token.group(1),
            }
        ).encode()
        change = urllib.request.Request(
            f"{base}/accounts/password/",
            data=body,
            headers={"Referer": f"{base}/accounts/password/"},
        )
        opener.open(change)
        response = opener.open(f"{base}/")
    assert urllib.parse.urlparse(response.url).path == "/", "login did not land on the dashboard"
    return opener, jar


NEW_PASSWORD = "a-new-Passphrase-42"


def _tiny_zip() -> bytes:
    import io
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, colour in (("dark", (10, 10, 10)), ("light", (240, 240, 240))):
            for i in range(5):
                img = io.BytesIO()
                Image.new("RGB", (8, 8), tuple(c + i for c in colour)).save(img, format="PNG")
                zf.writestr(f"{cls}/{i}.png", img.getvalue())
    return buf.getvalue()


def _multipart(
    fields: dict[str, str], file_field: str, filename: str, data: bytes
) -> tuple[bytes, str]:
    boundary = "----edgeslim-test-boundary"
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: application/zip\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _cookie(jar: http.cookiejar.CookieJar, name: str) -> str:
    return next(c.value for c in jar if c.name == name and c.value is not None)


# Two starts of the whole stack (migrations, four processes): under load on a shared two-core
# machine that can pass the suite's default 300 s (each of the two tests it replaces had that).
@pytest.mark.timeout(900)
def test_up_serves_login_and_live_events_stops_cleanly_and_reuses_its_data(
    up: Up, tmp_path: Path
) -> None:
    password = up.wait_for(
        r"One-time password \(you will be asked to change it at first sign-in\): (\S+)"
    ).group(1)
    up.wait_for(rf"EdgeSlim is up at https://127\.0\.0\.1:{up.port}/")
    printed = up.wait_for(r"TLS certificate (sha256:[0-9A-F:]{95}) \(self-signed").group(1)
    base = f"https://127.0.0.1:{up.port}"
    # HTTPS by default, with the certificate generated in the data folder; the fingerprint
    # printed is that certificate's, and a client that trusts exactly it gets in
    cert = tmp_path / "data" / "tls" / "server.crt"
    assert (tmp_path / "data" / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    assert printed == "sha256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    context = ssl.create_default_context(cafile=str(cert))  # its names include 127.0.0.1
    with pytest.raises(OSError):  # plain http is not served (the TLS port hangs up)
        urllib.request.urlopen(f"http://127.0.0.1:{up.port}/healthz", timeout=5)

    opener, jar = _login(base, "admin", password, context)
    health = json.loads(opener.open(f"{base}/healthz").read())
    assert health["status"] == "ok", health

    cookies = f"sessionid={_cookie(jar, 'sessionid')}; csrftoken={_cookie(jar, 'csrftoken')}"
    with connect(
        f"wss://127.0.0.1:{up.port}/ws/org/",
        additional_headers={"Cookie": cookies, "Origin": base},
        ssl=context,
        open_timeout=10,
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["kind"] == "hello"
        # A real piece of work: a dataset upload through the REST API, validated by the
        # embedded catalog worker, whose outcome reaches the open socket.
        token_req = urllib.request.Request(
            f"{base}/api/v1/auth/token/",
            data=json.dumps({"username": "admin", "password": NEW_PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        token = json.loads(opener.open(token_req).read())["token"]
        body, content_type = _multipart({"name": "tiny"}, "file", "tiny.zip", _tiny_zip())
        upload = urllib.request.Request(
            f"{base}/api/v1/datasets/",
            data=body,
            headers={"Authorization": f"Token {token}", "Content-Type": content_type},
        )
        dataset_id = json.loads(opener.open(upload).read())["id"]
        # The event travels: API -> Celery (embedded Redis) -> catalog worker -> channel layer
        # -> socket.
        deadline = time.monotonic() + 120
        kinds = []
        while time.monotonic() < deadline:
            event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            kinds.append(event["kind"])
            payload = event.get("payload") or {}
            if (event["kind"], payload.get("id"), payload.get("status")) == (
                "catalog.updated",
                dataset_id,
                "ready",
            ):
                break
        else:
            raise AssertionError(f"no ready event for the dataset arrived; got {kinds}")

    # The maintenance worker runs Celery beat, which sends the reaper (docs/jobs.md#recovery):
    # its first jobs sweep runs one interval after start, with its schedule in the data folder.
    maintenance_log = tmp_path / "data" / "logs" / "maintenance.log"
    swept = re.compile(r"Task edgeslim\.jobs_reap\[[^\]]+\] succeeded")
    deadline = time.monotonic() + 90
    while not swept.search(maintenance_log.read_text(errors="replace")):
        assert time.monotonic() < deadline, maintenance_log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    assert list((tmp_path / "data").glob("celerybeat-schedule*"))

    assert up.stop() == 0
    output = "".join(up.lines)
    assert "stopped" in output
    # Nothing of the stack is left behind: nobody listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", up.port), timeout=2).close()
    # Data persists for the next run: database, secret key, embedded Redis folder.
    data = tmp_path / "data"
    assert (data / "edgeslim.sqlite3").exists()
    assert (data / "secret_key").stat().st_mode & 0o777 == 0o600
    assert "generated a self-signed TLS certificate" in output

    # A second run on the same folder reuses it: no new account, the same certificate (devices
    # pinned it), and the password changed in the first run still signs in.
    second = Up(data, _free_port())
    try:
        second.wait_for(r"Users exist already; nothing to do\.")
        second.wait_for(r"EdgeSlim is up at")
        assert second.wait_for(r"TLS certificate (\S+)").group(1) == printed
        again = f"https://127.0.0.1:{second.port}"
        opener, _ = _login(again, "admin", NEW_PASSWORD, context)
        assert json.loads(opener.open(f"{again}/healthz").read())["status"] == "ok"
    finally:
        assert second.stop() == 0
    assert not any("One-time password" in line for line in second.lines)
    assert not any("generated a self-signed TLS certificate" in line for line in second.lines)


def test_plain_http_is_an_explicit_flag_for_loopback_only(tmp_path: Path) -> None:
    refused = Up(tmp_path / "data", _free_port(), "--insecure-http", "--host", "0.0.0.0")
    refused.proc.wait(timeout=60)  # refused before anything starts
    assert refused.stop() == 1
    assert "--insecure-http serves plain HTTP, for loopback development only" in "".join(
        refused.lines
    )
