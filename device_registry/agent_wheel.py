"""The edge agent's wheel, built from its own project (``agent/pyproject.toml``) and cached.

The wheel is a standard build (setuptools through ``pip wheel``) of the ``edgeslim_agent``
package, which holds the agent, its protocol, the container decoder and the latency harness,
and nothing else: a device gets ``edgeslim_agent`` and no ``compression`` or
``device_registry``. Its dependencies are onnxruntime, numpy, websockets and cryptography.

The build runs in a copy of the sources (no ``build/`` left in the tree) with a fixed
``SOURCE_DATE_EPOCH``, so the same source gives the same bytes, and its result is cached in the
data folder under the digest of the sources: ``edgeslim up`` builds it at start, the first
download otherwise. The registration page prints its sha256 for ``pip --require-hashes``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from edgeslim_agent import __version__

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "agent"
PACKAGE = ROOT / "edgeslim_agent"
DIST = "edgeslim_agent"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest a zip can say


class AgentWheelError(RuntimeError):
    """The wheel could not be built (the build's output is in the message)."""


def agent_wheel_name() -> str:
    return f"{DIST}-{__version__}-py3-none-any.whl"


def agent_requirements() -> list[str]:
    """The agent's dependencies, as its pyproject declares them."""
    data = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    return [str(r) for r in data["project"]["dependencies"]]


def agent_source_files() -> list[tuple[str, Path]]:
    """(path in the build copy, path on disk) of every file the build reads."""
    files = [(f"agent/{p.name}", p) for p in sorted(PROJECT.iterdir()) if p.is_file()]
    files += [(f"edgeslim_agent/{p.name}", p) for p in sorted(PACKAGE.glob("*.py"))]
    return files


def source_digest() -> str:
    digest = hashlib.sha256()
    for name, path in agent_source_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build(out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="edgeslim-agent-build-") as tmp:
        stage = Path(tmp)
        for name, path in agent_source_files():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, stage / name)
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_NO_INPUT="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-cache-dir", "-q", "-w", str(stage / "dist"), str(stage / "agent")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        built = stage / "dist" / agent_wheel_name()
        if proc.returncode != 0 or not built.exists():
            raise AgentWheelError(
                f"building the agent wheel failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp_target = out_dir / f".{agent_wheel_name()}.{os.getpid()}.tmp"
        shutil.copyfile(built, tmp_target)
        target = out_dir / agent_wheel_name()
        os.replace(tmp_target, target)
        return target


def agent_wheel_build(out_dir: Path | None = None) -> Path:
    """The wheel of the current source, built once per source digest; return its path."""
    out_dir = out_dir or Path(settings.DATA_DIR) / "agent" / source_digest()
    path = out_dir / agent_wheel_name()
    if path.exists():
        return path
    return _build(out_dir)


@lru_cache(maxsize=8)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def agent_wheel_sha256() -> str:
    """The sha256 of the wheel this server serves (building it first if needed)."""
    path = agent_wheel_build()
    stat = path.stat()
    return _sha256_of(str(path), stat.st_mtime_ns, stat.st_size)
