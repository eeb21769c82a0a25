"""The subprocess stack for end-to-end tests: daphne and a Celery worker on the test database.

Use with ``transactional_db`` (rows must be committed for the subprocesses to see them)::

    def test_it(transactional_db, edgeslim_stack): ...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

START_TIMEOUT_S = 90
ASGI_APP = "webapp.asgi:application"
WORKER_ARGS = ["-Q", "cpu,gpu,catalog", "-c", "1", "-P", "solo", "-l", "INFO", "--without-gossip"]
WORKER_ARGS += ["--without-mingle", "--without-heartbeat"]


@dataclass(frozen=True)
class ServerProcess:
    base_url: str
    log: Path
    cert: Path | None = None  # the generated certificate of an https server


@dataclass(frozen=True)
class WorkerProcess:
    log: Path


@dataclass(frozen=True)
class Stack:
    base_url: str
    server_log: Path
    worker_log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_url() -> str:
    """The URL of the test database pytest-django created (``test_<name>``)."""
    from django.db import connection

    s = connection.settings_dict
    auth = quote(s["USER"] or "postgres")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = test_database_url()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait(ready: object, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.25)
    _stop(proc)
    pytest.fail(f"{what} did not start in {START_TIMEOUT_S} s:\n{_tail(log)}")


@pytest.fixture(scope="session")
def daphne_server(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    base_url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), ASGI_APP],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
            start_new_session=True,
        )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    _wait(healthy, proc, log, "daphne")
    yield ServerProcess(base_url=base_url, log=log)
    _stop(proc)


@pytest.fixture(scope="session")
def daphne_tls_server(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Daphne serving HTTPS the way ``edgeslim up`` does: a self-signed certificate generated in
    its own data folder (so the registration page shows that certificate's fingerprint)."""
    import ssl

    from device_registry.server_tls import daphne_endpoint, ensure_certificate

    data_dir = tmp_path_factory.mktemp("tls-data")
    (data_dir / "static").mkdir()
    cert, key, _ = ensure_certificate(data_dir, hosts=["127.0.0.1"])
    port = free_port()
    log = data_dir / "daphne.log"
    env = subprocess_env()
    env["EDGESLIM_DATA_DIR"] = str(data_dir)
    env.pop("EDGESLIM_SIGNING_KEY_FILE", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-e",
             daphne_endpoint("127.0.0.1", port, cert, key), ASGI_APP],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    base_url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2, context=context) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    _wait(healthy, proc, log, "daphne (https)")
    yield ServerProcess(base_url=base_url, log=log, cert=cert)
    _stop(proc)


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    worker_args = [*WORKER_ARGS, "-n", f"test-{os.getpid()}@%h"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", *worker_args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
            start_new_session=True,
        )
    _wait(lambda: " ready." in _tail(log, 100_000), proc, log, "celery worker")
    yield WorkerProcess(log=log)
    _stop(proc)


@pytest.fixture(scope="session")
def edgeslim_stack(daphne_server: ServerProcess, celery_worker_process: WorkerProcess) -> Stack:
    return Stack(
        base_url=daphne_server.base_url,
        server_log=daphne_server.log,
        worker_log=celery_worker_process.log,
    )
