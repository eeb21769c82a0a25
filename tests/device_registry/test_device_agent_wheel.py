"""The agent installs from the server's wheel into a clean venv, without Django or torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from device_registry.agent_wheel import agent_wheel_build, agent_wheel_name

pytestmark = [pytest.mark.slow, pytest.mark.agent_wheel]


def test_the_wheel_holds_only_the_agent_and_the_latency_harness(tmp_path):
    path = agent_wheel_build(tmp_path)
    assert path.name == agent_wheel_name()
    names = zipfile.ZipFile(path).namelist()
    code = sorted(n for n in names if n.endswith(".py"))
    assert "compression/latency.py" in code and "device_registry/agent/cli.py" in code
    assert "compression/container.py" in code  # the agent decodes compressed containers
    shipped = (
        "device_registry/__init__.py",
        "compression/__init__.py",
        "compression/latency.py",
        "compression/container.py",
    )
    assert all(n.startswith("device_registry/agent/") or n in shipped for n in code)
    meta = zipfile.ZipFile(path).read(
        f"edgeslim_agent-{path.name.split('-')[1]}.dist-info/METADATA"
    )
    assert b"Requires-Dist: onnxruntime" in meta and b"django" not in meta.lower()
    assert agent_wheel_build(tmp_path).read_bytes() == path.read_bytes()  # reproducible


def test_it_installs_in_a_clean_venv_and_runs(tmp_path):
    wheel = agent_wheel_build(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0 and "No matching distribution" in pip.stderr + pip.stdout:
        pytest.skip(f"the package index cannot be reached: {pip.stderr[-300:]}")
    assert pip.returncode == 0, pip.stderr
    help_text = subprocess.run(
        [str(venv / "bin" / "edgeslim-agent"), "--help"], capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "enroll" in help_text and "run" in help_text
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u, device_registry.agent.connection, compression.latency,"
         " compression.container;"
         "print(u.find_spec('django'), u.find_spec('torch'))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "None None"
    onnx_probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('onnx'))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert onnx_probe.stdout.strip() == "None"  # the decoder needs no onnx package
