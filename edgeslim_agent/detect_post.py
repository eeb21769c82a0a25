"""Detector post-processing in numpy: box decoding (YOLO, SSD), NMS and the detector's metadata.

The host measurement and the edge agent share this module, so it imports numpy and the standard
library only (import-linter checks it): an ONNX detector exports its raw head outputs, ONNX
Runtime runs them, and :func:`postprocess` turns them into boxes. ``compression.detect_post`` is
the same module object (the studio's name for it).

Conventions:

* Boxes are ``x1, y1, x2, y2`` in pixels of the network's input (``input_size`` square),
  float32, clipped to ``[0, input_size]``.
* Class ids are 0-based foreground classes (an SSD's background class 0 is dropped, so its
  class 1 is id 0 here).
* A YOLO detector's outputs are one array per level, coarsest stride first, each
  ``(N, A*(5+C), H, W)`` with channels per anchor ``tx, ty, tw, th, obj, c0..cC-1``, decoded as
  Darknet v3 does: ``x = (sigmoid(tx) + cx) * stride``, ``w = anchor_w * exp(tw)``, and the score
  of a class is ``sigmoid(obj) * sigmoid(c)`` (every class above the threshold is a candidate,
  so one box can carry several labels).
* An SSD's outputs are ``bbox_regression (N, P, 4)`` and ``cls_logits (N, P, C+1)``, decoded
  with torchvision's ``BoxCoder`` against the priors (``xyxy`` in input pixels) and scored with a
  softmax whose class 0 is the background.
* NMS is greedy and class-aware; a box is suppressed when its IoU with a kept box of the same
  class is above ``iou_threshold`` (strictly, as torchvision and ONNX ``NonMaxSuppression`` do),
  candidates need a score strictly above ``score_threshold``.

``score_threshold`` defaults to 0.25 (Darknet's default for drawing and deploying detections);
mAP evaluation wants every box, so it passes a low one such as 0.001
(``dataclasses.replace(meta, score_threshold=0.001)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

META_KEY = "edgeslim.detection"  # the ONNX metadata_props key holding DetectorMeta JSON
META_VERSION = 1
FAMILIES = ("yolo", "ssd")
DEFAULT_SCORE_THRESHOLD = 0.25
EVAL_SCORE_THRESHOLD = 0.001
DEFAULT_IOU_THRESHOLD = 0.45
DEFAULT_MAX_DETECTIONS = 100
SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# torchvision's BoxCoder clamps dw and dh here so exp() cannot overflow
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
MAX_META_CHARS = 4_000_000  # a meta JSON larger than this is refused unread


class DetectionError(ValueError):
    """The detector's metadata is invalid, or its outputs are not what post-processing knows."""


@dataclass(frozen=True)
class DetectorMeta:
    """What post-processing needs to know about a detector; stored in its ONNX as JSON.

    ``anchors`` (YOLO): per level, coarsest stride first, the ``(w, h)`` of each anchor in input
    pixels; ``strides`` the matching strides. ``priors`` (SSD): ``(P, 4)`` default boxes,
    ``xyxy`` in input pixels, in the order of the outputs' P axis. ``pre_nms_top_k``: keep at
    most this many candidates per class before NMS (torchvision's SSD uses 400); None keeps all.
    """

    family: str
    num_classes: int
    input_size: int
    class_names: tuple[str, ...] | None = None
    anchors: tuple[tuple[tuple[float, float], ...], ...] | None = None
    strides: tuple[int, ...] | None = None
    priors: tuple[tuple[float, float, float, float], ...] | None = None
    box_weights: tuple[float, float, float, float] = SSD_WEIGHTS
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS
    pre_nms_top_k: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # --- validation -----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`DetectionError` with a sentence naming the first bad field."""
        if self.family not in FAMILIES:
            raise DetectionError(
                f"detector family {self.family!r} is not one post-processing knows "
                f"({', '.join(FAMILIES)})"
            )
        _positive_int("num_classes", self.num_classes)
        _positive_int("input_size", self.input_size)
        _positive_int("max_detections", self.max_detections)
        if self.pre_nms_top_k is not None:
            _positive_int("pre_nms_top_k", self.pre_nms_top_k)
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise DetectionError(f"{name} must be a number in [0, 1], not {value!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DetectionError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )
        if self.family == "yolo":
            self._validate_yolo()
        else:
            self._validate_ssd()

    def _validate_yolo(self) -> None:
        if not self.anchors or not self.strides:
            raise DetectionError("a YOLO detector's metadata needs anchors and strides per level")
        if len(self.anchors) != len(self.strides):
            raise DetectionError(
                f"{len(self.anchors)} anchor levels for {len(self.strides)} strides"
            )
        for level, (anchors, stride) in enumerate(zip(self.anchors, self.strides, strict=True)):
            _positive_int(f"stride of level {level}", stride)
            if self.input_size % stride:
                raise DetectionError(
                    f"input_size {self.input_size} is not a multiple of level {level}'s "
                    f"stride {stride}"
                )
            if not anchors:
                raise DetectionError(f"level {level} has no anchors")
            for anchor in anchors:
                if len(anchor) != 2 or not all(_finite_positive(v) for v in anchor):
                    raise DetectionError(
                        f"anchor {anchor!r} of level {level} is not a positive (w, h) pair"
                    )

    def _validate_ssd(self) -> None:
        if not self.priors:
            raise DetectionError("an SSD detector's metadata needs its priors")
        for i, prior in enumerate(self.priors):
            if len(prior) != 4 or not all(math.isfinite(v) for v in prior):
                raise DetectionError(f"prior {i} is not four finite numbers")
        if len(self.box_weights) != 4 or not all(_finite_positive(v) for v in self.box_weights):
            raise DetectionError(f"box_weights {self.box_weights!r} are not four positive numbers")

    # --- derived facts ----------------------------------------------------------------------

    def grid_sizes(self) -> list[int]:
        """YOLO: the side of each level's grid (``input_size / stride``)."""
        return [self.input_size // s for s in self.strides or ()]

    def expected_output_shapes(self) -> list[tuple[int | None, ...]]:
        """The raw outputs' shapes, batch as None."""
        c = self.num_classes
        if self.family == "yolo":
            assert self.anchors is not None
            return [
                (None, len(anchors) * (5 + c), side, side)
                for anchors, side in zip(self.anchors, self.grid_sizes(), strict=True)
            ]
        p = len(self.priors or ())
        return [(None, p, 4), (None, p, c + 1)]

    def output_names(self) -> list[str]:
        """The names the exporter gives the raw outputs, in order."""
        if self.family == "yolo":
            return [f"level{i}" for i in range(len(self.strides or ()))]
        return ["bbox_regression", "cls_logits"]

    # --- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["version"] = META_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> DetectorMeta:
        if not isinstance(data, dict):
            raise DetectionError("the detection metadata is not a JSON object")
        version = data.get("version", META_VERSION)
        if version != META_VERSION:
            raise DetectionError(
                f"detection metadata version {version!r} is not supported (this reader "
                f"knows version {META_VERSION})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"version"})
        if unknown:
            raise DetectionError(f"unknown detection metadata fields: {', '.join(unknown)}")
        for required in ("family", "num_classes", "input_size"):
            if required not in data:
                raise DetectionError(f"the detection metadata lacks {required!r}")
        values = {k: v for k, v in data.items() if k in names}
        try:
            if values.get("class_names") is not None:
                values["class_names"] = tuple(str(n) for n in values["class_names"])
            if values.get("anchors") is not None:
                values["anchors"] = tuple(
                    tuple((float(a[0]), float(a[1])) if len(a) == 2 else tuple(a) for a in level)
                    for level in values["anchors"]
                )
            if values.get("strides") is not None:
                values["strides"] = tuple(values["strides"])
            if values.get("priors") is not None:
                values["priors"] = tuple(tuple(float(v) for v in p) for p in values["priors"])
            if "box_weights" in values:
                values["box_weights"] = tuple(float(v) for v in values["box_weights"])
        except (TypeError, ValueError, IndexError) as exc:
            raise DetectionError(f"the detection metadata is malformed: {exc}") from exc
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> DetectorMeta:
        if len(text) > MAX_META_CHARS:
            raise DetectionError(
                f"the detection metadata is {len(text)} characters, over {MAX_META_CHARS}"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DetectionError(f"the detection metadata is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DetectionError(f"{name} must be a positive integer, not {value!r}")


def _finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@dataclass
class Detections:
    """One image's detections, highest score first."""

    boxes: np.ndarray  # (K, 4) float32, xyxy in input pixels
    scores: np.ndarray  # (K,) float32
    class_ids: np.ndarray  # (K,) int64, 0-based foreground classes
    class_names: list[str] = field(default_factory=list)  # per box, when the meta names classes

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "class_ids": self.class_ids.tolist(),
            "class_names": list(self.class_names),
        }


# --- decoding -------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x/2)) never overflows, unlike 1 / (1 + exp(-x)) for very negative x
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def decode_yolo(outputs: Sequence[np.ndarray], meta: DetectorMeta) -> tuple[np.ndarray, np.ndarray]:
    """Decode YOLO head outputs (Darknet v3) into boxes and per-class scores.

    Returns:
        ``boxes (N, B, 4)`` xyxy in input pixels (not clipped) and ``scores (N, B, C)``
        (``sigmoid(obj) * sigmoid(class)``), B running over levels (coarsest first), then
        anchors, then grid rows, then columns.
    """
    if meta.family != "yolo":
        raise DetectionError(f"decode_yolo got a {meta.family} detector's metadata")
    recognise_outputs([np.shape(o) for o in outputs], meta)
    assert meta.anchors is not None and meta.strides is not None
    c = meta.num_classes
    all_boxes, all_scores = [], []
    for out, anchors, stride in zip(outputs, meta.anchors, meta.strides, strict=True):
        arr = np.asarray(out, dtype=np.float32)
        n, _, h, w = arr.shape
        a = len(anchors)
        t = arr.reshape(n, a, 5 + c, h, w).transpose(0, 1, 3, 4, 2)  # N, A, H, W, 5+C
        cy, cx = np.meshgrid(
            np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
        )
        anchor_wh = np.asarray(anchors, dtype=np.float32).reshape(1, a, 1, 1, 2)
        x = (_sigmoid(t[..., 0]) + cx) * stride
        y = (_sigmoid(t[..., 1]) + cy) * stride
        with np.errstate(over="ignore"):  # a huge tw is an inf box, clipped by select()
            wh = anchor_wh * np.exp(t[..., 2:4])
        boxes = np.stack(
            [x - wh[..., 0] / 2, y - wh[..., 1] / 2, x + wh[..., 0] / 2, y + wh[..., 1] / 2],
            axis=-1,
        )
        scores = _sigmoid(t[..., 4:5]) * _sigmoid(t[..., 5:])
        all_boxes.append(boxes.reshape(n, -1, 4))
        all_scores.append(scores.reshape(n, -1, c))
    return (
        np.concatenate(all_boxes, axis=1).astype(np.float32, copy=False),
        np.concatenate(all_scores, axis=1).astype(np.float32, copy=False),
    )


def decode_ssd(
    bbox_regression: np.ndarray,
    cls_logits: np.ndarray,
    priors: np.ndarray | Sequence[Sequence[float]],
    weights: Sequence[float] = SSD_WEIGHTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode SSD outputs as torchvision's ``BoxCoder(weights).decode_single`` and a softmax.

    Args:
        bbox_regression: ``(N, P, 4)`` or ``(P, 4)`` offsets ``dx, dy, dw, dh``.
        cls_logits: ``(N, P, C+1)`` or ``(P, C+1)``, class 0 the background.
        priors: ``(P, 4)`` default boxes, xyxy.
        weights: the coder's ``(wx, wy, ww, wh)``.

    Returns:
        ``boxes`` (xyxy, not clipped) and ``scores`` with the background column dropped, with
        the batch axis when the inputs had one.
    """
    rel = np.asarray(bbox_regression, dtype=np.float32)
    logits = np.asarray(cls_logits, dtype=np.float32)
    pri = np.asarray(priors, dtype=np.float32)
    if rel.shape[-1] != 4 or pri.ndim != 2 or pri.shape[1] != 4 or rel.shape[-2] != pri.shape[0]:
        raise DetectionError(
            f"bbox_regression {rel.shape} does not fit {pri.shape[0] if pri.ndim == 2 else '?'} "
            "priors of 4 numbers"
        )
    if logits.shape[:-1] != rel.shape[:-1] or logits.shape[-1] < 2:
        raise DetectionError(
            f"cls_logits {logits.shape} do not fit bbox_regression {rel.shape} "
            "(expected (..., P, C+1) with a background class)"
        )
    wx, wy, ww, wh = (np.float32(v) for v in weights)
    widths = pri[:, 2] - pri[:, 0]
    heights = pri[:, 3] - pri[:, 1]
    ctr_x = pri[:, 0] + np.float32(0.5) * widths
    ctr_y = pri[:, 1] + np.float32(0.5) * heights
    dx = rel[..., 0] / wx
    dy = rel[..., 1] / wy
    dw = np.minimum(rel[..., 2] / ww, np.float32(BBOX_XFORM_CLIP))
    dh = np.minimum(rel[..., 3] / wh, np.float32(BBOX_XFORM_CLIP))
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = np.float32(0.5) * np.exp(dw) * widths
    half_h = np.float32(0.5) * np.exp(dh) * heights
    boxes = np.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
        axis=-1,
    ).astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=-1, keepdims=True)
    return boxes, probs[..., 1:].astype(np.float32, copy=False)


# --- NMS ------------------------------------------------------------------------------------


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes (K, 4)``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS (as ``torchvision.ops.nms``): indices of the kept boxes, highest score first.

    Each step keeps the best remaining box and drops, in one vector operation, every remaining
    box whose IoU with it is above ``iou_threshold``. ``max_keep`` stops after that many kept
    (the first ``max_keep`` of the full result, so the answer does not change).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise DetectionError(f"{boxes.shape[0]} boxes for {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    limit = boxes.shape[0] if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> np.ndarray:
    """Class-aware NMS (as ``torchvision.ops.batched_nms``): boxes of different classes never
    suppress each other. Each class's boxes are shifted by an offset larger than every
    coordinate, so one greedy pass serves all classes; indices highest score first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    ids = np.asarray(class_ids).reshape(-1).astype(np.float32)
    span = float(boxes.max() - min(float(boxes.min()), 0.0)) + 1.0
    shifted = boxes + (ids * np.float32(span))[:, None]
    return nms(shifted, scores, iou_threshold, max_keep=max_keep)


# --- post-processing ------------------------------------------------------------------------


def select(boxes: np.ndarray, scores: np.ndarray, meta: DetectorMeta) -> list[Detections]:
    """Decoded ``boxes (N, B, 4)`` and ``scores (N, B, C)`` -> detections per image: clip to the
    input, keep (box, class) pairs scoring above the threshold (at most ``pre_nms_top_k`` per
    class), class-aware NMS, the best ``max_detections``."""
    size = np.float32(meta.input_size)
    out = []
    for b in range(boxes.shape[0]):
        img_boxes = np.clip(boxes[b], np.float32(0.0), size)
        img_scores = scores[b]
        box_idx, cls_idx = np.nonzero(img_scores > meta.score_threshold)
        cand_scores = img_scores[box_idx, cls_idx]
        if meta.pre_nms_top_k is not None and cand_scores.size:
            keep_parts = []
            for c in np.unique(cls_idx):
                members = np.nonzero(cls_idx == c)[0]
                if members.size > meta.pre_nms_top_k:
                    top = np.argsort(-cand_scores[members], kind="stable")[: meta.pre_nms_top_k]
                    members = members[top]
                keep_parts.append(members)
            chosen = np.sort(np.concatenate(keep_parts))
            box_idx, cls_idx, cand_scores = box_idx[chosen], cls_idx[chosen], cand_scores[chosen]
        cand_boxes = img_boxes[box_idx]
        keep = batched_nms(
            cand_boxes, cand_scores, cls_idx, meta.iou_threshold, max_keep=meta.max_detections
        )
        ids = cls_idx[keep].astype(np.int64)
        names = [meta.class_names[i] for i in ids] if meta.class_names else []
        out.append(
            Detections(
                boxes=cand_boxes[keep].astype(np.float32).reshape(-1, 4),
                scores=cand_scores[keep].astype(np.float32),
                class_ids=ids,
                class_names=names,
            )
        )
    return out


def decode(outputs: Sequence[np.ndarray], meta: DetectorMeta) -> tuple[np.ndarray, np.ndarray]:
    """The family's decoder: boxes ``(N, B, 4)`` and foreground scores ``(N, B, C)``."""
    if meta.family == "yolo":
        return decode_yolo(outputs, meta)
    recognise_outputs([np.shape(o) for o in outputs], meta)
    return decode_ssd(outputs[0], outputs[1], np.asarray(meta.priors), meta.box_weights)


def postprocess(outputs: Sequence[np.ndarray], meta: DetectorMeta) -> list[Detections]:
    """Raw head outputs (as ONNX Runtime returns them) -> one :class:`Detections` per image."""
    boxes, scores = decode(outputs, meta)
    return select(boxes, scores, meta)


# --- recognising an ONNX detector's outputs -------------------------------------------------


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def recognise_outputs(
    output_shapes: Sequence[Sequence[Any]],
    meta: DetectorMeta,
    *,
    input_shape: Sequence[Any] | None = None,
) -> None:
    """Check that a detector's raw outputs are what post-processing decodes for ``meta``.

    Args:
        output_shapes: each output's shape; a symbolic or unknown dim (a string, None or a
            non-positive number) matches any size on the batch axis only.
        meta: the detector's metadata.
        input_shape: the image input's shape, ``(N, 3, S, S)``, checked against ``input_size``.

    Raises:
        DetectionError: naming the expected and the actual shapes.
    """
    expected = meta.expected_output_shapes()
    actual = [tuple(_dim(d) for d in shape) for shape in output_shapes]
    what = (
        f"a {meta.family.upper()} detector with {meta.num_classes} classes at {meta.input_size} px"
    )
    want = ", ".join(_fmt(s) for s in expected)
    got = ", ".join(_fmt(s) for s in actual) or "none"
    if len(actual) != len(expected):
        raise DetectionError(
            f"the post-processing for {what} expects {len(expected)} outputs {want}; "
            f"the model has {len(actual)}: {got}"
        )
    for i, (exp, act) in enumerate(zip(expected, actual, strict=True)):
        fits = len(exp) == len(act) and all(
            e is None or a == e for e, a in zip(exp, act, strict=True)
        )
        if not fits:
            raise DetectionError(
                f"output {i} has shape {_fmt(act)} where the post-processing for {what} "
                f"expects {_fmt(exp)} (all outputs expected: {want}; found: {got})"
            )
    if input_shape is not None:
        dims = tuple(_dim(d) for d in input_shape)
        size = meta.input_size
        if len(dims) != 4 or dims[2:] != (size, size) or dims[1] not in (None, 3):
            raise DetectionError(
                f"the input has shape {_fmt(dims)} where the detector's metadata expects "
                f"(N, 3, {size}, {size})"
            )


def _dim(d: Any) -> int | None:
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) > 0:
        return int(d)
    return None
