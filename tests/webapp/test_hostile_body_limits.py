"""Request bodies are capped, and anonymous uploads refused, before the body is read.

Against a live daphne started here with its own TMPDIR, through a raw socket: a client
announcing a 3 GiB body gets its answer without sending it, and daphne holds no temporary file
for it (Twisted spools a body to a ``TemporaryFile`` in TMPDIR before the application runs, so
without the guard the answer never comes and the file is open). The ASGI middleware that does
the same for other servers is driven in-process through ``webapp.asgi.application``.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.test import Client
from factories import make_organization, make_user
from hostile_corpus import GiB, MiB, http_head
from stack import _stop, _wait, free_port, subprocess_env

from webapp.accounts import services as account_services
from webapp.accounts.models import Role

pytestmark = pytest.mark.django_db(transaction=True)
RESPONSE_TIMEOUT_S = 30  # generous: a refused request is answered at once


@dataclass(frozen=True)
class Daphne:
    port: int
    pid: int
    tmp: Path
    at_start: frozenset[str]  # what libraries left in TMPDIR while daphne started


@pytest.fixture(scope="module")
def guarded_daphne(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daphne]:
    tmp = tmp_path_factory.mktemp("daphne-tmpdir")
    log = tmp_path_factory.mktemp("daphne-log") / "daphne.log"
    port = free_port()
    env = subprocess_env()
    env["TMPDIR"] = str(tmp)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "webapp.asgi:application",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    _wait(healthy, proc, log, "daphne")
    at_start = frozenset(str(p) for p in tmp.iterdir())
    yield Daphne(port=port, pid=proc.pid, tmp=tmp, at_start=at_start)
    _stop(proc)


def spooled_files(daphne: Daphne) -> list[str]:
    """Files under daphne's TMPDIR that it holds open (Twisted's body spools are unlinked at
    once, so only /proc shows them) or that lie there."""
    held = []
    for fd in Path(f"/proc/{daphne.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(daphne.tmp)):
            held.append(target)
    return held + [str(p) for p in daphne.tmp.iterdir() if str(p) not in daphne.at_start]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(RESPONSE_TIMEOUT_S)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pytest.fail("no answer: the server is waiting for the whole body")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    try:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except TimeoutError:
        pass
    return int(lines[0].split()[1]), headers, body


def announce(daphne: Daphne, method: str, path: str, *, length: int, headers: dict[str, str],
             send_bytes: int = MiB) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """Send the head announcing ``length`` body bytes and ``send_bytes`` of them, then read."""
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=RESPONSE_TIMEOUT_S) as sock:
        sock.sendall(http_head(method, path, length=length, headers=headers))
        _send_until_answered(sock, send_bytes)
        return read_response(sock)


def _send_until_answered(sock: socket.socket, count: int) -> int:
    """Send up to ``count`` body bytes in 64 KiB pieces; stop once an answer is waiting."""
    sent = 0
    piece = b"\0" * (64 * 1024)
    while sent < count:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def stream_chunked(daphne: Daphne, path: str, *, headers: dict[str, str], total: int
                   ) -> tuple[int, dict[str, str], bytes, int]:  # fmt: skip
    """Send a chunked body of up to ``total`` bytes, stopping as soon as an answer arrives."""
    sent = 0
    chunk = b"\0" * (64 * 1024)
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=RESPONSE_TIMEOUT_S) as sock:
        sock.sendall(http_head("POST", path, length=None, headers=headers))
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        status, response_headers, body = read_response(sock)
    return status, response_headers, body, sent


@pytest.fixture
def engineer() -> tuple[object, str, str]:
    """An engineer with an API token and a signed-in session cookie."""
    user = make_user(role=Role.ENGINEER)
    make_organization(owner=user)
    _token, key = account_services.api_token_create(user=user)
    client = Client()
    client.force_login(user)
    return user, key, client.cookies["sessionid"].value


def test_anonymous_upload_announcing_3_gib_is_refused_before_its_body(
    guarded_daphne: Daphne,
) -> None:
    # Over every cap: refused from the header alone (the size is checked before the login).
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    status, _, body = announce(
        guarded_daphne, "POST", "/api/v1/models/", length=3 * GiB, headers=multipart
    )
    assert status == 413, body
    assert spooled_files(guarded_daphne) == []
    # Under the upload cap but anonymous: told to sign in, before any body byte is kept.
    status, _, body = announce(
        guarded_daphne, "POST", "/api/v1/models/", length=1 * GiB, headers=multipart
    )
    assert status == 401, body
    assert b"sign in or send an API token" in body
    assert spooled_files(guarded_daphne) == []
    # The upload page sends the browser to the login page instead.
    status, headers, _ = announce(
        guarded_daphne, "POST", "/models/", length=1 * GiB, headers=multipart
    )
    assert status == 302 and headers["location"].startswith("/accounts/login/?next=/models/")
    assert spooled_files(guarded_daphne) == []


def test_anonymous_upload_with_expect_continue_never_gets_a_continue(
    guarded_daphne: Daphne,
) -> None:
    with socket.create_connection(("127.0.0.1", guarded_daphne.port), timeout=30) as sock:
        sock.sendall(
            http_head("PUT", "/api/v1/uploads/00000000-0000-0000-0000-000000000000/",
                      length=1 * GiB, headers={"Expect": "100-continue"})
        )  # fmt: skip
        status, _, _ = read_response(sock)
    assert status == 401  # not "100 Continue": the client never sends the body


def test_a_bad_token_is_refused_before_the_body(guarded_daphne: Daphne) -> None:
    status, _, body = announce(
        guarded_daphne, "POST", "/api/v1/datasets/", length=100 * MiB,
        headers={"Authorization": "Token es_not-a-real-token"},
    )  # fmt: skip
    assert status == 401 and b"Invalid token" in body
    assert spooled_files(guarded_daphne) == []


def test_signed_in_upload_over_the_cap_is_refused_from_content_length(
    guarded_daphne: Daphne, engineer: tuple[object, str, str]
) -> None:
    _user, key, session = engineer
    for headers in ({"Authorization": f"Token {key}"}, {"Cookie": f"sessionid={session}"}):
        status, _, body = announce(
            guarded_daphne, "POST", "/api/v1/models/", length=3 * GiB, headers=headers
        )
        assert status == 413, body
        assert f"{3 * GiB} bytes" in body.decode()
        assert spooled_files(guarded_daphne) == []


def test_every_other_route_has_the_small_cap(
    guarded_daphne: Daphne, engineer: tuple[object, str, str]
) -> None:
    _user, key, _session = engineer
    # 11 MiB to the jobs API (10 MiB cap) and to a route that does not exist: refused from the
    # header, signed in or not.
    for path, headers in (
        ("/api/v1/jobs/", {"Authorization": f"Token {key}"}),
        ("/no/such/route/", {}),
        ("/accounts/login/", {}),
    ):
        status, _, body = announce(guarded_daphne, "POST", path, length=11 * MiB, headers=headers)
        assert status == 413, (path, body)
    assert spooled_files(guarded_daphne) == []


def test_a_chunked_body_is_cut_off_at_the_cap(
    guarded_daphne: Daphne, engineer: tuple[object, str, str]
) -> None:
    _user, key, _session = engineer
    status, _, body, sent = stream_chunked(
        guarded_daphne,
        "/api/v1/jobs/",
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
        total=64 * MiB,
    )
    assert status == 413, body
    assert b"went past this route's limit" in body
    assert sent < 64 * MiB  # answered while the client was still sending
    assert spooled_files(guarded_daphne) == []  # the partial spool is closed


def test_signed_in_uploads_still_go_through(
    guarded_daphne: Daphne, engineer: tuple[object, str, str], tmp_path: Path
) -> None:
    """The guard holds an upload's body while the credentials are checked, then lets it in."""
    from compression import zoo
    from compression.model_io import save_model_safetensors

    _user, key, _session = engineer
    module = zoo.create_model("lenet5", num_classes=10, in_channels=1)
    data = save_model_safetensors(module, tmp_path / "lenet5.safetensors").read_bytes()
    boundary = "edgeslimboundary"
    parts = []
    for name, value in (("name", "lenet"), ("arch", "lenet5"), ("num_classes", "10")):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    form = (
        "".join(parts).encode()
        + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="lenet5.safetensors"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", guarded_daphne.port), timeout=30) as sock:
        sock.sendall(
            http_head("POST", "/api/v1/models/", length=len(form), headers={
                "Authorization": f"Token {key}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Expect": "100-continue",
            })
        )  # fmt: skip
        sock.settimeout(30)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # after the check
        sock.sendall(form)
        status, _, body = read_response(sock)
    assert status == 201, body
    assert b'"status":"pending"' in body.replace(b" ", b"")


# --- the ASGI middleware (for servers that stream bodies to the application) --------------------


async def _asgi_call(
    method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> dict[str, object]:
    """Call ``webapp.asgi.application`` and answer no ``receive()``: a refusal must come
    without the body."""
    from webapp.asgi import application

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    comm = ApplicationCommunicator(application, scope)
    start = await comm.receive_output(timeout=20)
    body = await comm.receive_output(timeout=5)
    await comm.wait(timeout=5)
    return {"status": start["status"], "body": body.get("body", b"")}


def test_middleware_refuses_from_content_length_without_receiving() -> None:
    out = async_to_sync(_asgi_call)(
        "POST", "/api/v1/models/", [(b"content-length", str(3 * GiB).encode())]
    )
    assert out["status"] == 413


def test_middleware_refuses_an_anonymous_upload_without_receiving() -> None:
    out = async_to_sync(_asgi_call)("PUT", "/api/v1/uploads/00000000-0000-0000-0000-000000000000/", [
        (b"content-length", str(8 * MiB).encode())
    ])  # fmt: skip
    assert out["status"] == 401


def test_middleware_counts_a_streamed_body() -> None:
    async_to_sync(_streamed)()


async def _streamed() -> None:
    from webapp.asgi import application

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/accounts/login/", "raw_path": b"/accounts/login/",
        "root_path": "", "query_string": b"", "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    comm = ApplicationCommunicator(application, scope)
    chunk = b"\0" * MiB
    for _ in range(11):
        await comm.send_input({"type": "http.request", "body": chunk, "more_body": True})
    start = await comm.receive_output(timeout=20)
    assert start["status"] == 413
    await comm.wait(timeout=5)
