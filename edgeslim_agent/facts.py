"""The facts an agent reports about its machine (CPU, memory, OS, ONNX Runtime)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from edgeslim_agent.latency import HardwareFacts
from edgeslim_agent.protocol import DeviceFacts


def memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        pass
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5
            )
            return int(out.stdout.strip()) // (1024 * 1024)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return 0


def collect() -> DeviceFacts:
    import onnxruntime as ort

    hw = HardwareFacts.current()
    return DeviceFacts(
        cpu=hw.cpu_model[:200],
        cores=hw.cores,
        memory_mb=memory_mb(),
        os=hw.os[:200],
        arch=hw.arch or platform.machine(),
        python=hw.python,
        ort_version=ort.__version__,
        providers=list(ort.get_available_providers()),
    )
