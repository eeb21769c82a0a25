"""Run :mod:`webapp.catalog.inspect_child` in a separate, memory-capped, time-limited process.

Untrusted model files and archives are opened only there: a crash, an out-of-memory or a hang
kills the child, and the worker records a reason instead of dying with it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger("edgeslim.catalog")

DEFAULT_MEMORY_BYTES = 6 * 1024**3  # torch's own import needs ~3 GiB of address space
DEFAULT_TIMEOUT_S = 600.0


class SandboxError(Exception):
    """The child refused the input or died; ``str()`` is the reason to show."""


def _limits(memory_bytes: int) -> None:
    # Runs in the child between fork and exec.
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()  # its own process group: a timeout kills grandchildren (the ONNX probe) too


def run_child(
    request: dict[str, Any],
    *,
    work_dir: Path,
    memory_bytes: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one action in the child and return its result dict.

    Raises:
        SandboxError: the child reported an error, ran out of memory or time, or crashed.
    """
    memory = memory_bytes or int(
        getattr(settings, "EDGESLIM_INSPECT_MEMORY_BYTES", DEFAULT_MEMORY_BYTES)
    )
    timeout = timeout_s or float(getattr(settings, "EDGESLIM_INSPECT_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, req_name = tempfile.mkstemp(prefix="req-", suffix=".json", dir=work_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(request, fh)
    result_path = Path(req_name).with_name(Path(req_name).stem + ".result.json")
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "VIRTUAL_ENV")
    }
    env.update(
        {
            "PYTHONPATH": str(settings.BASE_DIR),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp.catalog.inspect_child", req_name, str(result_path)],
        cwd=str(work_dir),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # preexec_fn is safe here: the cap and the new session are set before exec, nothing else.
        preexec_fn=lambda: _limits(memory),
    )
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SandboxError(f"inspection took longer than {timeout:g} s and was stopped") from None
    result: dict[str, Any] | None = None
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except ValueError:
            result = None
    if result is not None and result.get("ok"):
        return result
    if result is not None:
        if result.get("kind") == "unexpected":
            log.warning("the inspector failed unexpectedly:\n%s", err.decode("utf-8", "replace"))
        if result.get("kind") == "memory":
            raise SandboxError(
                f"the file needs more memory than the inspector's cap of {memory // 1024**2} MiB"
            )
        raise SandboxError(str(result.get("error") or "refused"))
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = str(-proc.returncode)
        raise SandboxError(f"the inspector process crashed ({name}) on this file")
    if "MemoryError" in tail[0] or "bad_alloc" in tail[0]:
        raise SandboxError(
            f"the file needs more memory than the inspector's cap of {memory // 1024**2} MiB"
        )
    raise SandboxError(f"the inspector failed (exit {proc.returncode}): {tail[0][:300]}")
