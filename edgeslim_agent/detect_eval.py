"""On-device mAP of an ONNX detector on the shipped test split, in numpy (no torch, no native
extension beyond numpy and ONNX Runtime).

The evaluation set of a detection deployment is an ``.npz`` of plain arrays (read with
``allow_pickle=False``; :func:`load_detection_eval_set` checks every array's name, dtype, shape
and size against :class:`EvalCaps` before it is used):

- ``task``: 0-d string ``"detection"`` (a classification set has no ``task``, or
  ``"classification"``);
- ``x``: uint8 ``(N, 3, S, S)``: each test image letterboxed to the model's input size ``S`` on
  grey 114, as :func:`compression.detection_metrics.evaluate_detector` places it (the agent
  divides by 255);
- ``placement``: float64 ``(N, 4)``: ``scale_x, scale_y, pad_x, pad_y`` of each image
  (``x_in = x * scale_x + pad_x``), so detections are mapped back to the image's own pixels;
- ``image_size``: int64 ``(N, 2)``: each image's ``width, height``;
- ``boxes``: float32 ``(M, 4)``: every ground-truth box, ``x1, y1, x2, y2`` in the image's own
  pixels, image after image; ``labels``: int64 ``(M,)`` in ``0..C-1``; ``box_counts``: int64
  ``(N,)``, the boxes of each image (summing to M);
- ``class_names``: unicode ``(C,)``;
- plus the classification set's descriptive 0-d arrays (``dataset``, ``split``, ``split_seed``,
  ``count``, ``test_size``).

The detector runs on ``x / 255``; its raw outputs go through
:func:`edgeslim_agent.detect_post.postprocess` with the evaluation settings of the studio's own
mAP (score above 0.001, NMS IoU 0.5, at most 100 boxes per image, at most 1000 candidates per
class before NMS); the boxes are mapped back to image pixels and clipped to the image, exactly
as the studio's ``evaluate_detector`` does, and scored with :func:`coco_map`.

:func:`coco_map` is COCO's bbox evaluation (what ``faster_coco_eval`` and torchmetrics'
``MeanAveragePrecision`` compute) for one area range ("all") and one detection limit (100):
per class and IoU threshold, detections of each image sorted by score (stable), the best 100
per image and class kept, each matched greedily to the unmatched ground truth of highest IoU at
or above the threshold; precision made monotone and read at 101 recall points; AP averaged over
the classes that have ground truth. mAP@0.5:0.95 is the mean over the ten thresholds
0.50:0.05:0.95.
"""

from __future__ import annotations

import dataclasses
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim_agent import detect_post

TASK_DETECTION = "detection"
TASK_CLASSIFICATION = "classification"

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
EVAL_SCORE_THRESHOLD = detect_post.EVAL_SCORE_THRESHOLD  # 0.001
EVAL_NMS_IOU = 0.5
EVAL_PRE_NMS_TOP_K = 1000

# per-class rows in one accuracy result (the message stays under the protocol's frame limit)
MAX_PER_CLASS = 200
MAX_CLASS_NAME = 64  # characters of a class name in a per-class row

REQUIRED_ARRAYS = ("x", "placement", "image_size", "boxes", "labels", "box_counts", "class_names")


class EvalSetError(ValueError):
    """The detection evaluation set is malformed or over a cap (the message says which)."""


@dataclass(frozen=True)
class EvalCaps:
    """What the agent accepts in a detection evaluation set before it loads it."""

    max_images: int = 10_000
    max_boxes: int = 1_000_000
    max_boxes_per_image: int = 10_000
    max_classes: int = 10_000
    max_side: int = 4096
    max_array_bytes: int = 2 * 1024**3  # any one array, uncompressed


@dataclass
class DetectionEvalSet:
    """A loaded, checked detection evaluation set."""

    x: np.ndarray  # (N, 3, S, S) uint8
    placement: np.ndarray  # (N, 4) float64
    image_size: np.ndarray  # (N, 2) int64
    boxes: list[np.ndarray]  # per image (k, 4) float32
    labels: list[np.ndarray]  # per image (k,) int64
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def total_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def eval_set_task(path: Path | str) -> str:
    """``"detection"`` when the ``.npz`` declares it, else ``"classification"``."""
    with np.load(path, allow_pickle=False) as npz:
        if "task" not in npz.files:
            return TASK_CLASSIFICATION
        task = npz["task"]
    if task.dtype.kind != "U" or task.shape != ():
        raise EvalSetError("the evaluation set's 'task' is not a string")
    return str(task)


def _check_sizes(path: Path | str, caps: EvalCaps) -> None:
    """Refuse an array whose uncompressed bytes are over the cap, before reading any."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.file_size > caps.max_array_bytes:
                    raise EvalSetError(
                        f"the evaluation set's {info.filename} is {info.file_size} bytes "
                        f"uncompressed, over the cap of {caps.max_array_bytes}"
                    )
    except zipfile.BadZipFile as exc:
        raise EvalSetError(f"the evaluation set is not an .npz: {exc}") from exc


def load_detection_eval_set(path: Path | str, caps: EvalCaps | None = None) -> DetectionEvalSet:
    """Read and check a detection evaluation set (see the module's docstring).

    Raises:
        EvalSetError: an array is missing, of the wrong dtype or shape, inconsistent with the
            others, or over a cap; or the file holds pickles.
    """
    caps = caps or EvalCaps()
    _check_sizes(path, caps)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in REQUIRED_ARRAYS if name not in npz.files]
            if missing:
                raise EvalSetError(
                    f"the detection evaluation set lacks the arrays {', '.join(missing)}"
                )
            arrays = {name: npz[name] for name in REQUIRED_ARRAYS}
    except ValueError as exc:
        if isinstance(exc, EvalSetError):
            raise
        raise EvalSetError(f"the evaluation set could not be read: {exc}") from exc
    x = arrays["x"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise EvalSetError(f"x must be uint8 (N, 3, S, S); it is {x.dtype} {x.shape}")
    n = int(x.shape[0])
    if not 1 <= n <= caps.max_images:
        raise EvalSetError(f"the evaluation set holds {n} images; 1 to {caps.max_images} allowed")
    if not 1 <= x.shape[2] <= caps.max_side:
        raise EvalSetError(f"the images are {x.shape[2]} px; at most {caps.max_side} allowed")
    placement = arrays["placement"]
    if placement.dtype.kind != "f" or placement.shape != (n, 4):
        raise EvalSetError(f"placement must be float ({n}, 4); it is {placement.shape}")
    placement = placement.astype(np.float64)
    if not np.isfinite(placement).all() or (placement[:, :2] <= 0).any():
        raise EvalSetError("placement holds a non-finite value or a scale that is not positive")
    image_size = arrays["image_size"]
    if image_size.dtype.kind not in "iu" or image_size.shape != (n, 2):
        raise EvalSetError(f"image_size must be integer ({n}, 2); it is {image_size.shape}")
    image_size = image_size.astype(np.int64)
    if (image_size < 1).any() or (image_size > 1 << 16).any():
        raise EvalSetError("image_size holds a side outside 1..65536")
    names = arrays["class_names"]
    if names.dtype.kind != "U" or names.ndim != 1 or not 1 <= len(names) <= caps.max_classes:
        raise EvalSetError(
            f"class_names must be 1 to {caps.max_classes} strings; it is {names.dtype} "
            f"{names.shape}"
        )
    counts = arrays["box_counts"]
    if counts.dtype.kind not in "iu" or counts.shape != (n,):
        raise EvalSetError(f"box_counts must be integer ({n},); it is {counts.shape}")
    counts = counts.astype(np.int64)
    if (counts < 0).any() or (counts > caps.max_boxes_per_image).any():
        raise EvalSetError(f"box_counts must be 0..{caps.max_boxes_per_image} per image")
    m = int(counts.sum())
    if m > caps.max_boxes:
        raise EvalSetError(f"the evaluation set holds {m} boxes; at most {caps.max_boxes}")
    boxes, labels = arrays["boxes"], arrays["labels"]
    if boxes.dtype.kind != "f" or boxes.shape != (m, 4):
        raise EvalSetError(
            f"boxes must be float ({m}, 4) for {m} counted boxes; it is {boxes.shape}"
        )
    if labels.dtype.kind not in "iu" or labels.shape != (m,):
        raise EvalSetError(f"labels must be integer ({m},); it is {labels.shape}")
    boxes = boxes.astype(np.float32)
    labels = labels.astype(np.int64)
    if not np.isfinite(boxes).all():
        raise EvalSetError("boxes hold a non-finite coordinate")
    if m and (labels.min() < 0 or labels.max() >= len(names)):
        raise EvalSetError(f"a label is outside 0..{len(names) - 1}")
    if m == 0:
        raise EvalSetError("the evaluation set has no ground-truth box: mAP is undefined")
    splits = np.cumsum(counts)[:-1]
    return DetectionEvalSet(
        x=x,
        placement=placement,
        image_size=image_size,
        boxes=list(np.split(boxes, splits)),
        labels=list(np.split(labels, splits)),
        class_names=[str(s) for s in names.tolist()],
    )


# --- COCO-style mAP ---------------------------------------------------------------------------


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a (K, 4)`` with every box of ``b (G, 4)``, xyxy, as COCO: no +1."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(
        0
    )
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(
        0
    )
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class MapResult:
    """mAP over the classes with ground truth; per class ``None`` where a class has none."""

    map50: float
    map50_95: float
    per_class_ap50: list[float | None]
    per_class_ap50_95: list[float | None]
    ground_truths: list[int]
    images: int
    detections: int


def coco_map(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    max_detections: int = MAX_DETECTIONS,
) -> MapResult:
    """COCO bbox mAP (area "all", ``max_detections`` per image) of per-image predictions
    ``(boxes (K, 4), scores (K,), labels (K,))`` against ``(boxes (G, 4), labels (G,))``, both
    xyxy in the same pixels.

    Raises:
        ValueError: lengths differ, a label is out of range, or no image has ground truth.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truth)} ground truths")
    t = len(IOU_THRESHOLDS)
    # per class: scores of every kept detection, and whether it matched at each threshold
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    matched: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, dtype=np.int64)
    detections = 0
    for (pb, ps, pl), (gb, gl) in zip(predictions, ground_truth, strict=True):
        pb = np.asarray(pb, dtype=np.float64).reshape(-1, 4)
        ps = np.asarray(ps, dtype=np.float64).reshape(-1)
        pl = np.asarray(pl, dtype=np.int64).reshape(-1)
        gb = np.asarray(gb, dtype=np.float64).reshape(-1, 4)
        gl = np.asarray(gl, dtype=np.int64).reshape(-1)
        for name, lab in (("predicted", pl), ("ground-truth", gl)):
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(f"a {name} label is outside 0..{num_classes - 1}")
        n_gt += np.bincount(gl, minlength=num_classes)
        for c in np.union1d(np.unique(pl), np.unique(gl)):
            d_idx = np.nonzero(pl == c)[0]
            g = gb[gl == c]
            order = np.argsort(-ps[d_idx], kind="mergesort")[:max_detections]
            d_idx = d_idx[order]
            detections += len(d_idx)
            if not len(d_idx):
                continue
            hits = np.zeros((len(d_idx), t), dtype=bool)
            if len(g):
                ious = _iou_matrix(pb[d_idx], g)
                for ti, thr in enumerate(IOU_THRESHOLDS):
                    used = np.zeros(len(g), dtype=bool)
                    limit = min(float(thr), 1 - 1e-10)
                    for di in range(len(d_idx)):
                        row = np.where(used, -1.0, ious[di])
                        best = int(np.argmax(row))
                        if row[best] >= limit:
                            used[best] = True
                            hits[di, ti] = True
            scores[int(c)].append(ps[d_idx])
            matched[int(c)].append(hits)
    if int(n_gt.sum()) == 0:
        raise ValueError(f"mAP is undefined: the {len(ground_truth)} image(s) have no box")
    ap = np.full((num_classes, t), np.nan)
    for c in range(num_classes):
        if n_gt[c] == 0:
            continue
        if not scores[c]:
            ap[c] = 0.0
            continue
        s = np.concatenate(scores[c])
        h = np.concatenate(matched[c])
        order = np.argsort(-s, kind="mergesort")
        h = h[order]
        tp = np.cumsum(h, axis=0, dtype=np.float64)
        fp = np.cumsum(~h, axis=0, dtype=np.float64)
        for ti in range(t):
            recall = tp[:, ti] / n_gt[c]
            precision = tp[:, ti] / np.maximum(tp[:, ti] + fp[:, ti], np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            idx = np.searchsorted(recall, RECALL_POINTS, side="left")
            q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
            ap[c, ti] = float(q.mean())
    has = n_gt > 0
    per50 = [float(ap[c, 0]) if has[c] else None for c in range(num_classes)]
    per5095 = [float(ap[c].mean()) if has[c] else None for c in range(num_classes)]
    return MapResult(
        map50=float(ap[has, 0].mean()),
        map50_95=float(ap[has].mean()),
        per_class_ap50=per50,
        per_class_ap50_95=per5095,
        ground_truths=[int(v) for v in n_gt],
        images=len(ground_truth),
        detections=detections,
    )


# --- running a detector on the set ------------------------------------------------------------


def eval_meta(meta: detect_post.DetectorMeta) -> detect_post.DetectorMeta:
    """The detector's post-processing with the mAP settings (every box down to score 0.001)."""
    return dataclasses.replace(
        meta,
        score_threshold=EVAL_SCORE_THRESHOLD,
        iou_threshold=EVAL_NMS_IOU,
        max_detections=MAX_DETECTIONS,
        pre_nms_top_k=meta.pre_nms_top_k or EVAL_PRE_NMS_TOP_K,
    )


def boxes_to_image(boxes: np.ndarray, placement: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Boxes in input pixels back to the image's own pixels, clipped to it (as the studio's
    ``Placement.boxes_to_image``)."""
    sx, sy, px, py = (float(v) for v in placement)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - px) / sx
    out[:, [1, 3]] = (out[:, [1, 3]] - py) / sy
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, int(size[0]))
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, int(size[1]))
    return out


def detector_meta_of(session: Any) -> detect_post.DetectorMeta | None:
    """The detection metadata an ONNX Runtime session's model carries, or None (a classifier)."""
    text = session.get_modelmeta().custom_metadata_map.get(detect_post.META_KEY)
    if not text:
        return None
    return detect_post.DetectorMeta.from_json(text)


def evaluate_session(
    session: Any,
    data: DetectionEvalSet,
    meta: detect_post.DetectorMeta,
    *,
    batch: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """mAP of the session's detector on ``data``: the accuracy result's data (see
    docs/protocol.md): ``task``, ``map50``, ``map50_95`` (0-1), ``samples`` (images),
    ``boxes`` (ground truth), ``detections``, ``per_class`` and ``seconds``."""
    inp = session.get_inputs()[0]
    size = int(data.x.shape[2])
    if size != meta.input_size:
        raise EvalSetError(
            f"the evaluation set's images are {size} px but the detector takes {meta.input_size}"
        )
    detect_post.recognise_outputs(
        [o.shape for o in session.get_outputs()], meta, input_shape=inp.shape
    )
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    post = eval_meta(meta)
    started = time.perf_counter()
    predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n = len(data)
    for start in range(0, n, step):
        # as the studio feeds it: uint8 / 255 in float32
        chunk = (data.x[start : start + step].astype(np.float32) / np.float32(255.0)).astype(dtype)
        real = len(chunk)
        if fixed and real < fixed:
            pad = np.zeros((fixed - real, *chunk.shape[1:]), dtype=dtype)
            chunk = np.concatenate([chunk, pad])
        outputs = [np.asarray(o, dtype=np.float32) for o in session.run(None, {inp.name: chunk})]
        for i, found in enumerate(detect_post.postprocess(outputs, post)[:real]):
            j = start + i
            predictions.append(
                (
                    boxes_to_image(found.boxes, data.placement[j], data.image_size[j]),
                    found.scores,
                    found.class_ids,
                )
            )
        if on_batch is not None:
            on_batch(min(start + step, n), n)
    result = coco_map(
        predictions, list(zip(data.boxes, data.labels, strict=True)), len(data.class_names)
    )
    return {
        "task": TASK_DETECTION,
        "metric": "mAP@0.5",
        "map50": result.map50,
        "map50_95": result.map50_95,
        "samples": n,
        "boxes": data.total_boxes,
        "detections": result.detections,
        "per_class": [
            {
                "class": name[:MAX_CLASS_NAME],
                "ap50": result.per_class_ap50[i],
                "ap50_95": result.per_class_ap50_95[i],
                "boxes": result.ground_truths[i],
            }
            for i, name in enumerate(data.class_names)
        ][:MAX_PER_CLASS],
        "score_threshold": post.score_threshold,
        "nms_iou": post.iou_threshold,
        "seconds": time.perf_counter() - started,
    }
