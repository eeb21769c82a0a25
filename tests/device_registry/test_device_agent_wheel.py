"""The agent is its own distribution: a setuptools build of agent/pyproject.toml holding
``edgeslim_agent`` and nothing else, which installs into a clean venv without Django or torch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile

import pytest

from device_registry.agent_wheel import (
    agent_requirements,
    agent_wheel_build,
    agent_wheel_name,
    agent_wheel_sha256,
)

pytestmark = [pytest.mark.slow, pytest.mark.agent_wheel]


def test_the_wheel_holds_edgeslim_agent_and_nothing_else(tmp_path):
    path = agent_wheel_build(tmp_path / "a")
    assert path.name == agent_wheel_name()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        dist_info = f"edgeslim_agent-{path.name.split('-')[1]}.dist-info"
        meta = zf.read(f"{dist_info}/METADATA").decode()
        wheel_meta = zf.read(f"{dist_info}/WHEEL").decode()
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == ["edgeslim_agent"]
    assert all(n.startswith(("edgeslim_agent/", f"{dist_info}/")) for n in names), names
    code = {n for n in names if n.endswith(".py")}
    # the container decoder and the latency harness live in the agent's package
    for module in ("cli", "connection", "container", "latency", "trust", "tls", "download"):
        assert f"edgeslim_agent/{module}.py" in code
    assert "edgeslim_agent/ed25519.py" not in code  # the hand-written verifier is gone
    assert "Generator: setuptools" in wheel_meta  # a standard build backend wrote it
    assert "edgeslim-agent = edgeslim_agent.cli:main" in entry_points
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert any("cryptography" in r for r in requires) and any("onnxruntime" in r for r in requires)
    names = {r.split()[1].split(">")[0].lower() for r in requires}
    assert names == {"onnxruntime", "numpy", "websockets", "cryptography"}  # no django, torch
    assert {r.split(">")[0] for r in agent_requirements()} == {
        "onnxruntime", "numpy", "websockets", "cryptography",
    }  # fmt: skip
    again = agent_wheel_build(tmp_path / "b")
    assert again.read_bytes() == path.read_bytes()  # reproducible: the same source, same bytes


def test_the_served_wheel_is_cached_with_its_sha256(settings, tmp_path, client):
    settings.DATA_DIR = tmp_path
    path = agent_wheel_build()
    assert path.is_relative_to(tmp_path / "agent")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert agent_wheel_sha256() == digest
    mtime = path.stat().st_mtime_ns
    assert agent_wheel_build() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    info = client.get("/agent/").json()
    assert info["wheel"] == f"/agent/{agent_wheel_name()}" and info["sha256"] == digest
    served = b"".join(client.get(info["wheel"]).streaming_content)
    assert hashlib.sha256(served).hexdigest() == digest


def test_it_installs_with_hash_checking_in_a_clean_venv_and_runs(tmp_path):
    wheel = agent_wheel_build(tmp_path / "dist")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    deps = subprocess.run(
        [*pip, *agent_requirements()], capture_output=True, text=True, timeout=900
    )
    if deps.returncode != 0 and "No matching distribution" in deps.stderr + deps.stdout:
        pytest.skip(f"the package index cannot be reached: {deps.stderr[-300:]}")
    assert deps.returncode == 0, deps.stderr
    # the same two steps as the registration page: the agent itself only with its sha256
    tampered = tmp_path / "bad.txt"
    tampered.write_text(f"edgeslim-agent @ {wheel.as_uri()} --hash=sha256:{'0' * 64}\n")
    refused = subprocess.run(
        [*pip, "--no-deps", "--require-hashes", "-r", str(tampered)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "hash" in (refused.stderr + refused.stdout).lower()
    good = tmp_path / "agent.txt"
    good.write_text(f"edgeslim-agent @ {wheel.as_uri()} --hash=sha256:{digest}\n")
    installed = subprocess.run(
        [*pip, "--no-deps", "--require-hashes", "-r", str(good)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    help_text = subprocess.run(
        [str(venv / "bin" / "edgeslim-agent"), "enroll", "--help"], capture_output=True,
        text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "--fingerprint" in help_text
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u, edgeslim_agent.connection, edgeslim_agent.latency,"
         " edgeslim_agent.container;"
         "print([bool(u.find_spec(m)) for m in"
         " ('django', 'torch', 'onnx', 'compression', 'device_registry')])"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert probe.stdout.strip() == "[False, False, False, False, False]"
