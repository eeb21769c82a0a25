"""Detection-aware distillation losses for YOLO-contract detectors (pure functions of tensors).

A student and a teacher with the same classes, anchors and levels (the contract of
:mod:`compression.darknet`: one raw ``(N, A * (5 + C), H, W)`` map per level, anchor ``a``'s
channels at ``a * (5 + C) + [tx, ty, tw, th, obj, c0 .. cC-1]``) are compared slot by slot. Seed
003 (a master's thesis compressing YOLOv3) names "a regression loss based on teacher upper
bound"; its stored text is the abstract, without formulas, so that loss follows the published
method it names, Chen et al. 2017 ("Learning Efficient Object Detection Models with Knowledge
Distillation", NeurIPS), as do the other terms:

* :func:`objectness_kd`: the student's objectness against the teacher's ``sigmoid(obj)`` as a
  soft target, at every slot. Binary cross-entropy to a soft target ``p`` is the binary KL
  divergence plus the target's own entropy ``H(p)``, which does not depend on the student;
  the entropy is subtracted, so the value is 0 exactly when the student says what the teacher
  says (same gradient as the cross-entropy).
* :func:`class_kd`: per class, the binary KL between ``sigmoid(t_c / T)`` and
  ``sigmoid(s_c / T)`` (YOLOv3 scores each class with its own sigmoid, not a softmax), times
  ``T**2`` (Hinton's scaling, so ``T`` does not change the gradient's size), weighted at each
  slot by the teacher's objectness ``sigmoid(t_obj)``, so that the thousands of background
  slots, where the class scores mean nothing, do not dominate.
* :func:`bounded_box_loss`: Chen et al.'s teacher-bounded regression loss. At each slot a
  ground-truth box is assigned to (the same assignment as the YOLOv3 loss,
  :func:`compression.detection_train.build_yolo_targets`), the box error ``e`` of the student
  and of the teacher is the YOLOv3 box term (binary cross-entropy of ``sigmoid(tx, ty)``
  against the centre's offset plus the squared error of ``tw, th`` against ``log(w / anchor)``,
  times ``2 - w h / S**2``); the student's error counts only where ``e_s + m > e_t``, i.e.
  until the student beats the teacher by the margin ``m``. With ``m = 0`` it counts where the
  student is worse than the teacher; a negative ``m`` tolerates a student worse by up to
  ``-m``.
* :func:`hint_loss`: FitNets / Chen et al.'s hint, the mean squared difference between the
  feature maps a level's head reads, the student's through a 1x1 adapter when its channel
  count differs (e.g. after channel pruning).

Every loss is summed over slots and divided by the batch size, like the YOLOv3 loss, so the
weights put them on the scale of its terms; the hint is a mean over elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compression.detection_train import build_yolo_targets

__all__ = [
    "YoloLayout",
    "binary_kl_with_logits",
    "bounded_box_loss",
    "class_kd",
    "hint_loss",
    "objectness_kd",
]


@dataclass(frozen=True)
class YoloLayout:
    """What is needed to read raw YOLO maps: anchors per level (input pixels), strides, classes."""

    anchors: tuple[tuple[tuple[float, float], ...], ...]
    strides: tuple[int, ...]
    num_classes: int

    def slots(self, raw: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level``'s raw map as ``(N, A, H, W, 5 + C)`` float32."""
        n, channels, h, w = raw.shape
        a = len(self.anchors[level])
        if channels != a * (5 + self.num_classes):
            raise ValueError(
                f"level {level} has {channels} channels; {a} anchors and {self.num_classes} "
                f"classes need {a * (5 + self.num_classes)}"
            )
        return raw.float().reshape(n, a, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)


def binary_kl_with_logits(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Bernoulli(sigmoid(teacher)) || Bernoulli(sigmoid(student)))``: the binary
    cross-entropy of the student against the teacher's probability minus that probability's
    entropy; 0 where the logits agree, never below 0 (up to rounding, clamped)."""
    p = torch.sigmoid(teacher)
    cross = F.binary_cross_entropy_with_logits(student, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher, p, reduction="none")
    return (cross - entropy).clamp(min=0.0)


def _check_levels(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layout: YoloLayout
) -> None:
    if len(student) != len(teacher) or len(student) != len(layout.strides):
        raise ValueError(
            f"the student gives {len(student)} levels, the teacher {len(teacher)}, and the "
            f"layout has {len(layout.strides)}"
        )
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        if s.shape != t.shape:
            raise ValueError(
                f"level {i}: the student's map is {tuple(s.shape)}, the teacher's {tuple(t.shape)}"
            )


def objectness_kd(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layout: YoloLayout
) -> torch.Tensor:
    """``sum_slots KL(sigmoid(t_obj) || sigmoid(s_obj)) / N`` over every level's slots."""
    _check_levels(student, teacher, layout)
    n = max(int(student[0].shape[0]), 1)
    total = student[0].new_zeros((), dtype=torch.float32)
    for lvl, (s, t) in enumerate(zip(student, teacher, strict=True)):
        ps, pt = layout.slots(s, lvl), layout.slots(t.detach(), lvl)
        total = total + binary_kl_with_logits(ps[..., 4], pt[..., 4]).sum()
    return total / n


def class_kd(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    layout: YoloLayout,
    temperature: float,
) -> torch.Tensor:
    """``T**2 sum_slots sigmoid(t_obj) sum_c KL(sigmoid(t_c / T) || sigmoid(s_c / T)) / N``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_levels(student, teacher, layout)
    n = max(int(student[0].shape[0]), 1)
    total = student[0].new_zeros((), dtype=torch.float32)
    for lvl, (s, t) in enumerate(zip(student, teacher, strict=True)):
        ps, pt = layout.slots(s, lvl), layout.slots(t.detach(), lvl)
        weight = torch.sigmoid(pt[..., 4])  # (N, A, H, W): the teacher's "an object is here"
        kl = binary_kl_with_logits(ps[..., 5:] / temperature, pt[..., 5:] / temperature)
        total = total + (kl.sum(dim=-1) * weight).sum()
    return total * temperature**2 / n


def _box_errors(
    slots: torch.Tensor, txy: torch.Tensor, twh: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """The YOLOv3 box term per assigned slot (``slots`` ``(P, 5 + C)``)."""
    xy = F.binary_cross_entropy_with_logits(slots[:, 0:2], txy, reduction="none").sum(dim=1)
    wh = ((slots[:, 2:4] - twh) ** 2).sum(dim=1)
    return (xy + wh) * weight


def bounded_box_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    layout: YoloLayout,
    input_size: int,
    margin: float = 0.0,
) -> tuple[torch.Tensor, int, int]:
    """Chen et al.'s teacher-bounded regression loss on the slots ground truth is assigned to.

    ``targets`` holds ``(boxes (n, 4) xyxy input pixels, labels (n,))`` per image. Returns
    ``(sum over slots with e_s + margin > e_t of e_s, divided by N; slots counted; slots)``.
    """
    _check_levels(student, teacher, layout)
    n = max(int(student[0].shape[0]), 1)
    grids = [(int(o.shape[2]), int(o.shape[3])) for o in student]
    assigned = build_yolo_targets(targets, layout.anchors, layout.strides, grids, input_size)
    dev = student[0].device
    total = student[0].new_zeros((), dtype=torch.float32)
    active = slots = 0
    for lvl, (s, t, tgt) in enumerate(zip(student, teacher, assigned, strict=True)):
        if not len(tgt):
            continue
        index = (tgt.batch.to(dev), tgt.anchor.to(dev), tgt.gy.to(dev), tgt.gx.to(dev))
        txy, twh, weight = tgt.txy.to(dev), tgt.twh.to(dev), tgt.weight.to(dev)
        e_s = _box_errors(layout.slots(s, lvl)[index], txy, twh, weight)
        with torch.no_grad():
            e_t = _box_errors(layout.slots(t.detach(), lvl)[index], txy, twh, weight)
        counts = (e_s.detach() + margin) > e_t
        total = total + (e_s * counts).sum()
        active += int(counts.sum())
        slots += len(tgt)
    return total / n, active, slots


def hint_loss(
    student: torch.Tensor, teacher: torch.Tensor, adapter: nn.Module | None = None
) -> torch.Tensor:
    """Mean squared difference of two ``(N, C, H, W)`` feature maps, the student's first mapped
    to the teacher's channels by ``adapter`` (needed when the counts differ)."""
    mapped = adapter(student) if adapter is not None else student
    if mapped.shape != teacher.shape:
        raise ValueError(
            f"the student's feature map is {tuple(mapped.shape)} (after the adapter), the "
            f"teacher's {tuple(teacher.shape)}"
        )
    return F.mse_loss(mapped.float(), teacher.detach().float())
