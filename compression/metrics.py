"""Measure a model: accuracy, parameter and MAC counts, ONNX file sizes and measured latency."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.evaluation import accuracy
from compression.latency import LatencyResult, measure_latency_isolated
from compression.macs import count_macs as count_macs  # the one counter, re-exported
from compression.stage import ModelState


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero_params(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


def onnx_param_counts(onnx_path: Path | str) -> tuple[int, int]:
    """``(params, nonzero_params)`` over an ONNX file's initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    total = nonzero = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    return total, nonzero


def file_sizes(onnx_path: Path | str) -> tuple[int, int]:
    """``(raw_bytes, zipped_bytes)``: the file, and the file deflated in memory.

    The zipped size shows what unstructured sparsity and weight sharing save on the wire.
    """
    data = Path(onnx_path).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.onnx", data)
    return len(data), len(buf.getvalue())


@dataclass
class ModelMetrics:
    """What the report shows for one model state.

    ``accuracy`` is top-1 in percent on the data set's held-out **test** split (what every
    report, verdict and comparison uses); ``val_accuracy`` is the same on the validation split,
    which served the training-time choices. ``latency`` is filled by an interleaved comparison
    in a torch-free child process; ``peak_mem_mb`` is that child's peak RSS for this model alone.

    For a detector (``task == "detection"``, ``metric == "mAP@0.5"``) ``accuracy`` and
    ``val_accuracy`` are mAP@0.5 in percent on the test and validation splits, so every verdict
    and comparison reads "mAP@0.5 pt"; ``detection`` holds the fractions (``map50``,
    ``map50_95``, ``val_map50``, ``per_class``, ``images``, ``boxes``); ``latency`` is the
    network alone and ``latency_e2e`` the network plus the numpy decode and NMS.
    """

    accuracy: float
    params: int
    nonzero_params: int
    macs: int | None
    onnx_bytes: int
    onnx_zip_bytes: int
    latency: LatencyResult | None
    peak_mem_mb: float | None
    parity_max_abs_diff: float | None
    format: str = "torch"
    val_accuracy: float | None = None
    eval_split: str = "test"
    test_images: int | None = None
    onnx_path: str | None = None  # the measured ONNX file (relative to the run folder in reports)
    task: str = "classification"
    metric: str = "top-1"  # what accuracy measures: "top-1" or "mAP@0.5"
    detection: dict[str, Any] | None = None  # a detector's mAP figures (fractions 0-1)
    latency_e2e: LatencyResult | None = None  # a detector: network + decode + NMS

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "accuracy": self.accuracy,
            "val_accuracy": self.val_accuracy,
            "eval_split": self.eval_split,
            "test_images": self.test_images,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "onnx_bytes": self.onnx_bytes,
            "onnx_zip_bytes": self.onnx_zip_bytes,
            "latency": self.latency.to_dict() if self.latency else None,
            "peak_mem_mb": self.peak_mem_mb,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "format": self.format,
            "onnx_path": self.onnx_path,
            "detection": self.detection,
            "latency_e2e": self.latency_e2e.to_dict() if self.latency_e2e else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        lat = data.get("latency")
        val = data.get("val_accuracy")
        test_images = data.get("test_images")
        lat_e2e = data.get("latency_e2e")
        task = str(data.get("task") or "classification")  # older reports: classifiers
        return cls(
            accuracy=float(data["accuracy"]),
            params=int(data["params"]),
            nonzero_params=int(data["nonzero_params"]),
            macs=None if data.get("macs") is None else int(data["macs"]),
            onnx_bytes=int(data["onnx_bytes"]),
            onnx_zip_bytes=int(data["onnx_zip_bytes"]),
            latency=LatencyResult.from_dict(lat) if lat else None,
            peak_mem_mb=data.get("peak_mem_mb"),
            parity_max_abs_diff=data.get("parity_max_abs_diff"),
            format=str(data.get("format", "torch")),
            val_accuracy=None if val is None else float(val),
            eval_split=str(data.get("eval_split", "val")),
            test_images=None if test_images is None else int(test_images),
            onnx_path=data.get("onnx_path"),
            task=task,
            metric=str(data.get("metric") or ("mAP@0.5" if task == "detection" else "top-1")),
            detection=data.get("detection"),
            latency_e2e=LatencyResult.from_dict(lat_e2e) if lat_e2e else None,
        )


def measure_model(
    model: ModelState,
    data: Any,
    work_dir: Path | str,
    *,
    latency_runs: int = 50,
    warmup: int = 10,
    threads: int = 2,
    batch_size: int = 1,
    rounds: int = 5,
    device: torch.device | str = "cpu",
    macs_hint: int | None = None,
    onnx_name: str = "model.onnx",
    parity_atol: float = 1e-3,
    check_cancel: Callable[[], None] | None = None,
) -> ModelMetrics:
    """Measure one model state on ``data`` (a DatasetBundle): test and val accuracy, params,
    MACs, ONNX sizes and, unless ``latency_runs=0``, latency.

    A torch model is exported to ``work_dir/onnx_name`` first (and its parity with torch
    checked); an ONNX state is measured as it is. ``macs_hint`` fills in MACs for ONNX states,
    whose MACs torch cannot count (quantization keeps the MACs of its fp32 input). Latency is
    measured alone here; a comparison of several states belongs in one interleaved call of
    :func:`compression.latency.measure_latency_isolated` (the pipeline does that).
    ``check_cancel`` is called between evaluation batches and steps, and may raise.
    """
    from compression.onnx_export import check_parity, export_onnx

    if model.task == "detection":
        return _measure_detector(
            model,
            data,
            Path(work_dir),
            latency_runs=latency_runs,
            warmup=warmup,
            threads=threads,
            batch_size=batch_size,
            rounds=rounds,
            macs_hint=macs_hint,
            onnx_name=onnx_name,
            parity_atol=parity_atol,
            check_cancel=check_cancel,
        )

    def cancel_point() -> None:
        if check_cancel is not None:
            check_cancel()

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    test_acc = accuracy(model, data.test_loader(), device, check_cancel=check_cancel)
    val_acc = accuracy(model, data.val_loader(), device, check_cancel=check_cancel)
    parity: float | None = None
    if model.module is not None:
        module = model.module
        params = count_params(module)
        nonzero = count_nonzero_params(module)
        macs: int | None = count_macs(module, model.input_shape)
        cancel_point()
        onnx_path = export_onnx(module, model.input_shape, work_dir / onnx_name)
        cancel_point()
        parity = check_parity(module, onnx_path, model.input_shape, atol=parity_atol)
        fmt = "torch"
    else:
        assert model.onnx_path is not None
        onnx_path = model.onnx_path
        params, nonzero = onnx_param_counts(onnx_path)
        macs = macs_hint
        fmt = "onnx"
    raw, zipped = file_sizes(onnx_path)
    latency = None
    if latency_runs > 0:
        cancel_point()
        latency = _network_latency(
            onnx_path, model, batch_size, threads, warmup, latency_runs, rounds, check_cancel
        )
    return ModelMetrics(
        accuracy=test_acc,
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        onnx_bytes=raw,
        onnx_zip_bytes=zipped,
        latency=latency,
        peak_mem_mb=latency.peak_rss_mb if latency else None,
        parity_max_abs_diff=parity,
        format=fmt,
        val_accuracy=val_acc,
        eval_split="test",
        test_images=len(data.test),
        onnx_path=str(onnx_path),
    )


# --- detectors -------------------------------------------------------------------------------

# Test images the torch/ONNX parity of a detector export is checked on.
DETECTION_PARITY_IMAGES = 4


def letterboxed_inputs(samples: Any, size: int, n: int) -> np.ndarray:
    """The first ``n`` samples letterboxed to ``size``: float ``(n, 3, size, size)`` in [0, 1],
    the input a detector sees in evaluation (and the images its latency is timed on)."""
    from compression.detection_transforms import letterbox

    chosen = list(samples)[: max(1, n)]
    if not chosen:
        raise ValueError("no image to feed the detector")
    batch = np.stack([letterbox(s.image, size)[0] for s in chosen]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / 255.0


def exportable_detector(module: nn.Module, size: int) -> nn.Module:
    """The module whose raw outputs are exported: a YOLO-family detector itself, a torchvision
    SSD wrapped in :class:`~compression.detection_export.SSDRawHead`.

    Raises:
        ExportError: any other detector (Faster R-CNN's second stage reads the first stage's
            proposals, so it has no fixed raw-output layout to export).
    """
    from compression.detection_export import SSDRawHead
    from compression.detection_metrics import model_family
    from compression.onnx_export import ExportError

    try:
        family = model_family(module)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if family == "yolo":
        return module
    if family == "ssd":
        return SSDRawHead(module, size)
    raise ExportError(
        f"a {family} detector has no raw-output ONNX export (its second stage reads the first "
        "stage's proposals), so the pipeline cannot measure or ship it; use a YOLO or SSD model"
    )


def detection_summary(test: Any, val: Any | None) -> dict[str, Any]:
    """The report's ``detection`` dict from the test (and val) split's
    :class:`~compression.detection_metrics.DetectionMetrics`."""
    return {
        "map50": test.map50,
        "map50_95": test.map50_95,
        "val_map50": None if val is None else val.map50,
        "val_map50_95": None if val is None else val.map50_95,
        "per_class": [
            {"class": name, "ap50": c.map50, "ap50_95": c.map50_95, "boxes": c.ground_truths}
            for name, c in test.per_class.items()
        ],
        "images": test.images,
        "boxes": test.ground_truths,
    }


def _measure_detector(
    model: ModelState,
    data: Any,
    work_dir: Path,
    *,
    latency_runs: int,
    warmup: int,
    threads: int,
    batch_size: int,
    rounds: int,
    macs_hint: int | None,
    onnx_name: str,
    parity_atol: float,
    check_cancel: Callable[[], None] | None,
) -> ModelMetrics:
    """:func:`measure_model` for a detector on a DetectionBundle: mAP@0.5 and mAP@0.5:0.95 on
    the test split (overall and per class) and mAP@0.5 on val; a torch detector is exported
    with :func:`~compression.detection_export.export_detector` (raw heads, the post-processing's
    metadata in the file) and its raw outputs checked against torch on letterboxed test images."""
    from compression.detection_export import check_parity, export_detector, meta_from_model
    from compression.detection_metrics import evaluate_detector
    from compression.evaluation import evaluate_detector_onnx
    from compression.onnx_export import ExportError

    work_dir.mkdir(parents=True, exist_ok=True)
    classes = list(data.classes)
    size = int(model.input_shape[1])
    parity_info: dict[str, Any] | None = None
    if model.module is not None:
        module = model.module
        test = evaluate_detector(module, data.test, classes, check_cancel=check_cancel)
        val = (
            evaluate_detector(module, data.val, classes, check_cancel=check_cancel)
            if data.val
            else None
        )
        params = count_params(module)
        nonzero = count_nonzero_params(module)
        macs: int | None = count_macs(module, model.input_shape)
        if check_cancel is not None:
            check_cancel()
        exportable = exportable_detector(module, size)
        meta = dataclasses.replace(
            meta_from_model(exportable), class_names=tuple(str(c) for c in classes)
        )
        onnx_path = export_detector(exportable, work_dir / onnx_name, meta=meta)
        images = letterboxed_inputs(data.test or data.val, size, DETECTION_PARITY_IMAGES)
        report = check_parity(exportable, onnx_path, images, meta=meta)
        if not report.raw_max_abs_diff <= parity_atol:  # also catches NaN
            raise ExportError(
                f"ONNX export parity check failed: the raw head outputs differ by up to "
                f"{report.raw_max_abs_diff:.3g} (tolerance {parity_atol:g})"
            )
        parity = report.raw_max_abs_diff
        parity_info = {
            "images": report.images,
            "raw_max_abs_diff": report.raw_max_abs_diff,
            "boxes_matched_fraction": report.numpy.matched_fraction,
            "max_box_diff_px": report.numpy.max_box_diff,
        }
        fmt = "torch"
    else:
        assert model.onnx_path is not None
        onnx_path = Path(model.onnx_path)
        test = evaluate_detector_onnx(onnx_path, data.test, classes, check_cancel=check_cancel)
        val = (
            evaluate_detector_onnx(onnx_path, data.val, classes, check_cancel=check_cancel)
            if data.val
            else None
        )
        params, nonzero = onnx_param_counts(onnx_path)
        macs = macs_hint
        parity = None
        fmt = "onnx"
    raw, zipped = file_sizes(onnx_path)
    latency = latency_e2e = None
    if latency_runs > 0:
        if check_cancel is not None:
            check_cancel()
        images = letterboxed_inputs(data.test or data.val, size, batch_size)
        latency = _network_latency(
            onnx_path, model, batch_size, threads, warmup, latency_runs, rounds, check_cancel
        )
        latency_e2e = measure_detection_latency_isolated(
            [onnx_path],
            images,
            threads=threads,
            warmup=warmup,
            runs=latency_runs,
            rounds=rounds,
            should_cancel=_as_poll(check_cancel),
        )[0]
    detection = detection_summary(test, val)
    detection["parity"] = parity_info
    return ModelMetrics(
        accuracy=100.0 * test.map50,
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        onnx_bytes=raw,
        onnx_zip_bytes=zipped,
        latency=latency,
        peak_mem_mb=latency.peak_rss_mb if latency else None,
        parity_max_abs_diff=parity,
        format=fmt,
        val_accuracy=None if val is None else 100.0 * val.map50,
        eval_split="test",
        test_images=len(data.test),
        onnx_path=str(onnx_path),
        task="detection",
        metric="mAP@0.5",
        detection=detection,
        latency_e2e=latency_e2e,
    )


def measure_detection_latency_isolated(
    onnx_paths: Sequence[Path | str],
    images: np.ndarray,
    *,
    threads: int = 2,
    warmup: int = 10,
    runs: int = 50,
    rounds: int = 5,
    timeout_s: float = 300.0,
    should_cancel: Callable[[], bool] | None = None,
) -> list[LatencyResult]:
    """End-to-end latency of raw-output ONNX detectors: each timed run is one inference on
    ``images`` (float ``(N, 3, S, S)``) followed by the numpy decode and NMS of
    :mod:`edgeslim_agent.detect_post` on its outputs.

    The same harness as :func:`compression.latency.measure_latency_isolated` (one fresh
    torch-free child per model, OpenMP/BLAS threads pinned, its ``detect`` command doing the
    timing, as :func:`compression.latency.measure_detector_latency` does for one model) and
    the same interleaving: ``rounds`` rounds of ``runs`` runs per model, the order rotated each
    round. The result is a :class:`LatencyResult` over the end-to-end times (p50 the median of
    the per-round medians; the wall time is the sum of the timed runs).

    Raises:
        LatencyError: a model has no detection metadata, its outputs do not fit it, or a child
            failed; Cancelled when ``should_cancel`` says so.
    """
    import tempfile

    from compression.errors import Cancelled
    from edgeslim_agent import latency as harness

    paths = [Path(p) for p in onnx_paths]
    if not paths:
        raise ValueError("no model to measure")
    batch = np.ascontiguousarray(images, dtype=np.float32)
    children: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="edgeslim-detlat-") as tmp:
        images_path = str(Path(tmp) / "images.npy")
        np.save(images_path, batch)
        try:
            loaded = []
            for path in paths:
                if should_cancel is not None and should_cancel():
                    raise Cancelled("latency measurement cancelled")
                child = harness.LatencyChild(str(path), threads=threads)
                children.append(child)
                loaded.append(
                    child.request(
                        {
                            "cmd": "load",
                            "path": str(path.resolve()),
                            "input_shape": [int(d) for d in batch.shape],
                            "threads": threads,
                            "providers": None,
                            "seed": 0,
                            "warmup": 0,
                        },
                        timeout_s=timeout_s,
                        should_cancel=should_cancel,
                    )
                )
            rounds_ms: list[list[list[float]]] = [[] for _ in paths]
            for r in range(rounds):
                for i in harness.round_order(len(paths), r):
                    if should_cancel is not None and should_cancel():
                        raise Cancelled("latency measurement cancelled")
                    reply = children[i].request(
                        {
                            "cmd": "detect",
                            "runs": runs,
                            "warmup": warmup if r == 0 else 0,
                            "images_path": images_path,
                        },
                        timeout_s=timeout_s,
                        should_cancel=should_cancel,
                    )
                    rounds_ms[i].append([float(t) for t in reply["end_to_end_ms"]])
            results = []
            for i, child in enumerate(children):
                stats = child.request({"cmd": "stats"}, timeout_s=timeout_s)
                results.append(
                    harness._summarize(
                        rounds_ms[i],
                        sum(sum(r) for r in rounds_ms[i]) / 1000.0,
                        batch=int(batch.shape[0]),
                        load_ms=float(loaded[i]["load_time_ms"]),
                        rss_mb=stats["peak_rss_mb"],
                        shape=list(batch.shape),
                        threads=threads,
                        warmup=warmup,
                        ort_version=loaded[i]["ort_version"],
                        provider=loaded[i]["provider"],
                        op_profile={},
                        isolated=True,
                    )
                )
            return results
        finally:
            for child in children:
                child.close()


def _network_latency(
    onnx_path: Path | str,
    model: ModelState,
    batch_size: int,
    threads: int,
    warmup: int,
    runs: int,
    rounds: int,
    check_cancel: Callable[[], None] | None,
) -> LatencyResult:
    """One model's latency alone (the network only), in the torch-free child harness."""
    return measure_latency_isolated(
        [onnx_path],
        input_shapes=(batch_size, *model.input_shape),
        threads=threads,
        warmup=warmup,
        runs=runs,
        rounds=rounds,
        should_cancel=_as_poll(check_cancel),
    )[0]


def _as_poll(check_cancel: Callable[[], None] | None) -> Callable[[], bool] | None:
    """Turn a raising cancel check into the ``should_cancel() -> bool`` the harness polls."""
    if check_cancel is None:
        return None
    check = check_cancel

    def poll() -> bool:
        try:
            check()
        except Exception:
            return True
        return False

    return poll
