"""Benchmark a verified artifact through the one latency harness, plus an optional accuracy check.

Latency always comes from :func:`compression.latency.measure_latency_isolated`, the same harness
the worker host uses (a fresh child process per measurement, thread env pinned, peak RSS of that
child alone), so every latency figure in the product is measured one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim_agent.latency import measure_latency_isolated
from edgeslim_agent.protocol import BenchSettings, accuracy_percent

ProgressFn = Callable[[str, float, str], None]

MAX_EVAL_SAMPLES = 10_000


def _declared_shape(model: Path, providers: list[str]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=providers)
    return list(session.get_inputs()[0].shape)


def input_shape_for(declared: list[Any], settings: BenchSettings, batch: int) -> tuple[int, ...]:
    """The full input shape for ``batch``: settings.input_shape if given, else the model's."""
    base: list[Any] = list(settings.input_shape) if settings.input_shape else declared
    rest = []
    for dim in base[1:]:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(
                f"the model's input has a symbolic dim {dim!r}: set input_shape in the deployment"
            )
        rest.append(dim)
    return (batch, *rest)


def latency_runs(
    model: Path,
    settings: BenchSettings,
    *,
    on_progress: ProgressFn | None = None,
    skip: set[int] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(batch_index, result dict)`` per batch size, skipping indexes in ``skip``."""
    providers = settings.providers
    declared = _declared_shape(model, providers)
    n = len(settings.batch_sizes)
    for i, batch in enumerate(settings.batch_sizes):
        if skip and i in skip:
            continue
        if on_progress:
            on_progress("benchmarking", i / n, f"batch {batch}")
        shape = input_shape_for(declared, settings, batch)
        # one model per call: the deployment's runs are one round (IQR needs the host's rounds)
        (result,) = measure_latency_isolated(
            [model],
            input_shapes=[list(shape)],
            threads=settings.threads,
            warmup=settings.warmup,
            runs=settings.runs,
            rounds=1,
            providers=providers,
            profile=settings.profile,
        )
        data = result.to_dict()
        data["measured_at"] = time.time()
        yield i, data


def accuracy_check(
    model: Path, eval_set: Path, settings: BenchSettings, *, batch: int = 32
) -> dict[str, Any]:
    """Top-1 accuracy of the model on an ``.npz`` with arrays ``x`` (inputs) and ``y`` (labels).

    ``top1_pct`` is percent (0-100), with the integer ``correct`` and ``samples`` it comes from.
    """
    import onnxruntime as ort

    with np.load(eval_set, allow_pickle=False) as npz:
        if "x" not in npz or "y" not in npz:
            raise ValueError("the evaluation set needs arrays 'x' and 'y'")
        x = np.asarray(npz["x"])[:MAX_EVAL_SAMPLES]
        y = np.asarray(npz["y"])[:MAX_EVAL_SAMPLES].astype(np.int64).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("the evaluation set's x and y differ in length or are empty")
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=settings.providers)
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    correct = 0
    started = time.perf_counter()
    for start in range(0, len(x), step):
        chunk = x[start : start + step].astype(dtype)
        real = len(chunk)
        if fixed and real < fixed:  # pad the last chunk of a fixed-batch model
            pad = np.zeros((fixed - real, *chunk.shape[1:]), dtype=dtype)
            chunk = np.concatenate([chunk, pad])
        logits = session.run(None, {inp.name: chunk})[0]
        pred = np.asarray(logits).reshape(len(chunk), -1).argmax(axis=1)[:real]
        correct += int((pred == y[start : start + real]).sum())
    return {
        "top1_pct": accuracy_percent(correct, len(x)),
        "samples": len(x),
        "correct": correct,
        "seconds": time.perf_counter() - started,
    }
