"""Detection training: the YOLOv3 loss, the augmentations and the loop for every detector family.

**YOLO family** (the contract of :mod:`compression.darknet`: ``model(x)`` returns one raw map
per level, coarsest stride first, ``(N, A*(5+C), H, W)`` with ``tx, ty, tw, th, obj, c0..``
per anchor; ``model.anchors`` in input pixels, ``model.strides``). The loss follows the YOLOv3
paper and Darknet's ``yolo_layer``:

* every ground-truth box goes to the one anchor, across all levels, whose ``(w, h)`` has the
  best IoU with the box's (both centred), at the grid cell holding the box's centre on that
  anchor's level (:func:`build_yolo_targets`); two boxes landing on one slot: the later wins;
* ``tx, ty``: binary cross-entropy between ``sigmoid(t)`` and the centre's offset in its cell;
  ``tw, th``: squared error against ``log(w / anchor_w)``; both weighted by
  ``2 - w * h / S**2`` (small boxes count more);
* objectness: binary cross-entropy, 1 at assigned slots, 0 elsewhere, except that a slot whose
  decoded box already overlaps a ground truth by more than ``ignore_threshold`` IoU (0.5) and
  is not assigned is left out (neither pushed up nor down);
* classes: binary cross-entropy per class (one-hot target) at assigned slots;
* the terms are summed over slots and divided by the batch size.

**torchvision families** (``family`` ``"ssd"`` or ``"fasterrcnn"``): the model takes a list of
CHW images and targets (labels ``1..C``, 0 is the background) in train mode and returns its loss
dict; the loss is the sum of its values.

Every family sees the same images: each sample is augmented (horizontal flip, scale jitter),
placed in the model's square input (:mod:`compression.detection_transforms`) with its boxes
moved, clipped and the mostly-cut-off ones dropped. The learning rate rises linearly over the
warm-up steps and then follows a cosine to zero (:func:`warmup_cosine`).

Progress and cancellation follow :mod:`compression.training`: ``progress(fraction, message,
metrics)`` once per epoch with ``epoch``, ``loss``, ``lr`` and, when measured, ``val_map50``;
``check_cancel()`` between batches (it raises :class:`compression.errors.Cancelled`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compression.detection_data import DetectionBundle, DetectionSample
from compression.detection_metrics import (
    evaluate_detector,
    images_to_tensor,
    input_size_of,
    model_family,
    yolo_spec,
)
from compression.detection_transforms import augment, letterbox
from compression.errors import ConfigError

ProgressFn = Callable[[float, str, dict[str, Any]], None]
CancelCheck = Callable[[], None]
OptimizerName = Literal["sgd", "adam"]

# --- configuration -------------------------------------------------------------------------


@dataclass
class DetectionTrainConfig:
    """How :func:`train_detector` trains.

    ``warmup_steps`` (optimizer steps), when set, overrides ``warmup_epochs``. ``scale_range``
    is the zoom range of the scale jitter (``(1.0, 1.0)`` turns it off). ``val_every``: measure
    the validation mAP@0.5 every so many epochs and after the last (0: never).
    ``max_batches_per_epoch`` cuts epochs short (smoke tests). ``input_size`` is used only for
    a model without ``input_size``.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: OptimizerName = "adam"
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    flip: bool = True
    scale_range: tuple[float, float] = (0.75, 1.25)
    seed: int = 0
    device: str = "cpu"
    ignore_threshold: float = 0.5
    # YOLO only: multipliers of the box, objectness and class terms (Darknet: all 1)
    box_gain: float = 1.0
    obj_gain: float = 1.0
    cls_gain: float = 1.0
    grad_clip: float = 10.0
    val_every: int = 0
    max_batches_per_epoch: int | None = None
    input_size: int | None = None
    # YOLO only: BatchNorm statistics re-estimated on this many train images (letterboxed, no
    # augmentation) before each validation and after the last epoch (0: keep the running ones)
    bn_recalibration_images: int = 256

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError("epochs", f"must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("lr", f"must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError("optimizer", f"must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.warmup_epochs < 0 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ConfigError("warmup_epochs", "warm-up must be >= 0")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError("scale_range", f"must be 0 < low <= high, got {self.scale_range}")
        if not 0 < self.ignore_threshold <= 1:
            raise ConfigError("ignore_threshold", f"must be in (0, 1], got {self.ignore_threshold}")
        for name in ("box_gain", "obj_gain", "cls_gain"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(name, f"must be a number >= 0, got {value}")
        if self.val_every < 0:
            raise ConfigError("val_every", f"must be >= 0, got {self.val_every}")
        if self.bn_recalibration_images < 0:
            raise ConfigError(
                "bn_recalibration_images", f"must be >= 0, got {self.bn_recalibration_images}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale_range"] = list(self.scale_range)
        return d


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, final_fraction: float = 0.0
) -> float:
    """The learning-rate factor for optimizer step ``step`` (0-based): ``(step + 1) / warmup``
    during the warm-up, then a cosine from 1 down to ``final_fraction`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))


# --- the YOLOv3 loss -----------------------------------------------------------------------


@dataclass
class LevelTargets:
    """The slots ground-truth boxes were assigned to on one level, and what they should say.

    ``batch, anchor, gy, gx`` index the slot; ``txy`` is the centre's offset in its cell
    (``[0, 1)``), ``twh`` ``log(box / anchor)``, ``weight`` ``2 - w * h / S**2``, ``cls`` the
    class index.
    """

    batch: torch.Tensor
    anchor: torch.Tensor
    gy: torch.Tensor
    gx: torch.Tensor
    txy: torch.Tensor
    twh: torch.Tensor
    weight: torch.Tensor
    cls: torch.Tensor

    def __len__(self) -> int:
        return int(self.batch.numel())


def _wh_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``(G, 2)`` and anchors ``(K, 2)`` by width and height alone (centred)."""
    inter = torch.min(wh[:, None, 0], anchors[None, :, 0]) * torch.min(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union.clamp(min=1e-9)


def build_yolo_targets(
    targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    anchors: Sequence[Sequence[tuple[float, float]]],
    strides: Sequence[int],
    grid_sizes: Sequence[tuple[int, int]],
    input_size: int,
) -> list[LevelTargets]:
    """Assign each ground-truth box of each image (``(boxes (n, 4) xyxy input pixels,
    labels (n,))``) to its best anchor across all levels, at its centre's cell there."""
    flat = [(lvl, a) for lvl, level in enumerate(anchors) for a in range(len(level))]
    all_wh = torch.tensor([anchors[lvl][a] for lvl, a in flat], dtype=torch.float32)
    slots: list[dict[tuple[int, int, int, int], tuple[float, ...]]] = [{} for _ in anchors]
    for b, (boxes, labels) in enumerate(targets):
        boxes = boxes.detach().float().cpu().reshape(-1, 4)
        if not len(boxes):
            continue
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        best = _wh_iou(wh, all_wh).argmax(dim=1).tolist()
        for g, k in enumerate(best):
            lvl, a = flat[k]
            stride = float(strides[lvl])
            h, w = grid_sizes[lvl]
            cx, cy = float(centre[g, 0]) / stride, float(centre[g, 1]) / stride
            gx, gy = (
                min(max(math.floor(cx), 0), w - 1),
                min(max(math.floor(cy), 0), h - 1),
            )
            bw, bh = float(wh[g, 0]), float(wh[g, 1])
            aw, ah = anchors[lvl][a]
            slots[lvl][(b, a, gy, gx)] = (
                min(max(cx - gx, 0.0), 1.0),
                min(max(cy - gy, 0.0), 1.0),
                math.log(bw / aw),
                math.log(bh / ah),
                2.0 - (bw * bh) / float(input_size * input_size),
                float(int(labels[g])),
            )
    out = []
    for level in slots:
        keys = list(level)
        vals = torch.tensor([level[k] for k in keys], dtype=torch.float32).reshape(-1, 6)
        idx = torch.tensor(keys, dtype=torch.int64).reshape(-1, 4)
        out.append(
            LevelTargets(
                batch=idx[:, 0],
                anchor=idx[:, 1],
                gy=idx[:, 2],
                gx=idx[:, 3],
                txy=vals[:, 0:2],
                twh=vals[:, 2:4],
                weight=vals[:, 4],
                cls=vals[:, 5].long(),
            )
        )
    return out


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes ``(P, 4)`` and ``(G, 4)``."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def decode_level(
    raw: torch.Tensor, anchors: Sequence[tuple[float, float]], stride: int, num_classes: int
) -> torch.Tensor:
    """Darknet v3 boxes of one level: ``(N, A, H, W, 4)`` xyxy in input pixels."""
    n, _, h, w = raw.shape
    a = len(anchors)
    t = raw.reshape(n, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2)
    gy, gx = torch.meshgrid(
        torch.arange(h, device=raw.device, dtype=raw.dtype),
        torch.arange(w, device=raw.device, dtype=raw.dtype),
        indexing="ij",
    )
    anchor_wh = torch.tensor(anchors, device=raw.device, dtype=raw.dtype).reshape(1, a, 1, 1, 2)
    x = (torch.sigmoid(t[..., 0]) + gx) * stride
    y = (torch.sigmoid(t[..., 1]) + gy) * stride
    wh = anchor_wh * torch.exp(t[..., 2:4].clamp(max=10.0))
    return torch.stack(
        [x - wh[..., 0] / 2, y - wh[..., 1] / 2, x + wh[..., 0] / 2, y + wh[..., 1] / 2], dim=-1
    )


def yolo_loss(
    outputs: Sequence[torch.Tensor],
    targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    anchors: Sequence[Sequence[tuple[float, float]]],
    strides: Sequence[int],
    num_classes: int,
    input_size: int,
    *,
    ignore_threshold: float = 0.5,
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The YOLOv3 loss of one batch (see the module's description); ``gains`` multiply the
    box, objectness and class terms.

    Returns the loss (summed over slots, divided by the batch size) and its parts as floats
    (``box``, ``obj``, ``cls``)."""
    if len(outputs) != len(anchors) or len(outputs) != len(strides):
        raise ValueError(
            f"{len(outputs)} output levels but {len(anchors)} anchor sets and {len(strides)} strides"
        )
    n = outputs[0].shape[0]
    grids = [(int(o.shape[2]), int(o.shape[3])) for o in outputs]
    assigned = build_yolo_targets(targets, anchors, strides, grids, input_size)
    dev = outputs[0].device
    gt_boxes = [t[0].detach().to(dev, torch.float32).reshape(-1, 4) for t in targets]
    box_sum = outputs[0].new_zeros(())
    obj_sum = outputs[0].new_zeros(())
    cls_sum = outputs[0].new_zeros(())
    for raw, level_anchors, stride, tgt in zip(outputs, anchors, strides, assigned, strict=True):
        a = len(level_anchors)
        _, channels, h, w = raw.shape
        if channels != a * (5 + num_classes):
            raise ValueError(
                f"a level has {channels} channels; {a} anchors and {num_classes} classes "
                f"need {a * (5 + num_classes)}"
            )
        p = raw.float().reshape(n, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2)
        obj_target = torch.zeros(p.shape[:4], device=dev)
        counted = torch.ones(p.shape[:4], device=dev, dtype=torch.bool)
        with torch.no_grad():
            pred_boxes = decode_level(raw.detach().float(), level_anchors, stride, num_classes)
            for b in range(n):
                if len(gt_boxes[b]):
                    best = _box_iou(pred_boxes[b].reshape(-1, 4), gt_boxes[b]).max(dim=1).values
                    counted[b] &= (best <= ignore_threshold).reshape(a, h, w)
        if len(tgt):
            b_i, a_i = tgt.batch.to(dev), tgt.anchor.to(dev)
            y_i, x_i = tgt.gy.to(dev), tgt.gx.to(dev)
            obj_target[b_i, a_i, y_i, x_i] = 1.0
            counted[b_i, a_i, y_i, x_i] = True
            slot = p[b_i, a_i, y_i, x_i]  # (P, 5 + C)
            weight = tgt.weight.to(dev)
            xy = F.binary_cross_entropy_with_logits(
                slot[:, 0:2], tgt.txy.to(dev), reduction="none"
            ).sum(dim=1)
            wh = ((slot[:, 2:4] - tgt.twh.to(dev)) ** 2).sum(dim=1)
            box_sum = box_sum + ((xy + wh) * weight).sum()
            onehot = F.one_hot(tgt.cls.to(dev), num_classes).float()
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(
                slot[:, 5:], onehot, reduction="sum"
            )
        obj = F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none")
        obj_sum = obj_sum + obj[counted].sum()
    box_gain, obj_gain, cls_gain = gains
    total = (box_gain * box_sum + obj_gain * obj_sum + cls_gain * cls_sum) / max(n, 1)
    parts = {
        "box": float(box_sum.detach()) / max(n, 1),
        "obj": float(obj_sum.detach()) / max(n, 1),
        "cls": float(cls_sum.detach()) / max(n, 1),
    }
    return total, parts


def model_yolo_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    ignore_threshold: float = 0.5,
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`yolo_loss` of a YOLO-contract model on one batch."""
    spec = yolo_spec(model)
    outputs = model(inputs)
    return yolo_loss(
        outputs,
        targets,
        spec.anchors,
        spec.strides,
        spec.num_classes,
        int(inputs.shape[-1]),
        ignore_threshold=ignore_threshold,
        gains=gains,
    )


# --- anchors fitted to the data ------------------------------------------------------------


def kmeans_anchors(
    wh: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100
) -> list[tuple[float, float]]:
    """``k`` anchor sizes for boxes of sizes ``wh`` (``(G, 2)`` widths and heights, input
    pixels), smallest area first: k-means with ``1 - IoU`` (boxes centred) as the distance and
    the median as the centre, as Darknet users re-derive anchors for their own data.

    Raises ``ValueError`` for fewer than ``k`` boxes or a size that is not positive."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes cannot give {k} anchors")
    if not np.all(np.isfinite(wh)) or np.any(wh <= 0):
        raise ValueError("box widths and heights must be positive")
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)]
    for _ in range(iterations):
        inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(
            wh[:, None, 1], centres[None, :, 1]
        )
        union = wh.prod(axis=1)[:, None] + centres.prod(axis=1)[None, :] - inter
        nearest = (inter / union).argmax(axis=1)
        moved = np.array(
            [
                np.median(wh[nearest == j], axis=0) if np.any(nearest == j) else centres[j]
                for j in range(k)
            ]
        )
        if np.allclose(moved, centres):
            break
        centres = moved
    centres = centres[np.argsort(centres.prod(axis=1), kind="stable")]
    return [(float(w), float(h)) for w, h in centres]


def fit_yolo_anchors(
    model: nn.Module, bundle: DetectionBundle, *, seed: int = 0
) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Replace a YOLO-contract model's anchors by :func:`kmeans_anchors` of ``bundle``'s train
    boxes, letterboxed to the model's input size; the largest go to the coarsest level (as in
    the cfg files). Sets ``model.anchors`` and each level module's ``anchors`` (what the loss,
    the post-processing and the export read) and returns the new anchors.

    Anchors are not part of the weights: a model rebuilt from the zoo gets the cfg's again."""
    spec = yolo_spec(model)
    size = input_size_of(model)
    sizes = []
    for s in bundle.train:
        if len(s.boxes):
            h, w = s.image.shape[:2]
            scale = size / max(h, w)  # the letterbox's scale
            sizes.append((s.boxes[:, 2:] - s.boxes[:, :2]) * scale)
    if not sizes:
        raise ValueError(f"the data set {bundle.name!r} has no training boxes to fit anchors to")
    counts = [len(level) for level in spec.anchors]
    fitted = kmeans_anchors(np.concatenate(sizes).clip(min=1.0), sum(counts), seed=seed)
    # spec.strides is coarsest first for the cfg files: the largest anchors go there.
    order = sorted(range(len(counts)), key=lambda i: -spec.strides[i])
    levels: list[tuple[tuple[float, float], ...]] = [() for _ in counts]
    end = len(fitted)
    for i in order:
        levels[i] = tuple(fitted[end - counts[i] : end])
        end -= counts[i]
    anchors = tuple(levels)
    setattr(model, "anchors", anchors)  # noqa: B010 (a plain attribute, not a submodule)
    level_modules = [
        m
        for m in model.modules()
        if hasattr(m, "stride") and hasattr(m, "anchors") and m is not model
    ]
    if len(level_modules) == len(anchors):
        for module, level in zip(level_modules, anchors, strict=True):
            setattr(module, "anchors", level)  # noqa: B010
    return anchors


# --- the loop ------------------------------------------------------------------------------


@dataclass
class DetectionHistory:
    """What training did: one row per epoch (``epoch``, ``loss``, ``lr``, ``seconds`` and,
    when measured, ``val_map50`` and ``val_map50_95``; YOLO rows add ``box``, ``obj``, ``cls``,
    torchvision rows the model's own loss names). ``lr`` is the last step's."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate of every step
    steps: int = 0
    seconds: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.epochs]

    @property
    def val_map50(self) -> list[tuple[int, float]]:
        return [(int(r["epoch"]), r["val_map50"]) for r in self.epochs if "val_map50" in r]

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [dict(r) for r in self.epochs],
            "lrs": list(self.lrs),
            "steps": self.steps,
            "seconds": self.seconds,
        }


def make_batch(
    samples: Sequence[DetectionSample],
    size: int,
    rng: np.random.Generator,
    *,
    flip: bool,
    scale_range: tuple[float, float],
    device: torch.device,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Augmented ``(N, 3, size, size)`` float images and their ``(boxes, labels)`` (0-based)
    in input pixels."""
    images, targets = [], []
    for s in samples:
        img, boxes, labels = augment(
            s.image, s.boxes, s.labels, size, rng, flip=flip, scale_range=scale_range
        )
        images.append(img)
        targets.append((torch.from_numpy(boxes).to(device), torch.from_numpy(labels).to(device)))
    return images_to_tensor(images, device), targets


_BatchNorm = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    samples: Sequence[DetectionSample],
    size: int,
    *,
    device: torch.device,
    batch_size: int = 16,
) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance of a YOLO-contract model
    as the plain average over ``samples`` (letterboxed to ``size``, not augmented), the weights
    untouched; leave the model in eval mode. Batches are of ``batch_size`` (a shorter last one
    is left out unless it is the only one). Returns the number of images seen (0: the model has
    no BatchNorm, nothing done).

    Why: the running statistics start at mean 0 and variance 1 and move by the layer's
    ``momentum`` (0.03 in :mod:`compression.darknet`) per step, while the first layers' true
    variances on ``[0, 1]`` images are about 0.01-0.1. After ``k`` steps the start still weighs
    ``0.97**k`` (0.13 after 66 steps, 0.03 after 120), which can inflate an early layer's
    variance several times over and leave the eval-mode detector far below the train-mode one
    (8 memorised scenes: mAP@0.5 0.19 with the running statistics, 1.0 re-estimated)."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms or not samples:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    # equal batches (the average weighs every batch alike): a ragged tail is left out
    used = len(samples) if len(samples) <= batch_size else len(samples) // batch_size * batch_size
    model.train()
    try:
        for i in range(0, used, batch_size):
            images = [letterbox(s.image, size)[0] for s in samples[i : i + batch_size]]
            model(images_to_tensor(images, device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return used


def _optimizer(model: nn.Module, cfg: DetectionTrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (1-D parameters), as detectors usually train.
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_detector(
    model: nn.Module,
    bundle: DetectionBundle,
    cfg: DetectionTrainConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    check_cancel: CancelCheck | None = None,
    progress_range: tuple[float, float] = (0.0, 1.0),
    label: str = "detection training",
    after_backward: Callable[[nn.Module], None] | None = None,
) -> DetectionHistory:
    """Train ``model`` (family ``yolo``, ``ssd`` or ``fasterrcnn``) in place on ``bundle``'s
    train split; leave it in eval mode on ``cfg.device``.

    ``progress`` receives the fraction of ``progress_range`` done after each epoch, a message,
    and that epoch's row. Raises :class:`~compression.errors.ConfigError` for a bad config,
    ``ValueError`` for a model that is no detector or a bundle whose classes do not match it,
    ``FloatingPointError`` when the loss stops being finite, and whatever ``check_cancel``
    raises. ``after_backward(model)``, when given, runs after every backward pass and before
    the gradient clipping and the optimizer step (e.g. an L1 penalty on the BatchNorm scales
    for network slimming's sparsity training).
    """
    cfg = cfg or DetectionTrainConfig()
    cfg.validate()
    family = model_family(model)
    size = input_size_of(model, cfg.input_size)
    classes = getattr(model, "num_classes", None)
    if classes is not None and int(classes) != bundle.num_classes:
        raise ValueError(
            f"the model detects {classes} classes but the data set {bundle.name!r} has "
            f"{bundle.num_classes}"
        )
    if not bundle.train:
        raise ValueError(f"the data set {bundle.name!r} has no training images")
    history = DetectionHistory()
    if cfg.epochs == 0:
        model.eval()
        return history

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    opt = _optimizer(model, cfg)
    n = len(bundle.train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    if cfg.max_batches_per_epoch is not None:
        steps_per_epoch = max(1, min(steps_per_epoch, cfg.max_batches_per_epoch))
    total = cfg.epochs * steps_per_epoch
    warmup = (
        cfg.warmup_steps
        if cfg.warmup_steps is not None
        else round(cfg.warmup_epochs * steps_per_epoch)
    )
    warmup = min(warmup, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    params = [p for group in opt.param_groups for p in group["params"]]
    start, end = progress_range
    recalibrate = family == "yolo" and cfg.bn_recalibration_images > 0
    calibration = bundle.train[: cfg.bn_recalibration_images]
    recalibrated_after = 0  # the epoch after which the statistics were last re-estimated
    began = time.perf_counter()

    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen).tolist()
        loss_sum, seen = 0.0, 0
        part_sums: dict[str, float] = {}
        lr_used = opt.param_groups[0]["lr"]
        for step in range(steps_per_epoch):
            if check_cancel is not None:
                check_cancel()
            chunk = [
                bundle.train[i] for i in perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            ]
            if not chunk:
                break
            inputs, targets = make_batch(
                chunk, size, rng, flip=cfg.flip, scale_range=cfg.scale_range, device=device
            )
            lr_used = opt.param_groups[0]["lr"]
            if family == "yolo":
                loss, parts = model_yolo_loss(
                    model,
                    inputs,
                    targets,
                    ignore_threshold=cfg.ignore_threshold,
                    gains=(cfg.box_gain, cfg.obj_gain, cfg.cls_gain),
                )
            else:
                tv_targets = [{"boxes": b, "labels": lab + 1} for b, lab in targets]
                losses = model(list(inputs), tv_targets)
                loss = sum(losses.values(), inputs.new_zeros(()))
                parts = {k: float(v.detach()) for k, v in losses.items()}
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{label}: the loss became {float(loss)} at epoch {epoch + 1}, step "
                    f"{step + 1}; lower the learning rate (now {lr_used:.3g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            history.steps += 1
            history.lrs.append(float(lr_used))
            loss_sum += float(loss.detach()) * len(chunk)
            seen += len(chunk)
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v * len(chunk)
        row: dict[str, float] = {
            "epoch": float(epoch + 1),
            "loss": loss_sum / max(seen, 1),
            "lr": float(lr_used),
        }
        row.update({k: v / max(seen, 1) for k, v in part_sums.items()})
        last = epoch + 1 == cfg.epochs
        if cfg.val_every and bundle.val and ((epoch + 1) % cfg.val_every == 0 or last):
            if check_cancel is not None:
                check_cancel()
            if recalibrate:
                recalibrate_batchnorm(model, calibration, size, device=device)
                recalibrated_after = epoch + 1
            metrics = evaluate_detector(
                model, bundle.val, bundle.classes, input_size=size, check_cancel=check_cancel
            )
            row["val_map50"] = metrics.map50
            row["val_map50_95"] = metrics.map50_95
        row["seconds"] = time.perf_counter() - t0
        history.epochs.append(row)
        if progress is not None:
            frac = start + (end - start) * (epoch + 1) / cfg.epochs
            shown = f", val mAP@0.5 {row['val_map50']:.3f}" if "val_map50" in row else ""
            progress(
                frac,
                f"{label}: epoch {epoch + 1}/{cfg.epochs}, loss {row['loss']:.4f}{shown}",
                dict(row),
            )
    if recalibrate and recalibrated_after != cfg.epochs:
        recalibrate_batchnorm(model, calibration, size, device=device)
    history.seconds = time.perf_counter() - began
    model.eval()
    return history
