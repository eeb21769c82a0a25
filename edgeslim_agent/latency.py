"""The one latency harness, run on the host and by the edge agent: stdlib, numpy, onnxruntime only.

Two ways in. :func:`measure_latency_isolated` (the host) times each model in its own fresh child
process (``python -m edgeslim_agent.latency --child``) that imports no torch and runs with the
OpenMP/BLAS thread env pinned; several models are timed in interleaved rounds so a drift of the
machine hits them all alike; the edge agent uses it too, one child per batch size.
:func:`measure_latency` times in the calling process, for callers whose process is already
torch-free and idle. Both time sequential runs after untimed warm-up runs, take
throughput from the wall time of the timed runs, give p99 only from at least 100 timed runs,
and profile operators in a separate ONNX Runtime session after the timed runs. Every result
carries the ONNX Runtime version, the execution provider and the hardware facts, plus the
run-to-run coefficient of variation; a CV above 5% marks the result unstable.

It lives in the agent's package (``edgeslim_agent``) because the device runs it; the studio
imports it from here (``compression.latency`` is the same module). It imports nothing else of
ours except, on the studio where it is present, ``compression.errors`` (torch-free), so the
library's own ``Cancelled`` is raised there; the agent's wheel has no ``compression`` package
and uses the stand-ins below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    from compression.errors import Cancelled, CompressionError
except ImportError:  # the agent's wheel ships this module without errors.py

    class CompressionError(Exception):  # type: ignore[no-redef]
        """Base class of the library's errors (stand-in where compression.errors is absent)."""

    class Cancelled(CompressionError):  # type: ignore[no-redef]
        """A measurement was cancelled (stand-in where compression.errors is absent)."""


UNSTABLE_CV = 0.05
P99_MIN_RUNS = 100  # p99 from fewer timed runs is one or two samples: not shown
PROFILE_RUNS = 10  # profiled inferences of the separate profiling session
PROFILE_WARMUP = 2  # its first inferences (allocations), left out of the profile
# Thread-count variables of OpenMP and the BLAS libraries numpy or ORT may load.
PINNED_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class LatencyError(CompressionError):
    """A measuring child failed: the model did not load, the child died or timed out."""


@dataclass(frozen=True)
class HardwareFacts:
    """Where a measurement was taken."""

    cpu_model: str
    cores: int
    arch: str
    os: str
    python: str
    # The vector and int8 instruction sets ONNX Runtime's CPU kernels choose between, from
    # ISA_FLAGS, e.g. "avx2 avx512f avx512_vnni": the same model's speedups differ between two
    # CPUs of one family when these differ (docs/benchmarks.md). "" where unknown (older agents,
    # platforms without /proc/cpuinfo).
    isa: str = ""

    @classmethod
    def current(cls) -> HardwareFacts:
        return cls(
            cpu_model=_cpu_model(),
            cores=os.cpu_count() or 1,
            arch=platform.machine(),
            os=platform.platform(),
            python=platform.python_version(),
            isa=cpu_isa(),
        )


@dataclass
class LatencyResult:
    """Latency of one ONNX model at one batch size and thread count (times in milliseconds).

    Timed runs in total are ``runs * rounds``. ``p50_ms`` is the median of the per-round
    medians (``round_p50_ms``); with one round that is the median of all timed runs. The
    other statistics are over all timed runs.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float | None  # None below P99_MIN_RUNS timed runs in total
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float  # run-to-run coefficient of variation (std / mean)
    unstable: bool  # cv above 5%
    throughput: float  # samples per second: samples of the timed runs / their wall time
    load_time_ms: float
    peak_rss_mb: float | None  # isolated: the child's peak for this model; else the process's
    batch_size: int
    input_shape: list[int]
    threads: int
    warmup: int
    runs: int  # timed runs per round
    ort_version: str
    provider: str
    hardware: HardwareFacts
    op_profile_ms: dict[str, float] = field(
        default_factory=dict
    )  # op type -> ms per inference, from a separate profiling session (profile=True)
    rounds: int = 1  # interleaved rounds of ``runs`` timed runs each
    round_p50_ms: list[float] = field(default_factory=list)  # median of each round
    iqr_ms: float | None = None  # interquartile range of round_p50_ms; None below 2 rounds
    isolated: bool = False  # timed in a fresh torch-free child process

    @property
    def timed_runs(self) -> int:
        return self.runs * self.rounds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """Rebuild from :meth:`to_dict` output.

        Unknown keys (from newer agents) are ignored; keys older rows and agents lack get
        defaults: one round whose median is ``p50_ms``, no IQR, not isolated.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        hw = values.get("hardware") or {}
        hw_names = {f.name for f in dataclasses.fields(HardwareFacts)}
        values["hardware"] = HardwareFacts(
            **{n: hw.get(n, "" if n != "cores" else 0) for n in hw_names}
        )
        values["input_shape"] = list(values.get("input_shape", []))
        values.setdefault("op_profile_ms", {})
        values.setdefault("p99_ms", None)
        values.setdefault("rounds", 1)
        if values.get("round_p50_ms") is None:
            p50 = values.get("p50_ms")
            values["round_p50_ms"] = [p50] if p50 is not None and values["rounds"] == 1 else []
        values["round_p50_ms"] = [float(v) for v in values["round_p50_ms"]]
        return cls(**values)


# The instruction-set flags that decide which ONNX Runtime CPU kernels run, in this order: x86's
# vector widths and int8 dot products (VNNI, AMX), Arm's SIMD, dot-product and int8 matmul.
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The :data:`ISA_FLAGS` the CPU has, space-separated in that order ("" when unknown).

    Reads the first ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo``, or of
    ``cpuinfo`` when given.
    """
    for line in (_read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            have = set(value.split())
            return " ".join(f for f in ISA_FLAGS if f in have)
    return ""


def _read_cpuinfo() -> str:
    """``/proc/cpuinfo``'s text ("" where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read_cpuinfo().splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def peak_rss_mb() -> float | None:
    """The process's peak resident set size in MiB, where the platform reports it.

    On Linux it is ``VmHWM`` (the high-water mark of this process's own address space):
    ``ru_maxrss`` is carried across ``fork`` and ``exec``, so an isolated child started by a
    torch-laden worker would report the worker's peak, not its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _resolve_shape(declared: list[Any], input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        if len(input_shape) != len(declared):
            raise ValueError(
                f"input_shape {tuple(input_shape)} has {len(input_shape)} dims, "
                f"the model {len(declared)}"
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


def _check_settings(*, threads: int, warmup: int, runs: int, rounds: int = 1) -> None:
    if runs < 1 or warmup < 0 or threads < 1 or rounds < 1:
        raise ValueError("runs, rounds and threads must be >= 1, warmup >= 0")


# --- one model in one process: shared by measure_latency and the child -----------------------


class _Bench:
    """An ONNX Runtime session on one model, its random input, and warm-up done."""

    def __init__(
        self,
        onnx_path: Path | str,
        *,
        input_shape: Sequence[int] | None,
        threads: int,
        providers: list[str] | None,
        seed: int,
    ) -> None:
        import onnxruntime as ort

        self.path = str(onnx_path)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        start = time.perf_counter()
        self.session = ort.InferenceSession(
            self.path, self._options(None), providers=self.providers
        )
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.ort_version: str = ort.__version__
        self.provider: str = self.session.get_providers()[0]
        inp = self.session.get_inputs()[0]
        self.shape = _resolve_shape(list(inp.shape), input_shape)
        dtype = _ORT_DTYPES.get(inp.type, np.float32)
        rng = np.random.default_rng(seed)
        if np.issubdtype(dtype, np.floating):
            x = rng.standard_normal(self.shape).astype(dtype)
        else:
            x = rng.integers(0, 127, size=self.shape).astype(dtype)
        self.feed = {inp.name: x}

    def _options(self, profile_prefix: str | None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return options

    def warm(self, warmup: int) -> None:
        for _ in range(warmup):
            self.session.run(None, self.feed)

    def timed(self, runs: int) -> tuple[list[float], float]:
        """``runs`` timed inferences: their times (ms) and the wall time of all of them (s)."""
        times: list[float] = []
        wall0 = time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            self.session.run(None, self.feed)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return times, time.perf_counter() - wall0

    def op_profile(self, runs: int = PROFILE_RUNS) -> dict[str, float]:
        """Mean ms per inference by operator type, from a fresh profiling session.

        Never the timed session: profiling slows every run it records.
        """
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="edgeslim-ortprof-") as tmp:
            session = ort.InferenceSession(
                self.path, self._options(os.path.join(tmp, "ort")), providers=self.providers
            )
            for _ in range(PROFILE_WARMUP + runs):
                session.run(None, self.feed)
            return _read_profile(session.end_profiling(), skip_runs=PROFILE_WARMUP)


def _summarize(
    rounds_ms: list[list[float]],
    wall_s: float,
    *,
    batch: int,
    load_ms: float,
    rss_mb: float | None,
    shape: Sequence[int],
    threads: int,
    warmup: int,
    ort_version: str,
    provider: str,
    op_profile: dict[str, float],
    isolated: bool,
) -> LatencyResult:
    times = sorted(t for r in rounds_ms for t in r)
    round_p50 = [_percentile(r, 50) for r in rounds_ms]
    mean = statistics.fmean(times)
    std = statistics.pstdev(times) if len(times) > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    return LatencyResult(
        p50_ms=float(statistics.median(round_p50)),
        p90_ms=_percentile(times, 90),
        p99_ms=_percentile(times, 99) if len(times) >= P99_MIN_RUNS else None,
        mean_ms=mean,
        min_ms=times[0],
        max_ms=times[-1],
        std_ms=std,
        cv=cv,
        unstable=cv > UNSTABLE_CV,
        throughput=batch * len(times) / wall_s if wall_s > 0 else 0.0,
        load_time_ms=load_ms,
        peak_rss_mb=rss_mb,
        batch_size=batch,
        input_shape=[int(d) for d in shape],
        threads=threads,
        warmup=warmup,
        runs=len(rounds_ms[0]),
        ort_version=ort_version,
        provider=provider,
        hardware=HardwareFacts.current(),
        op_profile_ms=op_profile,
        rounds=len(rounds_ms),
        round_p50_ms=round_p50,
        iqr_ms=(
            _percentile(round_p50, 75) - _percentile(round_p50, 25) if len(round_p50) > 1 else None
        ),
        isolated=isolated,
    )


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
    """Time ``runs`` sequential inferences of an ONNX model in this process, after ``warmup``.

    For a process with no torch (the edge agent). On the host use
    :func:`measure_latency_isolated`. One round: ``p50_ms`` is the median of all timed runs,
    ``iqr_ms`` is None, and ``peak_rss_mb`` is this process's peak so far.

    Args:
        onnx_path: the model.
        input_shape: full input shape including the batch; defaults to the model's, batch 1.
        threads: intra-op threads (inter-op is 1 and execution is sequential).
        warmup: untimed runs first.
        runs: timed runs; p99 is given from ``P99_MIN_RUNS`` on.
        providers: ONNX Runtime execution providers; CPU by default.
        profile: also collect per-op-type time, in a separate session after the timed runs.
        seed: seed of the random input.

    Returns:
        The latency statistics with the runtime and hardware facts.
    """
    _check_settings(threads=threads, warmup=warmup, runs=runs)
    bench = _Bench(
        onnx_path, input_shape=input_shape, threads=threads, providers=providers, seed=seed
    )
    bench.warm(warmup)
    times, wall_s = bench.timed(runs)
    rss = peak_rss_mb()
    op_profile = bench.op_profile() if profile else {}
    return _summarize(
        [times],
        wall_s,
        batch=bench.shape[0] if bench.shape else 1,
        load_ms=bench.load_ms,
        rss_mb=rss,
        shape=bench.shape,
        threads=threads,
        warmup=warmup,
        ort_version=bench.ort_version,
        provider=bench.provider,
        op_profile=op_profile,
        isolated=False,
    )


# --- isolated measurement: one child process per model ----------------------------------------


def pinned_env(threads: int) -> dict[str, str]:
    """The environment of a measuring child: ours, with every thread-count variable pinned."""
    env = dict(os.environ)
    for name in PINNED_ENV:
        env[name] = str(threads)
    # the child runs ``-m edgeslim_agent.latency``: make this copy of the package importable
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


class LatencyChild:
    """A measuring child process: JSON commands on its stdin, one JSON reply line each.

    Commands: ``load`` (open the model and warm up), ``run`` (timed runs), ``stats`` (peak RSS),
    ``profile`` (op times in a separate session), ``detect`` (a detector's timed runs, each with
    its post-processing), ``exit``. Always :meth:`close` it.
    """

    def __init__(self, label: str, *, threads: int) -> None:
        self.label = label
        # a file, not a pipe: a chatty child can never block on a full stderr pipe
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeslim_agent.latency", "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=pinned_env(threads),
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)  # EOF: the child is gone

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", errors="replace").strip()
        return text[-1500:]

    def request(
        self,
        command: dict[str, Any],
        *,
        timeout_s: float,
        should_cancel: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply, polling ``should_cancel`` while waiting.

        Raises:
            Cancelled: ``should_cancel`` returned True.
            LatencyError: the child failed the command, died, or took over ``timeout_s``.
        """
        assert self.proc.stdin is not None
        what = command.get("cmd", "?")
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise self._died(what) from exc
        deadline = time.monotonic() + timeout_s
        while True:
            _check_cancel(should_cancel)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LatencyError(
                    f"measuring {self.label}: the child took over {timeout_s:g} s on '{what}'"
                )
            try:
                line = self._replies.get(timeout=min(left, 0.25))
            except queue.Empty:
                continue
            if line is None:
                raise self._died(what)
            reply: dict[str, Any] = json.loads(line)
            if not reply.get("ok"):
                raise LatencyError(f"measuring {self.label}: {reply.get('error', 'failed')}")
            return reply

    def _died(self, what: str) -> LatencyError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr_tail()
        return LatencyError(
            f"measuring {self.label}: the child exited (code {code}) during '{what}'"
            + (f": {tail}" if tail else "")
        )

    def close(self) -> None:
        """Stop the child (kill it if it does not exit at once) and reap it."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=2)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._stderr.close()


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("latency measurement cancelled")


def round_order(models: int, round_index: int) -> list[int]:
    """Which model runs when in a round: rotated by one each round, so none is always first."""
    shift = round_index % models if models else 0
    return [(i + shift) % models for i in range(models)]


def measure_round_medians(
    onnx_paths: Sequence[Path | str],
    *,
    input_shape: Sequence[int] | None = None,
    threads: int = 2,
    warmup: int = 5,
    rounds: int = 5,
    min_runs: int = 10,
    min_round_ms: float = 5.0,
    seed: int = 0,
) -> list[list[float]]:
    """Several small models timed side by side in this process: each one's median per round (ms).

    One session per model is built and warmed once; then in each of ``rounds`` rounds every
    model (order rotated, :func:`round_order`) runs at least ``min_runs`` timed inferences and
    keeps going until ``min_round_ms`` of them have passed, so a model of a few microseconds is
    timed over as long a stretch as a slow one. Returns ``medians[model][round]``: pairing the
    models' medians of the same round, which ran back to back, cancels a load that drifts
    between rounds. For single layers (the decomposition latency gate), where a fresh child per
    model (:func:`measure_latency_isolated`) would cost more than the timing.
    """
    _check_settings(threads=threads, warmup=warmup, runs=min_runs, rounds=rounds)
    if min_round_ms < 0:
        raise ValueError(f"min_round_ms must be >= 0, got {min_round_ms}")
    benches = [
        _Bench(p, input_shape=input_shape, threads=threads, providers=None, seed=seed)
        for p in onnx_paths
    ]
    for bench in benches:
        bench.warm(warmup)
    medians: list[list[float]] = [[] for _ in benches]
    for r in range(rounds):
        for i in round_order(len(benches), r):
            times, wall_s = benches[i].timed(min_runs)
            while wall_s * 1000.0 < min_round_ms:
                more, more_s = benches[i].timed(min_runs)
                times += more
                wall_s += more_s
            medians[i].append(statistics.median(times))
    return medians


def _shapes_per_model(
    input_shapes: Sequence[Sequence[int]] | Sequence[int] | None, n: int
) -> list[list[int] | None]:
    if input_shapes is None or len(input_shapes) == 0:
        return [None] * n
    items: list[Any] = list(input_shapes)
    if all(isinstance(d, int) for d in items):  # one shape shared by every model
        return [[int(d) for d in items] for _ in range(n)]
    shapes: list[list[int] | None] = [[int(d) for d in s] for s in items]
    if len(shapes) != n:
        raise ValueError(f"{len(shapes)} input shapes for {n} models: give one, or one per model")
    return shapes


def measure_latency_isolated(
    onnx_paths: Sequence[Path | str],
    *,
    input_shapes: Sequence[Sequence[int]] | Sequence[int] | None = None,
    threads: int = 2,
    warmup: int = 10,
    runs: int = 50,
    rounds: int = 5,
    providers: list[str] | None = None,
    profile: bool = False,
    seed: int = 0,
    timeout_s: float = 300.0,
    should_cancel: Callable[[], bool] | None = None,
) -> list[LatencyResult]:
    """Time several ONNX models, each in its own fresh torch-free child, in interleaved rounds.

    One child per model (``python -m edgeslim_agent.latency --child``) starts with OMP, MKL,
    OpenBLAS and the other thread-count variables pinned to ``threads``, loads its model and
    runs ``warmup`` untimed inferences. Then in each of ``rounds`` rounds every model runs
    ``runs`` timed inferences in turn, the order rotated by one each round
    (:func:`round_order`), so a machine that drifts (thermal, a neighbour) hurts every model
    alike. Comparisons (baseline vs stage vs final) belong in one call.

    Per model, ``p50_ms`` is the median of the per-round medians (``round_p50_ms``) and
    ``iqr_ms`` their interquartile range; mean, std, cv, p90, min and max are over all
    ``runs * rounds`` timed runs; ``p99_ms`` is None below ``P99_MIN_RUNS`` of them;
    throughput is samples of the timed runs over their wall time; ``peak_rss_mb`` is the
    child's own peak (that model alone, taken before any profiling); ``load_time_ms`` is the
    ORT session creation. With ``profile=True`` each child then profiles operators in a
    separate session (``op_profile_ms``, ms per inference); the timed runs are never profiled.

    Children are always killed and reaped, also on errors and cancel.

    Args:
        onnx_paths: the models, in the order of the results.
        input_shapes: full input shape including the batch, one shared by all models or one
            per model; None: each model's declared shape, batch 1.
        threads: intra-op threads and the pinned OpenMP/BLAS thread count.
        warmup: untimed inferences per model before the first round.
        runs: timed inferences per model per round.
        rounds: interleaved rounds.
        providers: ONNX Runtime execution providers; CPU by default.
        profile: also collect per-op-type time (after the timed rounds).
        seed: seed of the random inputs.
        timeout_s: limit of each request to a child (starting and warming up, one model's
            round, the profile).
        should_cancel: polled between rounds and models and while waiting on a child.

    Returns:
        One :class:`LatencyResult` per model, ``isolated`` True.

    Raises:
        Cancelled: ``should_cancel`` returned True (``compression.errors.Cancelled`` where that
            module exists, as on the host; a stand-in of the same name in the agent's wheel).
        LatencyError: a model failed to load, or its child died or timed out; names the file.
        ValueError: bad settings or shapes.
    """
    _check_settings(threads=threads, warmup=warmup, runs=runs, rounds=rounds)
    paths = [Path(p) for p in onnx_paths]
    if not paths:
        raise ValueError("no model to measure")
    shapes = _shapes_per_model(input_shapes, len(paths))
    children: list[LatencyChild] = []
    try:
        loaded: list[dict[str, Any]] = []
        for i, path in enumerate(paths):  # not zip(strict=): the agent's wheel allows Python 3.9
            shape = shapes[i]
            _check_cancel(should_cancel)
            child = LatencyChild(str(path), threads=threads)
            children.append(child)
            loaded.append(
                child.request(
                    {
                        "cmd": "load",
                        "path": str(path.resolve()),
                        "input_shape": shape,
                        "threads": threads,
                        "providers": providers,
                        "seed": seed,
                        "warmup": warmup,
                    },
                    timeout_s=timeout_s,
                    should_cancel=should_cancel,
                )
            )
        rounds_ms: list[list[list[float]]] = [[] for _ in paths]
        wall_s = [0.0 for _ in paths]
        for r in range(rounds):
            for i in round_order(len(paths), r):
                _check_cancel(should_cancel)
                reply = children[i].request(
                    {"cmd": "run", "runs": runs}, timeout_s=timeout_s, should_cancel=should_cancel
                )
                rounds_ms[i].append([float(t) for t in reply["times_ms"]])
                wall_s[i] += float(reply["wall_s"])
        results: list[LatencyResult] = []
        for i, child in enumerate(children):
            _check_cancel(should_cancel)
            stats = child.request({"cmd": "stats"}, timeout_s=timeout_s)
            op_profile: dict[str, float] = {}
            if profile:
                op_profile = child.request(
                    {"cmd": "profile"}, timeout_s=timeout_s, should_cancel=should_cancel
                )["op_profile_ms"]
            shape = loaded[i]["input_shape"]
            results.append(
                _summarize(
                    rounds_ms[i],
                    wall_s[i],
                    batch=shape[0] if shape else 1,
                    load_ms=float(loaded[i]["load_time_ms"]),
                    rss_mb=stats["peak_rss_mb"],
                    shape=shape,
                    threads=threads,
                    warmup=warmup,
                    ort_version=loaded[i]["ort_version"],
                    provider=loaded[i]["provider"],
                    op_profile=op_profile,
                    isolated=True,
                )
            )
        return results
    finally:
        for child in children:
            child.close()


# --- detectors: the network alone and end to end with post-processing ------------------------


@dataclass
class DetectorLatency:
    """A detector's latency without and with its post-processing (milliseconds, one batch).

    Every timed run is one ONNX Runtime inference (``network``) followed by the numpy decode
    and NMS of :mod:`edgeslim_agent.detect_post` on that inference's outputs
    (``postprocess``); ``end_to_end`` is their sum per run. Each p50 is the median of its own
    series, so ``end_to_end_p50_ms`` is close to, not exactly, the sum of the other two.
    """

    network_p50_ms: float
    postprocess_p50_ms: float
    end_to_end_p50_ms: float
    network_fps: float  # images per second from network_p50_ms
    end_to_end_fps: float  # images per second from end_to_end_p50_ms
    detections_per_image: float  # mean over the timed runs' images
    score_threshold: float
    batch_size: int
    input_shape: list[int]
    runs: int
    warmup: int
    threads: int
    isolated: bool = False
    # The rest of each series' statistics (the agent reports them with every detector result);
    # p99 is None below P99_MIN_RUNS timed runs, as LatencyResult's.
    network_p90_ms: float | None = None
    network_mean_ms: float | None = None
    end_to_end_p90_ms: float | None = None
    end_to_end_p99_ms: float | None = None
    end_to_end_mean_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_images(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)


def _time_detector(
    bench: _Bench, *, runs: int, warmup: int, images: np.ndarray | None
) -> dict[str, Any]:
    """Timed ORT runs, each followed by the post-processing of its own outputs."""
    from edgeslim_agent import detect_post

    text = bench.session.get_modelmeta().custom_metadata_map.get(detect_post.META_KEY)
    if not text:
        raise detect_post.DetectionError(
            f"{Path(bench.path).name} carries no detection metadata "
            f"({detect_post.META_KEY}): the post-processing cannot decode its outputs"
        )
    meta = detect_post.DetectorMeta.from_json(text)
    name = bench.session.get_inputs()[0].name
    if images is None:  # image-like input: a detector's scores depend on what it sees
        rng = np.random.default_rng(0)
        images = rng.random(bench.shape).astype(np.float32)
    feed = {name: images}
    detect_post.recognise_outputs([np.shape(o) for o in bench.session.run(None, feed)], meta)
    for _ in range(warmup):
        detect_post.postprocess(bench.session.run(None, feed), meta)
    network, post, total, found = [], [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        outputs = bench.session.run(None, feed)
        t1 = time.perf_counter_ns()
        detections = detect_post.postprocess(outputs, meta)
        t2 = time.perf_counter_ns()
        network.append((t1 - t0) / 1e6)
        post.append((t2 - t1) / 1e6)
        total.append((t2 - t0) / 1e6)
        found += sum(len(d) for d in detections)
    return {
        "network_ms": network,
        "postprocess_ms": post,
        "end_to_end_ms": total,
        "detections": found,
        "batch_size": int(images.shape[0]),
        "input_shape": [int(d) for d in images.shape],
        "score_threshold": meta.score_threshold,
    }


def _detector_result(
    timed: dict[str, Any], *, runs: int, warmup: int, threads: int, isolated: bool
) -> DetectorLatency:
    batch = int(timed["batch_size"])
    network = float(statistics.median(timed["network_ms"]))
    total = float(statistics.median(timed["end_to_end_ms"]))
    return DetectorLatency(
        network_p50_ms=network,
        postprocess_p50_ms=float(statistics.median(timed["postprocess_ms"])),
        end_to_end_p50_ms=total,
        network_fps=batch * 1000.0 / network if network > 0 else 0.0,
        end_to_end_fps=batch * 1000.0 / total if total > 0 else 0.0,
        detections_per_image=timed["detections"] / (runs * batch),
        score_threshold=float(timed["score_threshold"]),
        batch_size=batch,
        input_shape=list(timed["input_shape"]),
        runs=runs,
        warmup=warmup,
        threads=threads,
        isolated=isolated,
        network_p90_ms=_percentile(timed["network_ms"], 90),
        network_mean_ms=float(statistics.fmean(timed["network_ms"])),
        end_to_end_p90_ms=_percentile(timed["end_to_end_ms"], 90),
        end_to_end_p99_ms=(
            _percentile(timed["end_to_end_ms"], 99) if runs >= P99_MIN_RUNS else None
        ),
        end_to_end_mean_ms=float(statistics.fmean(timed["end_to_end_ms"])),
    )


def measure_detector_latency(
    onnx_path: Path | str,
    *,
    images: np.ndarray | None = None,
    input_shape: Sequence[int] | None = None,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 30,
    providers: list[str] | None = None,
    isolated: bool = True,
    timeout_s: float = 300.0,
    should_cancel: Callable[[], bool] | None = None,
) -> DetectorLatency:
    """Time a raw-output ONNX detector (one carrying the detection metadata) for the network
    alone and end to end with :func:`edgeslim_agent.detect_post.postprocess`.

    Args:
        onnx_path: the detector's raw export.
        images: float ``(N, 3, S, S)`` in [0, 1] to feed (real images give a real number of
            boxes to sort out); by default seeded uniform noise of the model's input shape.
        input_shape: the input shape when ``images`` is not given; the model's, batch 1, by
            default.
        threads: intra-op threads (and, isolated, the pinned OpenMP/BLAS thread count).
        warmup: untimed inference + post-processing runs first.
        runs: timed runs.
        providers: ONNX Runtime execution providers; CPU by default.
        isolated: time in a fresh torch-free child (the host); False times in this process
            (the agent, whose process has no torch).
        timeout_s: limit of each request to the child.
        should_cancel: polled while waiting on the child.

    Raises:
        LatencyError: the model has no detection metadata, its outputs do not fit it, or the
            child failed.
    """
    _check_settings(threads=threads, warmup=warmup, runs=runs)
    shape = list(images.shape) if images is not None else input_shape
    if not isolated:
        from edgeslim_agent.detect_post import DetectionError

        bench = _Bench(
            onnx_path,
            input_shape=shape,
            threads=threads,
            providers=providers,
            seed=0,
        )
        try:
            timed = _time_detector(bench, runs=runs, warmup=warmup, images=images)
        except DetectionError as exc:
            raise LatencyError(f"measuring {Path(onnx_path).name}: {exc}") from exc
        return _detector_result(timed, runs=runs, warmup=warmup, threads=threads, isolated=False)
    child = LatencyChild(str(onnx_path), threads=threads)
    with tempfile.TemporaryDirectory(prefix="edgeslim-detlat-") as tmp:
        images_path = None
        if images is not None:
            images_path = os.path.join(tmp, "images.npy")
            np.save(images_path, np.asarray(images, dtype=np.float32))
        try:
            child.request(
                {
                    "cmd": "load",
                    "path": str(Path(onnx_path).resolve()),
                    "input_shape": [int(d) for d in shape] if shape is not None else None,
                    "threads": threads,
                    "providers": providers,
                    "seed": 0,
                    "warmup": 0,
                },
                timeout_s=timeout_s,
                should_cancel=should_cancel,
            )
            timed = child.request(
                {"cmd": "detect", "runs": runs, "warmup": warmup, "images_path": images_path},
                timeout_s=timeout_s,
                should_cancel=should_cancel,
            )
        finally:
            child.close()
    return _detector_result(timed, runs=runs, warmup=warmup, threads=threads, isolated=True)


# --- the child's side -------------------------------------------------------------------------


def _child_handle(command: dict[str, Any], state: dict[str, _Bench]) -> dict[str, Any]:
    what = command.get("cmd")
    if what == "load":
        bench = _Bench(
            command["path"],
            input_shape=command.get("input_shape"),
            threads=int(command["threads"]),
            providers=command.get("providers"),
            seed=int(command.get("seed", 0)),
        )
        bench.warm(int(command.get("warmup", 0)))
        state["bench"] = bench
        return {
            "load_time_ms": bench.load_ms,
            "input_shape": list(bench.shape),
            "ort_version": bench.ort_version,
            "provider": bench.provider,
        }
    if what == "info":
        return {
            "torch_imported": "torch" in sys.modules,
            "env": {name: os.environ.get(name) for name in PINNED_ENV},
            "pid": os.getpid(),
        }
    if what == "exit":
        return {}
    if "bench" not in state:
        raise RuntimeError(f"'{what}' before 'load'")
    if what == "run":
        times, wall = state["bench"].timed(int(command["runs"]))
        return {"times_ms": times, "wall_s": wall}
    if what == "stats":
        return {"peak_rss_mb": peak_rss_mb()}
    if what == "profile":
        return {"op_profile_ms": state["bench"].op_profile()}
    if what == "detect":
        images = _load_images(command.get("images_path"))
        return _time_detector(
            state["bench"],
            runs=int(command["runs"]),
            warmup=int(command.get("warmup", 0)),
            images=images,
        )
    raise ValueError(f"unknown command {what!r}")


def _child_main(stdin: IO[str]) -> int:
    """Serve JSON commands on stdin, one JSON reply line each on the real stdout."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever native code prints goes to stderr, never into the replies
    sys.stdout = sys.stderr
    state: dict[str, _Bench] = {}
    for line in stdin:
        if not line.strip():
            continue
        command: dict[str, Any] = {}
        try:
            command = json.loads(line)
            reply = {"ok": True, **_child_handle(command, state)}
        except Exception as exc:  # reported to the parent, which raises LatencyError
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if command.get("cmd") == "exit":
            break
    return 0


def _read_profile(path: str, *, skip_runs: int = 0) -> dict[str, float]:
    """Mean kernel ms per inference by op type, leaving out the first ``skip_runs`` runs."""
    try:
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    except (OSError, ValueError):
        return {}
    run_events = sorted(
        (ev for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run"),
        key=lambda ev: float(ev.get("ts", 0)),
    )
    counted = run_events[skip_runs:]
    if not counted:
        return {}
    since = float(counted[0].get("ts", 0))
    totals: dict[str, float] = {}
    for ev in events:
        args = ev.get("args") or {}
        op = args.get("op_name")
        if (
            ev.get("cat") == "Node"
            and op
            and str(ev.get("name", "")).endswith("_kernel_time")
            and float(ev.get("ts", 0)) >= since
        ):
            totals[op] = totals.get(op, 0.0) + float(ev.get("dur", 0)) / 1000.0
    per_run = {op: ms / len(counted) for op, ms in totals.items()}
    return dict(sorted(per_run.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        sys.exit(_child_main(sys.stdin))
    sys.exit("usage: python -m edgeslim_agent.latency --child (JSON commands on stdin)")
