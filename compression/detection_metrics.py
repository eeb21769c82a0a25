"""Detection metrics: mAP@0.5 and mAP@0.5:0.95 (COCO's definition), overall and per class.

The numbers come from torchmetrics' ``MeanAveragePrecision`` with the ``faster_coco_eval``
backend (the ``pycocotools`` backend answers -1 for non-default IoU thresholds, torchmetrics
#2560). Two instances see the same detections: one with COCO's ten IoU thresholds (0.50 to 0.95)
gives mAP@0.5:0.95 and mAP@0.5 overall and the per-class mAP@0.5:0.95; one with the single
threshold 0.5 gives the per-class mAP@0.5.

COCO's conventions hold: a class is averaged in only if the ground truth has a box of it
(detections of a class absent from the ground truth are not counted against anything), and at
most ``max_detections`` detections per image, best scores first, are scored.

:func:`evaluate_detector` runs a detector on a split and scores it: images are letterboxed to
the model's input size (:func:`compression.detection_transforms.letterbox`) and the detected
boxes mapped back to each image's own pixels before they are compared with its boxes. YOLO-family
models' raw outputs go through the shared numpy post-processing
(:mod:`compression.detect_post`) with a low score threshold, as mAP needs the whole
precision-recall curve; torchvision's SSD and Faster R-CNN return their own detections, their
labels shifted back from ``1..C`` to ``0..C-1``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.detect_post import DetectorMeta, postprocess
from compression.detection_transforms import Placement, letterbox

CancelCheck = Callable[[], None]
# mAP wants every detection down to a very low score: the curve's tail counts.
MAP_SCORE_THRESHOLD = 0.001
MAP_NMS_IOU = 0.5
MAX_DETECTIONS = 100
# Candidates per class kept for NMS: an untrained model scores thousands of boxes above 0.001.
PRE_NMS_TOP_K = 1000


@dataclass(frozen=True)
class ClassAP:
    """One class's average precision. ``None`` where the ground truth has no box of it."""

    name: str
    map50: float | None
    map50_95: float | None
    ground_truths: int
    detections: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "map50": self.map50,
            "map50_95": self.map50_95,
            "ground_truths": self.ground_truths,
            "detections": self.detections,
        }


@dataclass
class DetectionMetrics:
    """mAP over a set of images: fractions in ``[0, 1]`` (not percent)."""

    map50: float
    map50_95: float
    per_class: dict[str, ClassAP] = field(default_factory=dict)
    images: int = 0
    detections: int = 0
    ground_truths: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "images": self.images,
            "detections": self.detections,
            "ground_truths": self.ground_truths,
            "per_class": {k: v.to_dict() for k, v in self.per_class.items()},
        }


def _as_tensor(value: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    return t.detach().to("cpu", dtype).reshape(shape)


class MapAccumulator:
    """Collects detections and ground truth image by image, then :meth:`compute` scores them.

    ``add`` takes one image's detections (``boxes (K, 4)`` xyxy, ``scores (K,)``, ``labels
    (K,)`` in ``0..C-1``) and its ground truth (``boxes (N, 4)``, ``labels (N,)``), numpy arrays
    or tensors, in the same pixel space.
    """

    def __init__(self, class_names: Sequence[str], *, max_detections: int = MAX_DETECTIONS):
        from torchmetrics.detection import MeanAveragePrecision

        if not class_names:
            raise ValueError("mAP needs at least one class name")
        self.class_names = list(class_names)
        self.max_detections = max_detections
        limits = [1, 10, max_detections] if max_detections > 10 else [max_detections] * 3
        common: dict[str, Any] = {
            "box_format": "xyxy",
            "iou_type": "bbox",
            "class_metrics": True,
            "backend": "faster_coco_eval",
            "max_detection_thresholds": limits,
        }
        self._coco = MeanAveragePrecision(**common)
        self._at50 = MeanAveragePrecision(iou_thresholds=[0.5], **common)
        self.images = 0
        self.detections = 0
        self._gt_per_class = np.zeros(len(self.class_names), dtype=np.int64)
        self._det_per_class = np.zeros(len(self.class_names), dtype=np.int64)

    def add(
        self,
        boxes: Any,
        scores: Any,
        labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
    ) -> None:
        pb = _as_tensor(boxes, torch.float32, (-1, 4))
        ps = _as_tensor(scores, torch.float32, (-1,))
        pl = _as_tensor(labels, torch.int64, (-1,))
        gb = _as_tensor(gt_boxes, torch.float32, (-1, 4))
        gl = _as_tensor(gt_labels, torch.int64, (-1,))
        if not (len(pb) == len(ps) == len(pl)):
            raise ValueError(f"{len(pb)} boxes, {len(ps)} scores and {len(pl)} labels differ")
        if len(gb) != len(gl):
            raise ValueError(f"{len(gb)} ground-truth boxes but {len(gl)} labels")
        c = len(self.class_names)
        for name, lab in (("detection", pl), ("ground-truth", gl)):
            if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= c):
                raise ValueError(f"a {name} label is outside 0..{c - 1}: {lab.tolist()[:10]}")
        if len(ps) > self.max_detections:  # COCO scores the best max_detections only
            order = torch.argsort(ps, descending=True)[: self.max_detections]
            pb, ps, pl = pb[order], ps[order], pl[order]
        preds = [{"boxes": pb, "scores": ps, "labels": pl}]
        target = [{"boxes": gb, "labels": gl}]
        self._coco.update(preds, target)
        self._at50.update(preds, target)
        self.images += 1
        self.detections += len(pb)
        self._gt_per_class += np.bincount(gl.numpy(), minlength=c)
        self._det_per_class += np.bincount(pl.numpy(), minlength=c)

    def compute(self) -> DetectionMetrics:
        """Score everything added. Raises ``ValueError`` when no image has a ground-truth box
        (mAP is undefined then)."""
        if int(self._gt_per_class.sum()) == 0:
            raise ValueError(
                f"mAP is undefined: the {self.images} image(s) scored have no ground-truth box"
            )
        with _quiet("faster_coco_eval"):  # it logs its whole summary table at INFO
            coco = self._coco.compute()
            at50 = self._at50.compute()
        per50 = _per_class(at50)
        per5095 = _per_class(coco)
        per_class: dict[str, ClassAP] = {}
        for i, name in enumerate(self.class_names):
            has_gt = bool(self._gt_per_class[i] > 0)
            per_class[name] = ClassAP(
                name=name,
                map50=per50.get(i, 0.0) if has_gt else None,
                map50_95=per5095.get(i, 0.0) if has_gt else None,
                ground_truths=int(self._gt_per_class[i]),
                detections=int(self._det_per_class[i]),
            )
        return DetectionMetrics(
            map50=_clean(float(coco["map_50"])),
            map50_95=_clean(float(coco["map"])),
            per_class=per_class,
            images=self.images,
            detections=self.detections,
            ground_truths=int(self._gt_per_class.sum()),
        )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _clean(value: float) -> float:
    """torchmetrics writes -1 for "nothing to average"; with ground truth present that only
    happens when nothing was detected at all, which is an AP of 0."""
    return 0.0 if value < 0 or math.isnan(value) else value


def _per_class(result: dict[str, torch.Tensor]) -> dict[int, float]:
    classes = result["classes"].reshape(-1).tolist()
    values = result["map_per_class"].reshape(-1).tolist()
    return {int(c): _clean(float(v)) for c, v in zip(classes, values, strict=True)}


def mean_average_precision(
    predictions: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    *,
    max_detections: int = MAX_DETECTIONS,
) -> DetectionMetrics:
    """mAP of per-image ``predictions`` (``boxes``, ``scores``, ``labels``) against ``targets``
    (``boxes``, ``labels``), labels in ``0..C-1``."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    acc = MapAccumulator(class_names, max_detections=max_detections)
    for p, t in zip(predictions, targets, strict=True):
        acc.add(p["boxes"], p["scores"], p["labels"], t["boxes"], t["labels"])
    return acc.compute()


# --- running a detector --------------------------------------------------------------------


def model_family(model: nn.Module) -> str:
    """``"yolo"``, ``"ssd"`` or ``"fasterrcnn"``: what :func:`evaluate_detector` and training
    know how to drive. Anything else is refused with a message that says what is missing."""
    family = getattr(model, "family", None)
    if family in ("yolo", "ssd", "fasterrcnn"):
        return str(family)
    raise ValueError(
        f"{type(model).__name__} is not a detector this library can drive: it needs "
        f"family 'yolo', 'ssd' or 'fasterrcnn' (it has {family!r})"
    )


def input_size_of(model: nn.Module, fallback: int | None = None) -> int:
    """The side of the detector's square input (``model.input_size``: an int or ``(h, w)``)."""
    size = getattr(model, "input_size", None)
    if isinstance(size, (tuple, list)):
        size = max(int(v) for v in size)
    if size is None:
        if fallback is None:
            raise ValueError(f"{type(model).__name__} has no input_size; pass one")
        size = fallback
    return int(size)


def images_to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """``(H, W, 3) uint8`` images of one size -> ``(N, 3, H, W)`` float in ``[0, 1]``."""
    batch = np.stack(images).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device, torch.float32) / 255.0


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4), scores (K,), labels (K,)


@dataclass(frozen=True)
class YoloSpec:
    """What the YOLO contract's attributes say: anchors per level (input pixels), strides and
    the class count."""

    anchors: tuple[tuple[tuple[float, float], ...], ...]
    strides: tuple[int, ...]
    num_classes: int


def yolo_spec(model: nn.Module) -> YoloSpec:
    """Read a YOLO-contract model's ``anchors``, ``strides`` and ``num_classes``; a model that
    lacks one, or whose levels disagree, is refused with what is wrong."""
    m: Any = model
    missing = [a for a in ("anchors", "strides", "num_classes") if not hasattr(m, a)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} is no YOLO-contract detector: it has no {', '.join(missing)}"
        )
    anchors = tuple(tuple((float(w), float(h)) for w, h in level) for level in m.anchors)
    strides = tuple(int(s) for s in m.strides)
    if len(anchors) != len(strides) or not anchors:
        raise ValueError(
            f"{type(model).__name__} has {len(anchors)} anchor sets but {len(strides)} strides"
        )
    return YoloSpec(anchors=anchors, strides=strides, num_classes=int(m.num_classes))


def yolo_meta(
    model: nn.Module,
    *,
    input_size: int | None = None,
    score_threshold: float = MAP_SCORE_THRESHOLD,
    iou_threshold: float = MAP_NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
    pre_nms_top_k: int | None = PRE_NMS_TOP_K,
) -> DetectorMeta:
    """The shared post-processing's description of a YOLO-contract model."""
    spec = yolo_spec(model)
    return DetectorMeta(
        family="yolo",
        num_classes=spec.num_classes,
        input_size=input_size or input_size_of(model),
        anchors=spec.anchors,
        strides=spec.strides,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        pre_nms_top_k=pre_nms_top_k,
    )


@torch.no_grad()
def predict_batch(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    meta: DetectorMeta | None = None,
    family: str | None = None,
) -> list[Detections]:
    """Detections of an ``(N, 3, S, S)`` batch in input pixels, labels in ``0..C-1``.

    ``meta`` is the post-processing description for a YOLO model (:func:`yolo_meta`)."""
    family = family or model_family(model)
    if family == "yolo":
        outputs = model(inputs)
        arrays = [o.detach().float().cpu().numpy() for o in outputs]
        results = postprocess(arrays, meta if meta is not None else yolo_meta(model))
        return [(r.boxes, r.scores, r.class_ids) for r in results]
    outs = model(list(inputs))
    found: list[Detections] = []
    for o in outs:
        labels = o["labels"].detach().cpu().numpy().astype(np.int64) - 1
        keep = labels >= 0
        found.append(
            (
                o["boxes"].detach().float().cpu().numpy()[keep].reshape(-1, 4),
                o["scores"].detach().float().cpu().numpy()[keep].reshape(-1),
                labels[keep],
            )
        )
    return found


def evaluate_detector(
    model: nn.Module,
    samples: Sequence[Any],
    class_names: Sequence[str],
    *,
    input_size: int | None = None,
    batch_size: int = 16,
    score_threshold: float = MAP_SCORE_THRESHOLD,
    iou_threshold: float = MAP_NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
    device: torch.device | str | None = None,
    check_cancel: CancelCheck | None = None,
) -> DetectionMetrics:
    """mAP of ``model`` on ``samples`` (:class:`~compression.detection_data.DetectionSample`).

    Each image is letterboxed to the model's input size (``input_size`` overrides it), the model
    runs in eval mode (its training flag is restored afterwards) on ``device`` (default: where
    its weights are), and its boxes are mapped back to the image's pixels. ``score_threshold``,
    ``iou_threshold`` (NMS) and ``max_detections`` configure a YOLO model's post-processing;
    ``check_cancel`` is called between batches and may raise to stop.
    """
    family = model_family(model)
    size = input_size or input_size_of(model)
    param = next(model.parameters(), None)
    dev = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    model.to(dev)
    meta = (
        yolo_meta(
            model,
            input_size=size,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        if family == "yolo"
        else None
    )
    acc = MapAccumulator(class_names, max_detections=max_detections)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), max(1, batch_size)):
            if check_cancel is not None:
                check_cancel()
            chunk = samples[start : start + batch_size]
            placed: list[np.ndarray] = []
            where: list[Placement] = []
            for s in chunk:
                img, pl = letterbox(s.image, size)
                placed.append(img)
                where.append(pl)
            found = predict_batch(model, images_to_tensor(placed, dev), meta=meta, family=family)
            for s, pl, (boxes, scores, labels) in zip(chunk, where, found, strict=True):
                acc.add(
                    pl.boxes_to_image(boxes, s.width, s.height), scores, labels, s.boxes, s.labels
                )
    finally:
        model.train(was_training)
    return acc.compute()
