"""Run a real ``edgeslim-agent`` process against the test server (enroll, run, stop, kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def agent_cmd(state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgeslim_agent", "--state-dir", str(state_dir), *args]


def enroll(
    state_dir: Path, server: str, code: str, *, fingerprint: str = ""
) -> subprocess.CompletedProcess[str]:
    """``edgeslim-agent enroll``; a plain-http test server needs ``--insecure-http``."""
    flags = ["--insecure-http"] if server.startswith("http://") else []
    pin = ["--fingerprint", fingerprint] if fingerprint else []
    return subprocess.run(
        agent_cmd(state_dir, *flags, "enroll", "--server", server, *pin, "--code", code),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class AgentProcess:
    def __init__(self, state_dir: Path, log: Path, *, insecure_http: bool = True) -> None:
        self.state_dir = state_dir
        self.log = log
        # the live tests' daphne serves plain http on loopback; the browser e2e runs https
        self.flags = ["--insecure-http"] if insecure_http else []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                agent_cmd(self.state_dir, *self.flags, "run"), stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_for(check: Callable[[], Any], *, timeout: float = 60.0, what: str = "", log: Any = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    tail = log() if callable(log) else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail[-4000:]}")
