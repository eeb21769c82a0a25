"""The one latency harness, run on the host and by the edge agent: stdlib, numpy, onnxruntime only.

Warm-up runs first, then timed sequential runs with a fixed thread count. Every result carries
the ONNX Runtime version, the execution provider and the hardware facts, plus the run-to-run
coefficient of variation; a CV above 5% marks the result unstable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

UNSTABLE_CV = 0.05

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True)
class HardwareFacts:
    """Where a measurement was taken."""

    cpu_model: str
    cores: int
    arch: str
    os: str
    python: str

    @classmethod
    def current(cls) -> HardwareFacts:
        return cls(
            cpu_model=_cpu_model(),
            cores=os.cpu_count() or 1,
            arch=platform.machine(),
            os=platform.platform(),
            python=platform.python_version(),
        )


@dataclass
class LatencyResult:
    """Latency of one ONNX model at one batch size and thread count (times in milliseconds)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float  # run-to-run coefficient of variation (std / mean)
    unstable: bool  # cv above 5%
    throughput: float  # samples per second at the median
    load_time_ms: float
    peak_rss_mb: float | None
    batch_size: int
    input_shape: list[int]
    threads: int
    warmup: int
    runs: int
    ort_version: str
    provider: str
    hardware: HardwareFacts
    op_profile_ms: dict[str, float] = field(
        default_factory=dict
    )  # op type -> total ms (profile=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """Rebuild from :meth:`to_dict` output; unknown keys (from newer agents) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        hw = values.get("hardware") or {}
        hw_names = {f.name for f in dataclasses.fields(HardwareFacts)}
        values["hardware"] = HardwareFacts(
            **{n: hw.get(n, "" if n != "cores" else 0) for n in hw_names}
        )
        values["input_shape"] = list(values.get("input_shape", []))
        values.setdefault("op_profile_ms", {})
        return cls(**values)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def peak_rss_mb() -> float | None:
    """The process's peak resident set size in MiB, where the platform reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _percentile(sorted_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_ms), q))


def _resolve_shape(declared: list[Any], input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is not None:
        if len(input_shape) != len(declared):
            raise ValueError(
                f"input_shape {input_shape} has {len(input_shape)} dims, the model {len(declared)}"
            )
        return tuple(int(v) for v in input_shape)
    shape = []
    for i, dim in enumerate(declared):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif i == 0:
            shape.append(1)  # a symbolic batch axis: measure batch 1
        else:
            raise ValueError(f"the model's input has a symbolic dim {dim!r}; pass input_shape")
    return tuple(shape)


def measure_latency(
    onnx_path: Path | str,
    *,
    input_shape: tuple[int, ...] | None = None,
    threads: int = 2,
    warmup: int = 10,
    runs: int = 50,
    providers: list[str] | None = None,
    profile: bool = False,
    seed: int = 0,
) -> LatencyResult:
    """Time ``runs`` sequential inferences of an ONNX model after ``warmup`` untimed ones.

    Args:
        onnx_path: the model.
        input_shape: full input shape including the batch; defaults to the model's, batch 1.
        threads: intra-op threads (inter-op is 1 and execution is sequential).
        warmup: untimed runs first.
        runs: timed runs.
        providers: ONNX Runtime execution providers; CPU by default.
        profile: also collect ONNX Runtime's per-op-type time (slower; for the report's detail).
        seed: seed of the random input.

    Returns:
        The latency statistics with the runtime and hardware facts.
    """
    import onnxruntime as ort

    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError("runs and threads must be >= 1, warmup >= 0")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    profile_dir = None
    if profile:
        profile_dir = tempfile.mkdtemp(prefix="edgeslim-ortprof-")
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "ort")
    start = time.perf_counter()
    session = ort.InferenceSession(
        str(onnx_path), options, providers=providers or ["CPUExecutionProvider"]
    )
    load_ms = (time.perf_counter() - start) * 1000.0
    inp = session.get_inputs()[0]
    shape = _resolve_shape(list(inp.shape), input_shape)
    dtype = _ORT_DTYPES.get(inp.type, np.float32)
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        x = rng.standard_normal(shape).astype(dtype)
    else:
        x = rng.integers(0, 127, size=shape).astype(dtype)
    feed = {inp.name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    op_profile: dict[str, float] = {}
    if profile:
        op_profile = _read_profile(session.end_profiling())
        if profile_dir:
            for p in Path(profile_dir).iterdir():
                p.unlink()
            os.rmdir(profile_dir)
    times.sort()
    mean = statistics.fmean(times)
    std = statistics.pstdev(times) if len(times) > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    p50 = _percentile(times, 50)
    batch = shape[0] if shape else 1
    return LatencyResult(
        p50_ms=p50,
        p90_ms=_percentile(times, 90),
        p99_ms=_percentile(times, 99),
        mean_ms=mean,
        min_ms=times[0],
        max_ms=times[-1],
        std_ms=std,
        cv=cv,
        unstable=cv > UNSTABLE_CV,
        throughput=batch * 1000.0 / p50 if p50 > 0 else 0.0,
        load_time_ms=load_ms,
        peak_rss_mb=peak_rss_mb(),
        batch_size=batch,
        input_shape=list(shape),
        threads=threads,
        warmup=warmup,
        runs=runs,
        ort_version=ort.__version__,
        provider=session.get_providers()[0],
        hardware=HardwareFacts.current(),
        op_profile_ms=op_profile,
    )


def _read_profile(path: str) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    except (OSError, ValueError):
        return {}
    totals: dict[str, float] = {}
    for ev in events:
        args = ev.get("args") or {}
        op = args.get("op_name")
        if ev.get("cat") == "Node" and op and str(ev.get("name", "")).endswith("_kernel_time"):
            totals[op] = totals.get(op, 0.0) + float(ev.get("dur", 0)) / 1000.0
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
