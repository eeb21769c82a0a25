"""Benchmark a verified artifact through the one latency harness, plus an optional accuracy check
(top-1 for a classifier, mAP for a detector: :mod:`edgeslim_agent.detect_eval`).

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

from edgeslim_agent.detect_eval import (
    TASK_DETECTION,
    detector_meta_of,
    eval_set_task,
    evaluate_session,
    load_detection_eval_set,
)
from edgeslim_agent.detect_post import DetectionError, DetectorMeta, recognise_outputs
from edgeslim_agent.latency import measure_detector_latency, measure_latency_isolated
from edgeslim_agent.protocol import BenchSettings, accuracy_percent

ProgressFn = Callable[[str, float, str], None]

MAX_EVAL_SAMPLES = 10_000


def _session(model: Path, providers: list[str], threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=providers)


def model_facts(model: Path, providers: list[str]) -> tuple[list[Any], DetectorMeta | None]:
    """The model's declared input shape and, for a detector, its detection metadata (checked
    against its outputs: a detector whose outputs the post-processing does not know is refused
    here with :class:`~edgeslim_agent.detect_post.DetectionError`)."""
    session = _session(model, providers)
    declared = list(session.get_inputs()[0].shape)
    meta = detector_meta_of(session)
    if meta is not None:
        recognise_outputs([o.shape for o in session.get_outputs()], meta, input_shape=declared)
    return declared, meta


def _detector_images(eval_set: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The first ``batch`` images of a detection evaluation set, scaled to [0, 1], to time the
    end-to-end path on (real images give a real number of boxes to sort out); None without one.
    """
    if eval_set is None or eval_set_task(eval_set) != TASK_DETECTION:
        return None
    data = load_detection_eval_set(eval_set)
    if tuple(data.x.shape[1:]) != tuple(shape[1:]):
        return None
    idx = np.arange(shape[0]) % len(data)
    return data.x[idx].astype(np.float32) / np.float32(255.0)


def detector_figures(
    model: Path,
    settings: BenchSettings,
    shape: tuple[int, ...],
    *,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """A detector's frames per second without and with post-processing at one batch size, and
    the end-to-end latency statistics (the keys of ``protocol.DETECTION_LATENCY_KEYS``): one
    isolated run of :func:`~edgeslim_agent.latency.measure_detector_latency`, each timed run an
    inference followed by the numpy decode and NMS of its outputs."""
    lat = measure_detector_latency(
        model,
        images=images,
        input_shape=None if images is not None else list(shape),
        threads=settings.threads,
        warmup=settings.warmup,
        runs=settings.runs,
        providers=settings.providers,
        isolated=True,
    )
    return {
        "task": TASK_DETECTION,
        "fps": lat.network_fps,
        "fps_e2e": lat.end_to_end_fps,
        "net_p50_ms": lat.network_p50_ms,
        "e2e_p50_ms": lat.end_to_end_p50_ms,
        "e2e_p90_ms": lat.end_to_end_p90_ms,
        "e2e_p99_ms": lat.end_to_end_p99_ms,
        "e2e_mean_ms": lat.end_to_end_mean_ms,
        "postprocess_p50_ms": lat.postprocess_p50_ms,
        "detections_per_image": lat.detections_per_image,
        "e2e_score_threshold": lat.score_threshold,
        "e2e_images": "evaluation set" if images is not None else "noise",
    }


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
    eval_set: Path | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(batch_index, result dict)`` per batch size, skipping indexes in ``skip``.

    A detector (an ONNX carrying ``edgeslim.detection`` metadata) is also timed end to end at
    each batch size (:func:`detector_figures`), on the images of ``eval_set`` when it is a
    detection set, else on noise."""
    providers = settings.providers
    declared, meta = model_facts(model, providers)
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
        if meta is not None:
            if on_progress:
                on_progress("benchmarking", (i + 0.5) / n, f"batch {batch}, end to end")
            data.update(
                detector_figures(model, settings, shape, images=_detector_images(eval_set, shape))
            )
        data["measured_at"] = time.time()
        yield i, data


def detection_accuracy_check(
    model: Path,
    eval_set: Path,
    settings: BenchSettings,
    *,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """mAP@0.5 and mAP@0.5:0.95 (0-1) of a detector on a detection evaluation set
    (:mod:`edgeslim_agent.detect_eval`).

    Raises:
        EvalSetError: the set is malformed, over a cap, or not at the detector's input size.
        DetectionError: the model is not a detector whose outputs the post-processing knows.
    """
    data = load_detection_eval_set(eval_set)
    session = _session(model, settings.providers, settings.threads)
    meta = detector_meta_of(session)
    if meta is None:
        raise DetectionError(
            "the evaluation set is a detection set but the model carries no detection "
            "metadata (edgeslim.detection): it cannot be scored with mAP"
        )

    def on_batch(done: int, total: int) -> None:
        if on_progress:
            on_progress("evaluating", done / max(total, 1), f"mAP: {done}/{total} images")

    return evaluate_session(session, data, meta, on_batch=on_batch)


def accuracy_check(
    model: Path,
    eval_set: Path,
    settings: BenchSettings,
    *,
    batch: int = 32,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy of the model on an ``.npz`` with arrays ``x`` (inputs) and ``y`` (labels),
    or, for a detection set (``task`` ``"detection"``), the detector's mAP
    (:func:`detection_accuracy_check`).

    ``top1_pct`` is percent (0-100), with the integer ``correct`` and ``samples`` it comes from.
    """
    import onnxruntime as ort

    if eval_set_task(eval_set) == TASK_DETECTION:
        return detection_accuracy_check(model, eval_set, settings, on_progress=on_progress)
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
    if detector_meta_of(session) is not None:
        raise DetectionError(
            "the model is a detector (it carries edgeslim.detection metadata) but the "
            "evaluation set is a classification set: top-1 accuracy does not apply"
        )
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
