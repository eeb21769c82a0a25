"""The latency harness: statistics, honesty rules, isolated children, round trip, no torch."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.errors import Cancelled
from compression.latency import (
    P99_MIN_RUNS,
    PINNED_ENV,
    HardwareFacts,
    LatencyChild,
    LatencyError,
    LatencyResult,
    cpu_isa,
    measure_latency,
    measure_latency_isolated,
    measure_round_medians,
    round_order,
)
from compression.onnx_export import export_onnx
from compression.zoo import create_model


def _matmul_model(path: Path, n: int) -> Path:
    """``Y = X @ W`` with a dynamic batch and an ``n x n`` weight."""
    weight = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _matmul_model(tmp_path_factory.mktemp("lat") / "small.onnx", 16)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _matmul_model(tmp_path_factory.mktemp("lat") / "big.onnx", 512)


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lat") / "lenet5.onnx"
    return export_onnx(create_model("lenet5", in_channels=1), (1, 32, 32), path)


def _latency_children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "edgeslim_agent.latency" in child.cmdline():
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


# --- in process (the agent's way) ---------------------------------------------------------------


def test_it_reports_ordered_percentiles_and_the_runtime_facts(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, input_shape=(1, 1, 32, 32), threads=1, warmup=2, runs=20)
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.max_ms
    assert r.runs == 20 and r.rounds == 1 and r.threads == 1 and r.batch_size == 1
    assert r.round_p50_ms == [r.p50_ms] and r.iqr_ms is None and not r.isolated
    assert r.unstable == (r.cv > 0.05)
    assert r.provider == "CPUExecutionProvider"
    assert r.ort_version and r.hardware.cores >= 1 and r.hardware.arch
    assert r.load_time_ms > 0


def test_the_batch_defaults_to_one_for_a_dynamic_axis(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=0, runs=3)
    assert r.input_shape == [1, 1, 32, 32]


def test_p99_is_only_given_from_100_timed_runs(small: Path) -> None:
    below = measure_latency(small, input_shape=(1, 16), threads=1, warmup=0, runs=P99_MIN_RUNS - 1)
    at = measure_latency(small, input_shape=(1, 16), threads=1, warmup=0, runs=P99_MIN_RUNS)
    assert P99_MIN_RUNS == 100
    assert below.p99_ms is None
    assert at.p99_ms is not None and at.p90_ms <= at.p99_ms <= at.max_ms


def test_throughput_comes_from_the_wall_time_of_the_timed_runs(big: Path) -> None:
    started = time.perf_counter()
    r = measure_latency(big, input_shape=(8, 512), threads=1, warmup=1, runs=20)
    outer_s = time.perf_counter() - started
    samples = r.batch_size * r.timed_runs
    # the timed loop's wall time holds every run's time and is within the whole call
    assert samples / outer_s <= r.throughput <= samples * 1000.0 / (r.mean_ms * r.timed_runs)
    assert r.batch_size == 8


def test_profiling_reports_time_per_operator_type_per_inference(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=1, runs=50, profile=True)
    assert "Conv" in r.op_profile_ms
    assert r.runs == 50
    # ms per inference from its own session, not a total over the 50 timed runs
    assert sum(r.op_profile_ms.values()) < r.p50_ms * 10


# --- isolated children (the host's way) --------------------------------------------------------


def test_the_child_imports_no_torch_and_gets_the_pinned_thread_env(small: Path) -> None:
    import torch  # noqa: F401  (the parent has torch loaded, as the worker does)

    child = LatencyChild(str(small), threads=3)
    try:
        child.request({"cmd": "load", "path": str(small), "threads": 3, "warmup": 1}, timeout_s=60)
        info = child.request({"cmd": "info"}, timeout_s=10)
    finally:
        child.close()
    assert info["torch_imported"] is False
    assert info["env"] == {name: "3" for name in PINNED_ENV}
    assert {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"} <= set(PINNED_ENV)
    assert child.proc.returncode is not None  # reaped


def test_rounds_rotate_so_no_model_is_always_first() -> None:
    orders = [round_order(3, r) for r in range(3)]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert sorted(o[0] for o in orders) == [0, 1, 2]
    assert round_order(1, 4) == [0]


def test_interleaved_rounds_tell_a_bigger_model_from_a_small_one(small: Path, big: Path) -> None:
    fast, slow = measure_latency_isolated(
        [small, big],
        input_shapes=[[1, 16], [32, 512]],
        threads=1,
        warmup=2,
        runs=10,
        rounds=3,
    )
    assert slow.p50_ms > 5 * fast.p50_ms
    for r in (fast, slow):
        assert r.isolated and r.rounds == 3 and r.runs == 10 and len(r.round_p50_ms) == 3
        assert r.p50_ms == pytest.approx(float(np.median(r.round_p50_ms)))
        assert r.iqr_ms is not None and r.iqr_ms >= 0
        assert r.p99_ms is None  # 30 timed runs
        assert r.peak_rss_mb is not None and r.peak_rss_mb > 0
        assert r.load_time_ms > 0 and r.op_profile_ms == {}
        assert r.throughput <= r.batch_size * 1000.0 / r.mean_ms
    assert (fast.input_shape, slow.input_shape) == ([1, 16], [32, 512])


def _low_rank_model(path: Path, n: int, rank: int) -> Path:
    """``Y = (X @ A) @ B``: the ``n x n`` map through rank ``rank``, as a decomposition does."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, rank)).astype(np.float32)
    b = rng.standard_normal((rank, n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "A"], ["H"]),
            helper.make_node("MatMul", ["H", "B"], ["Y"]),
        ],
        "low_rank",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_in_process_rounds_pair_two_models_and_last_at_least_the_asked_time(
    big: Path, tmp_path: Path
) -> None:
    chain = _low_rank_model(tmp_path / "chain.onnx", 512, 8)  # 32x fewer MACs than big
    start = time.perf_counter()
    dense_ms, chain_ms = measure_round_medians(
        [big, chain], input_shape=(64, 512), threads=1, warmup=2, rounds=3, min_runs=5,
        min_round_ms=20.0,
    )  # fmt: skip
    # Each model keeps running past its 5 runs until 20 ms of each round have passed.
    assert time.perf_counter() - start >= 2 * 3 * 0.020
    assert len(dense_ms) == len(chain_ms) == 3
    assert all(0 < c < d for d, c in zip(dense_ms, chain_ms, strict=True))  # round by round
    with pytest.raises(ValueError, match="min_round_ms"):
        measure_round_medians([big], input_shape=(1, 512), min_round_ms=-1.0)


def test_isolated_p99_appears_from_100_runs_over_all_rounds(small: Path) -> None:
    (r,) = measure_latency_isolated(
        [small], input_shapes=[1, 16], threads=1, warmup=0, runs=25, rounds=4
    )
    assert r.timed_runs == 100 and r.p99_ms is not None


def test_isolated_profiling_gives_op_types_and_leaves_the_timed_runs_alone(small: Path) -> None:
    (r,) = measure_latency_isolated(
        [small], input_shapes=[1, 16], threads=1, warmup=1, runs=7, rounds=2, profile=True
    )
    assert "MatMul" in r.op_profile_ms
    assert r.runs == 7 and r.rounds == 2 and len(r.round_p50_ms) == 2


def test_cancel_raises_and_leaves_no_child_alive(small: Path, big: Path) -> None:
    calls = 0
    seen: list[int] = []

    def should_cancel() -> bool:
        nonlocal calls
        calls += 1
        if calls < 12:
            return False
        seen.extend(c.pid for c in _latency_children())
        return True

    with pytest.raises(Cancelled):
        measure_latency_isolated(
            [small, big],
            input_shapes=[[1, 16], [8, 512]],
            threads=1,
            warmup=1,
            runs=5,
            rounds=50,
            should_cancel=should_cancel,
        )
    assert len(seen) == 2  # both children were alive when cancel came
    assert not any(psutil.pid_exists(pid) for pid in seen)
    assert _latency_children() == []


def test_a_corrupt_model_file_gives_an_error_naming_it(small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken_model.onnx"
    bad.write_bytes(b"\x08\x07not really onnx" * 10)
    with pytest.raises(LatencyError, match=r"broken_model\.onnx"):
        measure_latency_isolated([small, bad], input_shapes=[1, 16], warmup=0, runs=1, rounds=1)
    assert _latency_children() == []


def test_a_child_over_its_time_limit_is_killed_with_an_error_naming_the_model(
    big: Path,
) -> None:
    with pytest.raises(LatencyError, match=r"big\.onnx.*took over"):
        measure_latency_isolated([big], input_shapes=[1, 512], timeout_s=0.01)
    assert _latency_children() == []


def test_shapes_must_be_one_shared_or_one_per_model(small: Path) -> None:
    with pytest.raises(ValueError, match="2 input shapes for 3 models"):
        measure_latency_isolated([small] * 3, input_shapes=[[1, 16], [2, 16]])


# --- the result's dict form --------------------------------------------------------------------


def test_a_result_survives_a_dict_round_trip_and_ignores_unknown_keys(small: Path) -> None:
    (r,) = measure_latency_isolated([small], input_shapes=[1, 16], warmup=0, runs=3, rounds=2)
    data = r.to_dict()
    data["added_by_a_newer_agent"] = 1
    assert LatencyResult.from_dict(data) == r


def test_an_old_row_without_the_round_fields_still_loads(lenet_onnx: Path) -> None:
    data = measure_latency(lenet_onnx, warmup=0, runs=3).to_dict()
    for key in ("rounds", "round_p50_ms", "iqr_ms", "isolated"):
        del data[key]
    data["p99_ms"] = 1.5  # older agents sent p99 from any number of runs
    old = LatencyResult.from_dict(data)
    assert old.rounds == 1 and old.round_p50_ms == [old.p50_ms]
    assert old.iqr_ms is None and old.isolated is False and old.p99_ms == 1.5


def test_an_old_row_without_the_isa_loads_with_it_blank(lenet_onnx: Path) -> None:
    data = measure_latency(lenet_onnx, warmup=0, runs=3).to_dict()
    assert set(data["hardware"]) == {f for f in HardwareFacts.__dataclass_fields__}
    del data["hardware"]["isa"]
    assert LatencyResult.from_dict(data).hardware.isa == ""


# --- the instruction sets ------------------------------------------------------------------

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_vnni avx512_bf16
processor\t: 1
flags\t\t: fpu sse2 avx avx2 amx_int8
"""
ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimddp i8mm bf16
CPU implementer\t: 0x41
"""


def test_the_isa_names_the_kernel_deciding_flags_of_the_first_cpu_in_a_fixed_order() -> None:
    assert cpu_isa(X86) == "avx2 avx512f avx512_vnni"  # the first CPU's line only
    assert cpu_isa(ARM) == "asimd asimddp i8mm"
    assert cpu_isa("processor\t: 0\nmodel name\t: something\n") == ""
    assert cpu_isa("flags\t: sse2 sse4_2\n") == ""


def test_this_machine_reports_its_isa_with_every_measurement(lenet_onnx: Path) -> None:
    r = measure_latency(lenet_onnx, warmup=0, runs=3)
    assert r.hardware.isa == cpu_isa() == HardwareFacts.current().isa
    if Path("/proc/cpuinfo").exists() and r.hardware.arch == "x86_64":
        assert "avx2" in r.hardware.isa.split()  # every x86 CI machine this runs on has AVX2


def test_the_harness_imports_without_torch() -> None:
    code = (
        "import sys; import compression.latency; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
