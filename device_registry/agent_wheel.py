"""Build the agent's wheel in pure Python: the agent and the latency harness, nothing else.

The wheel holds ``device_registry/__init__.py``, ``device_registry/agent/*.py``,
``compression/__init__.py``, ``compression/latency.py`` and ``compression/container.py`` (the
numpy-only decoder of compressed containers); it depends on onnxruntime, numpy and
websockets only, and installs the ``edgeslim-agent`` console script. Neither package's
``__init__`` imports anything, so neither Django nor torch is needed on the device.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

from django.conf import settings

from device_registry.agent import __version__

ROOT = Path(__file__).resolve().parent.parent
DIST = "edgeslim_agent"
REQUIRES = ["onnxruntime>=1.16", "numpy>=1.24", "websockets>=13"]
_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same source gives the same wheel


def agent_wheel_name() -> str:
    return f"{DIST}-{__version__}-py3-none-any.whl"


def agent_source_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, path on disk) of every file the agent needs."""
    files = [
        ("device_registry/__init__.py", ROOT / "device_registry" / "__init__.py"),
        ("compression/__init__.py", ROOT / "compression" / "__init__.py"),
        ("compression/latency.py", ROOT / "compression" / "latency.py"),
        ("compression/container.py", ROOT / "compression" / "container.py"),
    ]
    for path in sorted((ROOT / "device_registry" / "agent").glob("*.py")):
        files.append((f"device_registry/agent/{path.name}", path))
    return files


def _metadata() -> str:
    lines = [
        "Metadata-Version: 2.1",
        "Name: edgeslim-agent",
        f"Version: {__version__}",
        "Summary: EdgeSlim edge agent: benchmarks deployed ONNX models and streams results back.",
        "License: Apache-2.0",
        "Requires-Python: >=3.9",
        *[f"Requires-Dist: {req}" for req in REQUIRES],
    ]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def agent_wheel_bytes() -> bytes:
    dist_info = f"{DIST}-{__version__}.dist-info"
    entries: list[tuple[str, bytes]] = [
        (name, path.read_bytes()) for name, path in agent_source_files()
    ]
    entries += [
        (f"{dist_info}/METADATA", _metadata().encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: edgeslim\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (
            f"{dist_info}/entry_points.txt",
            b"[console_scripts]\nedgeslim-agent = device_registry.agent.cli:main\n",
        ),
        (f"{dist_info}/top_level.txt", b"compression\ndevice_registry\n"),
    ]
    record = [_record_line(name, data) for name, data in entries]
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buffer.getvalue()


def agent_wheel_build(out_dir: Path | None = None) -> Path:
    """Write the wheel (rebuilt only when the source changed) and return its path."""
    out_dir = out_dir or Path(settings.DATA_DIR) / "agent"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = agent_wheel_bytes()
    path = out_dir / agent_wheel_name()
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path
