"""The latency harness: statistics, stability flag, round trip, and no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compression.latency import LatencyResult, measure_latency
from compression.onnx_export import export_onnx
from compression.zoo import create_model


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lat") / "lenet5.onnx"
    return export_onnx(create_model("lenet5", in_channels=1), (1, 32, 32), path)


def test_it_reports_ordered_percentiles_and_the_runtime_facts(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, input_shape=(1, 1, 32, 32), threads=1, warmup=2, runs=20)
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.runs == 20 and r.threads == 1 and r.batch_size == 1
    assert r.throughput == pytest.approx(1000.0 / r.p50_ms)
    assert r.unstable == (r.cv > 0.05)
    assert r.provider == "CPUExecutionProvider"
    assert r.ort_version and r.hardware.cores >= 1 and r.hardware.arch
    assert r.load_time_ms > 0


def test_the_batch_defaults_to_one_for_a_dynamic_axis(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=0, runs=3)
    assert r.input_shape == [1, 1, 32, 32]


def test_throughput_counts_samples_of_a_larger_batch(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, input_shape=(8, 1, 32, 32), warmup=1, runs=5)
    assert r.batch_size == 8
    assert r.throughput == pytest.approx(8000.0 / r.p50_ms)


def test_profiling_reports_time_per_operator_type(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=1, runs=3, profile=True)
    assert "Conv" in r.op_profile_ms


def test_a_result_survives_a_dict_round_trip_and_ignores_unknown_keys(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=0, runs=3)
    data = r.to_dict()
    data["added_by_a_newer_agent"] = 1
    assert LatencyResult.from_dict(data) == r


def test_the_harness_imports_without_torch() -> None:
    code = (
        "import sys; import compression.latency; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
