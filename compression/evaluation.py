"""The one accuracy evaluator: top-1 in percent, for a torch module or an ONNX file (and, for
a raw-output ONNX detector, its detections and mAP: :func:`evaluate_detector_onnx`).

Every figure EdgeSlim shows comes from here: the validation curve during training, the test
accuracy in reports and verdicts, and the benchmarks. Torch runs in float32 (no autocast, so a
GPU and a CPU agree), on whatever device the module's weights are on; ONNX runs on ONNX
Runtime's CPU provider, exactly what a device runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CancelCheck = Callable[[], None]


def _device_of(module: nn.Module, fallback: torch.device | str | None) -> torch.device:
    param = next(module.parameters(), None)
    if param is not None:
        return param.device
    if fallback is None:
        return torch.device("cpu")
    return fallback if isinstance(fallback, torch.device) else torch.device(fallback)


@torch.no_grad()
def accuracy_torch(
    module: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    *,
    check_cancel: CancelCheck | None = None,
) -> float:
    """Top-1 accuracy in percent (0-100) of ``module`` over ``(images, labels)`` batches.

    The module is evaluated where its weights are (``device`` only matters for a module without
    parameters) and its training flag is restored afterwards. ``check_cancel`` is called
    between batches and may raise to stop.
    """
    dev = _device_of(module, device)
    was_training = module.training
    module.eval()
    channels_last = dev.type == "cuda"
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    total = 0
    try:
        for batch in loader:
            if check_cancel is not None:
                check_cancel()
            inputs, targets = batch[0], batch[1]
            inputs = inputs.to(dev, non_blocking=True)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            targets = torch.as_tensor(targets).to(dev)
            logits = module(inputs)
            correct += (logits.argmax(dim=1) == targets).sum()
            total += int(targets.numel())
    finally:
        module.train(was_training)
    return 100.0 * int(correct) / total if total else 0.0


def accuracy_onnx(
    path: Path | str,
    loader: Iterable[Any],
    *,
    check_cancel: CancelCheck | None = None,
) -> float:
    """Top-1 accuracy in percent of an ONNX classifier on ONNX Runtime's CPU provider.

    A model exported with a fixed batch dimension is fed one sample at a time.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    correct = total = 0
    for batch in loader:
        if check_cancel is not None:
            check_cancel()
        images, labels = batch[0], batch[1]
        x = np.asarray(images, dtype=np.float32)
        y = np.asarray(labels)
        if fixed_batch is not None and fixed_batch != x.shape[0]:
            outs = [session.run(None, {inp.name: x[i : i + 1]})[0] for i in range(x.shape[0])]
            logits = np.concatenate(outs, axis=0)
        else:
            logits = np.asarray(session.run(None, {inp.name: x})[0])
        correct += int((logits.argmax(1) == y).sum())
        total += int(y.size)
    return 100.0 * correct / total if total else 0.0


def accuracy(
    model: Any,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    *,
    check_cancel: CancelCheck | None = None,
) -> float:
    """Top-1 accuracy in percent of a ModelState (torch module or ONNX file), a module or a path."""
    if isinstance(model, nn.Module):
        return accuracy_torch(model, loader, device, check_cancel=check_cancel)
    if isinstance(model, (str, Path)):
        return accuracy_onnx(model, loader, check_cancel=check_cancel)
    module = getattr(model, "module", None)
    if module is not None:
        return accuracy_torch(module, loader, device, check_cancel=check_cancel)
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is None:
        raise ValueError("the model state holds neither a module nor an ONNX file")
    return accuracy_onnx(onnx_path, loader, check_cancel=check_cancel)


# --- detectors -------------------------------------------------------------------------------


def detect_onnx(
    path: Path | str,
    samples: Sequence[Any],
    *,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    pre_nms_top_k: int | None = None,
    batch_size: int = 16,
    check_cancel: CancelCheck | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run a raw-output ONNX detector (one carrying the detection metadata, e.g. an export of
    :func:`compression.detection_export.export_detector` or its int8 quantization) on
    ``samples`` (:class:`~compression.detection_data.DetectionSample`) with ONNX Runtime's CPU
    provider and the shared numpy post-processing.

    Each image is letterboxed to the model's input as in training and :func:`evaluate_detector`;
    the boxes come back in the image's own pixels. The thresholds override the file's.

    Returns:
        Per sample ``(boxes (K, 4) xyxy, scores (K,), labels (K,))``.

    Raises:
        ValueError: the file carries no detection metadata.
    """
    import dataclasses

    import onnxruntime as ort

    from compression.detect_post import postprocess
    from compression.detection_export import read_detector_meta
    from compression.detection_transforms import letterbox

    meta = read_detector_meta(path)
    if meta is None:
        raise ValueError(f"{Path(path).name} carries no detection metadata")
    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("score_threshold", score_threshold),
            ("iou_threshold", iou_threshold),
            ("max_detections", max_detections),
            ("pre_nms_top_k", pre_nms_top_k),
        )
        if v is not None
    }
    meta = dataclasses.replace(meta, **overrides)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed_batch or max(1, batch_size)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(samples), step):
        if check_cancel is not None:
            check_cancel()
        chunk = samples[start : start + step]
        placed = [letterbox(s.image, meta.input_size) for s in chunk]
        x = np.stack([img for img, _ in placed]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        if fixed_batch is not None and fixed_batch != x.shape[0]:
            pad = np.zeros((fixed_batch - x.shape[0], *x.shape[1:]), dtype=np.float32)
            x = np.concatenate([x, pad])
        results = postprocess(session.run(None, {inp.name: np.ascontiguousarray(x)}), meta)
        for s, (_, pl), r in zip(chunk, placed, results, strict=False):
            found.append((pl.boxes_to_image(r.boxes, s.width, s.height), r.scores, r.class_ids))
    return found


def evaluate_detector_onnx(
    path: Path | str,
    samples: Sequence[Any],
    class_names: Sequence[str],
    *,
    batch_size: int = 16,
    check_cancel: CancelCheck | None = None,
) -> Any:
    """mAP (:class:`~compression.detection_metrics.DetectionMetrics`) of a raw-output ONNX
    detector on ``samples``, scored as :func:`compression.detection_metrics.evaluate_detector`
    scores a torch detector: the same letterbox, the same low score threshold, NMS IoU and
    detections per image, the same accumulator."""
    from compression.detection_metrics import (
        MAP_NMS_IOU,
        MAP_SCORE_THRESHOLD,
        MAX_DETECTIONS,
        PRE_NMS_TOP_K,
        MapAccumulator,
    )

    found = detect_onnx(
        path,
        samples,
        score_threshold=MAP_SCORE_THRESHOLD,
        iou_threshold=MAP_NMS_IOU,
        max_detections=MAX_DETECTIONS,
        pre_nms_top_k=PRE_NMS_TOP_K,
        batch_size=batch_size,
        check_cancel=check_cancel,
    )
    acc = MapAccumulator(class_names, max_detections=MAX_DETECTIONS)
    for s, (boxes, scores, labels) in zip(samples, found, strict=True):
        acc.add(boxes, scores, labels, s.boxes, s.labels)
    return acc.compute()
