"""Knowledge distillation: the current model (the student) learns from a frozen teacher.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"): match the teacher's
temperature-softened class distribution. Seed 003 (a master's thesis on compressing YOLOv3)
adds "a classification loss based on inter-class consistency", "a feature map loss based on
channel correlation" and "a spatial attention mechanism loss". Its text as stored here is the
abstract only, without formulas, so each loss follows the published method it names:

- inter-class consistency: the student's batch class-by-class correlation matrix of softened
  predictions matches the teacher's (the class-relation half of DIST, Huang et al. 2022,
  written as a matrix over class pairs);
- channel correlation: per-image channel-by-channel cosine-similarity matrices of chosen
  feature maps (inter-channel correlation, ICKD, Liu et al. 2021), the student's channels
  first mapped to the teacher's count by a learned 1x1 convolution as ICKD does;
- spatial attention: Zagoruyko & Komodakis 2017's normalised attention maps of the same
  feature maps, the student's resized to the teacher's resolution.

FitNets-style hints on the penultimate features (Romero et al. 2015) remain available too.
The formulas are in ``docs/methods.md``.

On a YOLO detector (``ctx.model.task == "detection"``) the stage trains on the detection data
set with the ground-truth YOLOv3 loss plus the detection-aware terms of
:mod:`compression.detection_distill` (objectness and class-logit KD, seed 003's
teacher-bounded box loss after Chen et al. 2017, feature hints on chosen levels' head inputs),
weighted by the ``det_*`` fields; ``docs/detection.md`` ("Distilling detectors") has the
definitions.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compression.detection_data import DetectionBundle
from compression.detection_distill import (
    YoloLayout,
    bounded_box_loss,
    class_kd,
    hint_loss,
    objectness_kd,
)
from compression.detection_metrics import yolo_spec
from compression.detection_train import DetectionTrainConfig, make_batch, warmup_cosine, yolo_loss
from compression.errors import ConfigError, StageScopeError
from compression.methods._common import (
    classifier_layer,
    detection_heads,
    finish,
    history_metrics,
    require_yolo_detector,
    torch_module,
)
from compression.model_facts import CONV_KINDS, ModelFacts
from compression.registry import param, register_method
from compression.stage import ModelState, StageContext, StageResult
from compression.training import LossFn, train


@dataclass(frozen=True)
class DistillationConfig:
    teacher: str | None = param(
        None, help="teacher model reference; empty: the model as it was before this stage"
    )
    temperature: float = param(
        4.0, help="softmax temperature of the soft targets", gt=0.0, le=100.0
    )
    alpha: float = param(
        0.9, help="weight of the soft-target loss; 1 - alpha weighs the label loss", ge=0.0, le=1.0
    )
    class_consistency_weight: float = param(
        0.0,
        help="weight of the inter-class consistency loss: the batch's class-by-class "
        "correlation matrix of softened predictions, student vs teacher (0: off)",
        ge=0.0,
        le=1000.0,
    )
    channel_correlation_weight: float = param(
        0.0,
        help="weight of the channel-correlation loss on the feature layers: channel-by-channel "
        "similarity matrices, student (through a learned 1x1 adapter) vs teacher (0: off)",
        ge=0.0,
        le=1000.0,
    )
    attention_weight: float = param(
        0.0,
        help="weight of the spatial-attention loss on the feature layers (0: off; 1000 is usual)",
        ge=0.0,
        le=1e6,
    )
    student_layers: str = param(
        "",
        help="comma-separated module paths of the student whose outputs the channel-correlation "
        "and attention losses compare, e.g. 'layer2,layer3'; empty: the last convolution",
    )
    teacher_layers: str = param(
        "",
        help="the teacher's module paths, paired in order with student_layers; empty: the same "
        "names as student_layers (or the last convolution when both are empty)",
    )
    feature_weight: float = param(
        0.0, help="weight of the hint loss on the penultimate features (0: off)", ge=0.0, le=1000.0
    )
    # Why clip, and why 5: with T^2 scaling the soft-target gradient on a logit is
    # alpha * T * (p_s - p_t); a confident teacher (logit gaps >> T) makes p_t nearly one-hot
    # even at T = 4, so early on it is about alpha * T = 3.6x the label loss's gradient, i.e.
    # a 3.6x learning rate. A BatchNorm-free LeNet-5 at lr 0.02 diverged under it (dead ReLUs,
    # chance accuracy). A norm of 2 stopped that but also throttled every later step (the KD
    # student lost to the student trained alone); 5 only trims the first steps' spikes.
    max_grad_norm: float | None = param(
        5.0,
        help="clip the gradient norm (confident teachers' soft targets can blow up a student)",
        gt=0.0,
    )
    # Detectors (YOLO family): these replace alpha and the classifier-only terms above; the
    # temperature softens the class logits, and channel_correlation_weight / attention_weight
    # compare the feature maps of det_levels.
    det_label_weight: float = param(
        1.0,
        help="detectors: weight of the ground-truth YOLOv3 loss (box, objectness, classes)",
        ge=0.0,
        le=1000.0,
    )
    det_objectness_weight: float = param(
        1.0,
        help="detectors: weight of the objectness KD, the student's objectness against the "
        "teacher's sigmoid(obj) at every slot (0: off)",
        ge=0.0,
        le=1000.0,
    )
    det_class_weight: float = param(
        1.0,
        help="detectors: weight of the class-logit KD (temperature-softened, each slot weighted "
        "by the teacher's objectness; 0: off)",
        ge=0.0,
        le=1000.0,
    )
    det_box_bound_weight: float = param(
        0.5,
        help="detectors: weight of the teacher-bounded box regression loss (Chen et al. 2017): "
        "the student's box error counts where it is not below the teacher's by det_box_margin "
        "(0: off)",
        ge=0.0,
        le=1000.0,
    )
    det_box_margin: float = param(
        0.0,
        help="detectors: margin m of the bounded box loss, which counts where student error + m "
        "> teacher error (m > 0: push past the teacher; m < 0: tolerate a worse student)",
        ge=-100.0,
        le=100.0,
    )
    det_hint_weight: float = param(
        0.0,
        help="detectors: weight of the feature-map hint (mean squared difference) on the maps "
        "the heads of det_levels read, through a 1x1 adapter where widths differ (0: off)",
        ge=0.0,
        le=1000.0,
    )
    det_levels: str = param(
        "",
        help="detectors: comma-separated level indices (0 = the coarsest) whose head inputs the "
        "hint, channel-correlation and attention losses compare; empty: every level",
    )
    epochs: int = param(10, help="training epochs", ge=1, le=1000)
    lr: float = param(0.01, help="peak learning rate (cosine decay to zero)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)

    @property
    def uses_feature_maps(self) -> bool:
        """Whether a loss taps the named (or default) feature layers."""
        return self.channel_correlation_weight > 0 or self.attention_weight > 0

    def student_layer_names(self) -> list[str]:
        return _split_names(self.student_layers)

    def teacher_layer_names(self) -> list[str]:
        return _split_names(self.teacher_layers) or self.student_layer_names()

    def level_indices(self) -> list[int] | None:
        """The detector levels named in ``det_levels``, or None for every level."""
        return _level_indices(self.det_levels)

    @property
    def uses_level_maps(self) -> bool:
        """Whether a detector loss taps the feature maps of ``det_levels``."""
        return self.det_hint_weight > 0 or self.uses_feature_maps

    def validate(self) -> None:
        """Cross-field checks: layer lists well formed and paired one to one, levels integers."""
        _level_indices(self.det_levels)
        for field_name in ("student_layers", "teacher_layers"):
            raw = getattr(self, field_name)
            if raw.strip() and any(not part.strip() for part in raw.split(",")):
                raise ConfigError(
                    f"config.{field_name}",
                    f"an empty name in {raw!r}; write module paths separated by commas",
                )
        s, t = _split_names(self.student_layers), _split_names(self.teacher_layers)
        if t and not s:
            raise ConfigError(
                "config.student_layers",
                "teacher_layers is set, so name the student's layers to pair them with",
            )
        if t and len(s) != len(t):
            raise ConfigError(
                "config.teacher_layers",
                f"names {len(t)} layer(s) but student_layers names {len(s)}; they are paired "
                "in order, so give as many of each",
            )


def _split_names(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _level_indices(raw: str) -> list[int] | None:
    if not raw.strip():
        return None
    out: list[int] = []
    for part in raw.split(","):
        text = part.strip()
        if not text.isdigit():
            raise ConfigError(
                "config.det_levels",
                f"{raw!r}: write level indices (0 = the coarsest) separated by commas, "
                f"e.g. '0,1'; {text!r} is not one",
            )
        if int(text) in out:
            raise ConfigError("config.det_levels", f"{raw!r} names level {text} twice")
        out.append(int(text))
    return out


# --- the losses ------------------------------------------------------------------------------


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's KD loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    The ``T^2`` keeps its gradient on the same scale as the label loss whatever ``T`` is.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def teacher_kd_loss(teacher: nn.Module, weight: float, temperature: float) -> LossFn:
    """A training loss: ``weight`` x :func:`soft_target_loss` towards ``teacher``'s logits +
    ``1 - weight`` x cross-entropy on the labels (the pruning methods' self-distillation, with
    the unpruned model as teacher)."""

    def loss(
        module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        logits = module(inputs)
        value = weight * soft_target_loss(logits, teacher_logits, temperature)
        if weight < 1.0:
            value = value + (1.0 - weight) * F.cross_entropy(logits.float(), targets)
        return value, logits

    return loss


def class_correlation(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The ``C x C`` Pearson correlation between classes of a ``B x C`` batch of predictions.

    Entry ``(i, j)`` says how the batch's confidence in class ``i`` moves with its confidence in
    class ``j`` (e.g. 4s and 9s rising together): the class-similarity structure a teacher has
    learned, which per-image soft targets show the student only one row at a time.
    """
    centred = probs - probs.mean(dim=0, keepdim=True)
    normed = centred / (centred.norm(dim=0, keepdim=True) + eps)
    return normed.t() @ normed


def class_consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Inter-class consistency: ``mean_ij (R_s - R_t)_ij^2`` over the class-correlation
    matrices :func:`class_correlation` of the batch's ``softmax(logits / T)``."""
    p_s = F.softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return (class_correlation(p_s) - class_correlation(p_t)).pow(2).mean()


def channel_correlation(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per image, the ``C x C`` cosine similarities between channel maps of ``B x C x H x W``.

    The spatial positions are summed out, so two maps of different resolution give matrices of
    the same size; only the channel counts have to agree.
    """
    flat = features.float().flatten(2)
    flat = flat / (flat.norm(dim=2, keepdim=True) + eps)
    return flat @ flat.transpose(1, 2)


def channel_correlation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_b mean_ij (G_s - G_t)_bij^2`` over :func:`channel_correlation` matrices.

    ``student`` must already have the teacher's channel count (the adapter's job).
    """
    return (channel_correlation(student) - channel_correlation(teacher)).pow(2).mean()


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squares, resized to ``size``
    (area averaging when shrinking, bilinear when growing), flattened and L2-normalised."""
    a = features.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        shrink = a.shape[-2] >= size[0] and a.shape[-1] >= size[1]
        if shrink:
            a = F.adaptive_avg_pool2d(a, size)
        else:
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_b mean_p (Q_s - Q_t)_bp^2`` over attention maps at the teacher's resolution."""
    size = (int(teacher.shape[-2]), int(teacher.shape[-1]))
    return (attention_map(student, size) - attention_map(teacher)).pow(2).mean()


# --- taps ------------------------------------------------------------------------------------


class _Taps:
    """Forward hooks that keep the classifier's input and the named feature maps' outputs."""

    def __init__(
        self, classifier: nn.Module | None, layers: Sequence[tuple[str, nn.Module]]
    ) -> None:
        self.penultimate: torch.Tensor | None = None
        self.maps: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        if classifier is not None:
            self._handles.append(classifier.register_forward_pre_hook(self._keep_input))
        for name, m in layers:
            self._handles.append(m.register_forward_hook(self._keeper(name)))

    def _keep_input(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        self.penultimate = args[0].flatten(1)

    def _keeper(self, name: str) -> Any:
        def keep(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            self.maps[name] = out

        return keep

    def clear(self) -> None:
        self.penultimate = None
        self.maps = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def _taps(
    classifier: nn.Module | None, layers: Sequence[tuple[str, nn.Module]] = ()
) -> Iterator[_Taps]:
    taps = _Taps(classifier, layers)
    try:
        yield taps
    finally:
        taps.remove()


class DistillationLoss:
    """The training loss: label CE, soft targets, and the optional relation and map terms.

    ``pairs`` lists (student layer, teacher layer) names; ``adapters[i]`` maps the student's
    i-th map to the teacher's channel count for the channel-correlation loss.
    """

    def __init__(
        self,
        teacher: nn.Module,
        cfg: DistillationConfig,
        student_taps: _Taps,
        teacher_taps: _Taps,
        adapter: nn.Module | None,
        pairs: list[tuple[str, str]] | None = None,
        adapters: nn.ModuleList | None = None,
    ) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.s_taps = student_taps
        self.t_taps = teacher_taps
        self.adapter = adapter
        self.pairs = pairs or []
        self.adapters = adapters

    def __call__(
        self, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        self.s_taps.clear()
        self.t_taps.clear()
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        logits = module(inputs)
        loss = cfg.alpha * soft_target_loss(logits, teacher_logits, cfg.temperature)
        if cfg.alpha < 1.0:
            loss = loss + (1.0 - cfg.alpha) * F.cross_entropy(logits, targets)
        if cfg.class_consistency_weight > 0:
            icc = class_consistency_loss(logits, teacher_logits, cfg.temperature)
            loss = loss + cfg.class_consistency_weight * icc
        if cfg.feature_weight > 0:
            f_s, f_t = self.s_taps.penultimate, self.t_taps.penultimate
            if f_s is None or f_t is None:
                raise StageScopeError("distillation: no classifier layer to take features from")
            if self.adapter is not None:
                f_s = self.adapter(f_s)
            loss = loss + cfg.feature_weight * F.mse_loss(f_s.float(), f_t.float())
        if cfg.uses_feature_maps:
            cc = at = torch.zeros((), device=logits.device)
            for i, (s_name, t_name) in enumerate(self.pairs):
                f_s, f_t = self.s_taps.maps[s_name], self.t_taps.maps[t_name]
                if cfg.channel_correlation_weight > 0:
                    mapped = self.adapters[i](f_s) if self.adapters is not None else f_s
                    cc = cc + channel_correlation_loss(mapped, f_t)
                if cfg.attention_weight > 0:
                    at = at + attention_loss(f_s, f_t)
            n = max(1, len(self.pairs))
            loss = loss + cfg.channel_correlation_weight * cc / n + cfg.attention_weight * at / n
        return loss, logits


# --- setup -----------------------------------------------------------------------------------


def _penultimate_width(
    module: nn.Module, classifier: nn.Module | None, shape: tuple[int, ...]
) -> int:
    with _taps(classifier) as taps, torch.no_grad():
        device = next(iter(module.parameters())).device
        was_training = module.training
        module.eval()
        module(torch.zeros(1, *shape, device=device))
        module.train(was_training)
        if taps.penultimate is None:
            raise StageScopeError("distillation: no classifier layer to take features from")
        return int(taps.penultimate.shape[1])


def _last_conv(module: nn.Module, classifier: nn.Module | None) -> str | None:
    """The name of the last convolution in module order that is not the classifier."""
    found = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and m is not classifier:
            found = name
    return found


def layer_candidates(names: list[str]) -> list[str]:
    """What a feature-layer field accepts, from a model's weighted-layer names: every such
    layer and every block that contains one (``layer3``, ``layer3.0``), in module order."""
    out: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]), None)
    return list(out)


def _candidates_text(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _resolve_layers(
    module: nn.Module, names: list[str], field: str, who: str
) -> list[tuple[str, nn.Module]]:
    """Look the named modules up, refusing an unknown name with the candidates listed."""
    modules = dict(module.named_modules())
    out = []
    for name in names:
        if name not in modules or name == "":
            weighted = [
                n
                for n, m in module.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))
            ]
            raise ConfigError(
                f"config.{field}",
                f"the {who} has no layer {name!r}; candidates: "
                f"{_candidates_text(layer_candidates(weighted))}",
            )
        out.append((name, modules[name]))
    return out


def _feature_shapes(
    module: nn.Module, layers: list[tuple[str, nn.Module]], shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """One dry forward pass (eval mode, no gradients) that reads each layer's output shape."""
    device = next(iter(module.parameters())).device
    was_training = module.training
    module.eval()
    try:
        with _taps(None, layers) as taps, torch.no_grad():
            module(torch.zeros(1, *shape, device=device))
            return {
                name: tuple(out.shape) if isinstance(out, torch.Tensor) else ()
                for name, out in taps.maps.items()
            }
    finally:
        module.train(was_training)


def _feature_pairs(
    student: nn.Module,
    teacher: nn.Module,
    s_cls: nn.Module | None,
    t_cls: nn.Module | None,
    cfg: DistillationConfig,
    shape: tuple[int, ...],
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]], dict[str, Any]]:
    """The (student, teacher) feature layers, checked to exist and to output 4-D maps."""
    s_names, t_names = cfg.student_layer_names(), cfg.teacher_layer_names()
    if not s_names:
        s_last, t_last = _last_conv(student, s_cls), _last_conv(teacher, t_cls)
        if s_last is None or t_last is None:
            who = "student" if s_last is None else "teacher"
            raise StageScopeError(
                f"distillation: the {who} has no convolution to take feature maps from "
                "(set channel_correlation_weight and attention_weight to 0)"
            )
        s_names, t_names = [s_last], [t_last]
    s_layers = _resolve_layers(student, s_names, "student_layers", "student")
    t_field = "teacher_layers" if cfg.teacher_layers.strip() else "student_layers"
    t_layers = _resolve_layers(teacher, t_names, t_field, "teacher")
    s_shapes = _feature_shapes(student, s_layers, shape)
    t_shapes = _feature_shapes(teacher, t_layers, shape)
    for field, who, layers, shapes in (
        ("student_layers", "student", s_layers, s_shapes),
        (t_field, "teacher", t_layers, t_shapes),
    ):
        for name, _ in layers:
            got = shapes.get(name)
            if got is None or len(got) != 4:
                raise ConfigError(
                    f"config.{field}",
                    f"the {who}'s layer {name!r} outputs {'shape ' + str(got) if got else 'nothing'}"
                    " in a forward pass, not a B x C x H x W feature map; name a convolution "
                    "or a block of them",
                )
    info = {
        "pairs": [
            {
                "student": s,
                "teacher": t,
                "student_shape": list(s_shapes[s][1:]),
                "teacher_shape": list(t_shapes[t][1:]),
            }
            for (s, _), (t, _) in zip(s_layers, t_layers, strict=True)
        ]
    }
    return s_layers, t_layers, info


def _adapter(c_s: int, c_t: int) -> nn.Conv2d:
    """A 1x1 convolution from the student's channels to the teacher's (ICKD's connector).

    With equal counts it starts as the identity, so a student that already matches its teacher
    starts at zero loss; otherwise Kaiming-initialised. It is trained with the student and
    thrown away afterwards.
    """
    conv = nn.Conv2d(c_s, c_t, 1, bias=False)
    if c_s == c_t:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(c_t).view(c_t, c_t, 1, 1))
    return conv


@register_method(
    "distillation",
    config=DistillationConfig,
    summary="Train the current model against a frozen teacher's soft targets (Hinton KD), "
    "optionally with seed 003's inter-class consistency, channel-correlation and "
    "spatial-attention losses and FitNets hints; on a YOLO detector, objectness and class-logit "
    "KD, the teacher-bounded box loss and feature-map hints on chosen levels.",
    inputs=("torch",),
    tasks=("classification", "detection"),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: DistillationConfig) -> StageResult:
    """Distil a teacher into ``ctx.model``'s module, which is trained in place."""
    student = torch_module(ctx, "distillation")
    teacher_state: ModelState | None = None
    if cfg.teacher:
        if ctx.load_model is None:
            raise StageScopeError(
                f"distillation: cannot resolve teacher {cfg.teacher!r} here (no model loader)"
            )
        teacher_state = ctx.load_model(cfg.teacher)
        if teacher_state.module is None:
            raise StageScopeError("distillation: the teacher must be a torch model, not ONNX")
        if teacher_state.task != ctx.model.task:
            raise StageScopeError(
                f"distillation: the teacher {_state_label(teacher_state, cfg.teacher)} is a "
                f"{teacher_state.task} model but the student {_state_label(ctx.model)} is a "
                f"{ctx.model.task} model; both must do the same task"
            )
        if teacher_state.num_classes != ctx.model.num_classes:
            raise StageScopeError(
                f"distillation: the teacher {_state_label(teacher_state, cfg.teacher)} has "
                f"{teacher_state.num_classes} classes, the student {_state_label(ctx.model)} "
                f"{ctx.model.num_classes}"
            )
        teacher = copy.deepcopy(teacher_state.module)
    else:
        # Self-distillation from the stage's input (e.g. a pruned model re-learning itself)
        # is only useful after a change; most recipes name the original model as teacher.
        teacher = copy.deepcopy(student)
    teacher.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(ctx.device)
    if ctx.model.task == "detection":
        teacher_label = _state_label(teacher_state or ctx.model, cfg.teacher or "input")
        return _run_detector(ctx, cfg, student, teacher, teacher_label)

    n = ctx.model.num_classes
    shape = ctx.model.input_shape
    s_cls, t_cls = classifier_layer(student, n), classifier_layer(teacher, n)
    # Named layers are checked on both networks before any training step.
    s_layers: list[tuple[str, nn.Module]] = []
    t_layers: list[tuple[str, nn.Module]] = []
    metrics_extra: dict[str, Any] = {}
    if cfg.uses_feature_maps or cfg.student_layers.strip():
        s_layers, t_layers, metrics_extra = _feature_pairs(
            student, teacher, s_cls, t_cls, cfg, shape
        )
    if cfg.uses_feature_maps:
        shown = "; ".join(
            f"{p['student']} ({'x'.join(map(str, p['student_shape']))}) -> "
            f"{p['teacher']} ({'x'.join(map(str, p['teacher_shape']))})"
            for p in metrics_extra["pairs"]
        )
        ctx.report(0.0, f"distillation: feature maps compared, student -> teacher: {shown}", {})
    trained_extra: list[nn.Module] = []
    adapter: nn.Module | None = None
    if cfg.feature_weight > 0:
        d_s = _penultimate_width(student, s_cls, shape)
        d_t = _penultimate_width(teacher, t_cls, shape)
        if d_s != d_t:
            # A 1x1 projection of the student's features into the teacher's width (FitNets'
            # regressor); it is trained with the student and thrown away afterwards.
            adapter = nn.Linear(d_s, d_t, bias=False).to(ctx.device)
            trained_extra.append(adapter)
    adapters: nn.ModuleList | None = None
    if cfg.channel_correlation_weight > 0:
        adapters = nn.ModuleList(
            _adapter(p["student_shape"][0], p["teacher_shape"][0]) for p in metrics_extra["pairs"]
        ).to(ctx.device)
        trained_extra.append(adapters)
    extra_params = [p for m in trained_extra for p in m.parameters()]

    clip = None
    if cfg.max_grad_norm is not None:
        max_norm = cfg.max_grad_norm
        params = list(student.parameters()) + extra_params

        def clip(_: nn.Module) -> None:
            # At high T the KD gradient approaches logit regression, (z_s - z_t) / N: a
            # teacher trained to near-zero loss has large logits, and without BatchNorm a
            # student's first steps can diverge. Runs after AMP's unscale, so norms are true.
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    pairs = [(s, t) for (s, _), (t, _) in zip(s_layers, t_layers, strict=True)]
    tap_s = s_layers if cfg.uses_feature_maps else []
    tap_t = t_layers if cfg.uses_feature_maps else []
    with _taps(s_cls, tap_s) as s_taps, _taps(t_cls, tap_t) as t_taps:
        loss = DistillationLoss(teacher, cfg, s_taps, t_taps, adapter, pairs, adapters)
        history = train(
            student,
            ctx.data,
            ctx,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            loss_fn=loss,
            after_backward=clip,
            extra_params=extra_params,
            label="distillation",
        )
    ctx.model.module = finish(student)
    return StageResult(model=ctx.model, metrics=history_metrics(history), history=history)


def _state_label(state: ModelState, ref: str | None = None) -> str:
    """How messages name a model: its reference (for a teacher) and architecture."""
    arch = state.arch.name if state.arch is not None else None
    if arch is None and state.module is not None:
        arch = getattr(state.module, "name", None) or type(state.module).__name__
    arch = arch or "ONNX model"
    return f"{ref!r} ({arch})" if ref else f"({arch})"


# --- detectors ------------------------------------------------------------------------------


class _HeadInputs:
    """Forward pre-hooks on a YOLO's head convs keeping the feature map each chosen level's
    head reads (the neck's output at that level)."""

    def __init__(self, heads: Sequence[nn.Module], levels: Sequence[int]) -> None:
        self.maps: dict[int, torch.Tensor] = {}
        self._handles = [heads[i].register_forward_pre_hook(self._keeper(i)) for i in levels]

    def _keeper(self, level: int) -> Any:
        def keep(_m: nn.Module, args: tuple[Any, ...]) -> None:
            self.maps[level] = args[0]

        return keep

    def clear(self) -> None:
        self.maps = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def _head_inputs(heads: Sequence[nn.Module], levels: Sequence[int]) -> Iterator[_HeadInputs]:
    taps = _HeadInputs(heads, levels)
    try:
        yield taps
    finally:
        taps.remove()


def detector_layout(student: nn.Module, teacher: nn.Module, teacher_label: str) -> YoloLayout:
    """The shared YOLO layout of a student and its teacher, or a refusal naming both.

    Both must be YOLO-contract detectors (``head_convs()``, ``anchors``, ``strides``,
    ``num_classes``) with the same classes, levels (strides) and anchors: the losses compare
    their raw maps slot by slot.
    """
    student_label = repr(getattr(student, "name", None) or type(student).__name__)
    specs = {}
    for who, label, m in (("teacher", teacher_label, teacher), ("student", student_label, student)):
        if detection_heads(m) is None:
            raise StageScopeError(
                f"distillation: the {who} {label} is a detection model without head_convs(); "
                "detection-aware distillation supports the YOLO family"
            )
        try:
            specs[who] = yolo_spec(m)
        except ValueError as exc:
            raise StageScopeError(f"distillation: the {who} {label}: {exc}") from None
    t, s = specs["teacher"], specs["student"]
    differences = []
    if t.num_classes != s.num_classes:
        differences.append(f"classes: teacher {t.num_classes}, student {s.num_classes}")
    if t.strides != s.strides:
        differences.append(
            f"levels (strides): teacher {list(t.strides)}, student {list(s.strides)}"
        )
    elif not all(
        len(ta) == len(sa)
        and all(
            math.isclose(x, y, rel_tol=1e-6)
            for tp, sp in zip(ta, sa, strict=True)
            for x, y in zip(tp, sp, strict=True)
        )
        for ta, sa in zip(t.anchors, s.anchors, strict=True)
    ):
        differences.append(
            f"anchors: teacher {_anchors_text(t.anchors)}, student {_anchors_text(s.anchors)}"
        )
    if differences:
        raise StageScopeError(
            f"distillation: the teacher {teacher_label} and the student {student_label} are "
            f"different detectors ({'; '.join(differences)}); a detector is distilled only "
            "from a teacher with the same classes, levels and anchors (the same architecture "
            "and input size, e.g. the unpruned baseline)"
        )
    return YoloLayout(anchors=s.anchors, strides=s.strides, num_classes=s.num_classes)


def _anchors_text(anchors: tuple[tuple[tuple[float, float], ...], ...]) -> str:
    return " | ".join(", ".join(f"{w:g}x{h:g}" for w, h in level) for level in anchors)


def _level_shapes(
    module: nn.Module, levels: Sequence[int], size: int
) -> dict[int, tuple[int, int, int]]:
    """One dry forward pass (eval, no gradients): each chosen level's head input C, H, W."""
    heads = detection_heads(module) or []
    device = next(iter(module.parameters())).device
    channels = int(getattr(module, "in_channels", 3))
    was_training = module.training
    module.eval()
    try:
        with _head_inputs(heads, levels) as taps, torch.no_grad():
            module(torch.zeros(1, channels, size, size, device=device))
            return {
                i: (int(m.shape[1]), int(m.shape[2]), int(m.shape[3])) for i, m in taps.maps.items()
            }
    finally:
        module.train(was_training)


class DetectionDistillationLoss:
    """One batch's detection distillation loss: the ground-truth YOLOv3 loss plus the weighted
    objectness KD, class-logit KD, teacher-bounded box loss and, on ``levels``, the feature-map
    hint, channel-correlation and attention losses (:mod:`compression.detection_distill`).

    ``adapters`` maps a level (as a string) to the 1x1 convolution from the student's channels
    to the teacher's, for the levels where they differ. Returns ``(loss, parts)`` with each
    term's unweighted value (``box_bound_active``: the share of assigned slots it counted).
    """

    def __init__(
        self,
        teacher: nn.Module,
        cfg: DistillationConfig,
        layout: YoloLayout,
        input_size: int,
        student_taps: _HeadInputs,
        teacher_taps: _HeadInputs,
        levels: Sequence[int],
        adapters: nn.ModuleDict,
        ignore_threshold: float = 0.5,
    ) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.layout = layout
        self.input_size = input_size
        self.s_taps = student_taps
        self.t_taps = teacher_taps
        self.levels = list(levels)
        self.adapters = adapters
        self.ignore_threshold = ignore_threshold

    def __call__(
        self,
        student: nn.Module,
        inputs: torch.Tensor,
        targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, layout = self.cfg, self.layout
        self.s_taps.clear()
        self.t_taps.clear()
        with torch.no_grad():
            t_out = [o.detach() for o in self.teacher(inputs)]
        s_out = list(student(inputs))
        total = s_out[0].new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        if cfg.det_label_weight > 0:
            gt, gt_parts = yolo_loss(
                s_out,
                targets,
                layout.anchors,
                layout.strides,
                layout.num_classes,
                self.input_size,
                ignore_threshold=self.ignore_threshold,
            )
            total = total + cfg.det_label_weight * gt
            parts["gt"] = float(gt.detach())
            parts.update({f"gt_{k}": v for k, v in gt_parts.items()})
        if cfg.det_objectness_weight > 0:
            obj = objectness_kd(s_out, t_out, layout)
            total = total + cfg.det_objectness_weight * obj
            parts["obj_kd"] = float(obj.detach())
        if cfg.det_class_weight > 0:
            cls = class_kd(s_out, t_out, layout, cfg.temperature)
            total = total + cfg.det_class_weight * cls
            parts["cls_kd"] = float(cls.detach())
        if cfg.det_box_bound_weight > 0:
            box, active, slots = bounded_box_loss(
                s_out, t_out, targets, layout, self.input_size, cfg.det_box_margin
            )
            total = total + cfg.det_box_bound_weight * box
            parts["box_bound"] = float(box.detach())
            parts["box_bound_active"] = active / slots if slots else 0.0
        if self.levels and cfg.uses_level_maps:
            hint = cc = at = total.new_zeros(())
            adapters = dict(self.adapters.items())  # nn.ModuleDict has no get()
            for level in self.levels:
                f_s, f_t = self.s_taps.maps[level], self.t_taps.maps[level].detach()
                adapter = adapters.get(str(level))
                if cfg.det_hint_weight > 0:
                    hint = hint + hint_loss(f_s, f_t, adapter)
                if cfg.channel_correlation_weight > 0:
                    mapped = adapter(f_s) if adapter is not None else f_s
                    cc = cc + channel_correlation_loss(mapped, f_t)
                if cfg.attention_weight > 0:
                    at = at + attention_loss(f_s, f_t)
            n = len(self.levels)
            for name, weight, value in (
                ("hint", cfg.det_hint_weight, hint),
                ("channel_correlation", cfg.channel_correlation_weight, cc),
                ("attention", cfg.attention_weight, at),
            ):
                if weight > 0:
                    total = total + weight * value / n
                    parts[name] = float(value.detach()) / n
        return total, parts


def chosen_levels(cfg: DistillationConfig, strides: Sequence[int]) -> list[int]:
    """The levels ``det_levels`` names (all when empty), refusing one the detector lacks."""
    count = len(strides)
    levels = cfg.level_indices()
    if levels is None:
        return list(range(count))
    bad = [i for i in levels if i >= count]
    if bad:
        known = ", ".join(f"{i} (stride {s})" for i, s in enumerate(strides))
        raise ConfigError(
            "config.det_levels",
            f"names level {bad[0]}, but the detector has {count} levels: {known}",
        )
    return levels


def _detector_optimizer(
    params: Sequence[nn.Parameter], cfg: DistillationConfig
) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (1-D), as detection training does.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _run_detector(
    ctx: StageContext,
    cfg: DistillationConfig,
    student: nn.Module,
    teacher: nn.Module,
    teacher_label: str,
) -> StageResult:
    """Distil a YOLO teacher into the YOLO student on the detection data set's train split.

    Batches are augmented as detection training does (flip, scale jitter, letterbox:
    :func:`compression.detection_train.make_batch`), and teacher and student see the same
    images; the learning rate warms up over the first epoch, then follows a cosine to zero.
    """
    why = _detector_config_refusal(cfg, "the student")
    if why is not None:
        raise ConfigError(f"config.{why[0]}", why[1])
    data = ctx.data
    if not isinstance(data, DetectionBundle):
        raise StageScopeError(
            "distillation: the student is a detection model, so it is distilled on a detection "
            f"data set, not a {type(data).__name__}"
        )
    if data.num_classes != ctx.model.num_classes:
        raise StageScopeError(
            f"distillation: the detector has {ctx.model.num_classes} classes but the data set "
            f"{data.name!r} has {data.num_classes}"
        )
    if not data.train:
        raise StageScopeError(f"distillation: the data set {data.name!r} has no training images")
    layout = detector_layout(student, teacher, teacher_label)
    size = int(ctx.model.input_shape[-1])
    levels = chosen_levels(cfg, layout.strides) if cfg.uses_level_maps else []
    adapters = nn.ModuleDict()
    if levels:
        s_shapes = _level_shapes(student, levels, size)
        t_shapes = _level_shapes(teacher, levels, size)
        for level in levels:
            c_s, c_t = s_shapes[level][0], t_shapes[level][0]
            if s_shapes[level][1:] != t_shapes[level][1:]:
                raise StageScopeError(
                    f"distillation: level {level}'s head input is {s_shapes[level][1:]} on the "
                    f"student but {t_shapes[level][1:]} on the teacher {teacher_label}"
                )
            if c_s != c_t:
                # FitNets' regressor: trained with the student, thrown away afterwards.
                adapters[str(level)] = _adapter(c_s, c_t)
        adapters.to(ctx.device)
        shown = "; ".join(
            f"level {i} (stride {layout.strides[i]}): {s_shapes[i][0]} -> {t_shapes[i][0]} "
            f"channels{' through a 1x1 adapter' if str(i) in adapters else ''}"
            for i in levels
        )
        ctx.report(0.0, f"distillation: feature maps compared, student -> teacher: {shown}", {})
    base = DetectionTrainConfig()  # detection training's augmentations and ignore threshold
    params = [p for p in student.parameters() if p.requires_grad] + list(adapters.parameters())
    opt = _detector_optimizer(params, cfg)
    n = len(data.train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(base.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_cosine(k, total, warmup))
    rng = np.random.default_rng(ctx.seed)
    order = torch.Generator().manual_seed(ctx.seed)
    history: list[dict[str, float]] = []
    heads_s, heads_t = detection_heads(student) or [], detection_heads(teacher) or []
    with _head_inputs(heads_s, levels) as s_taps, _head_inputs(heads_t, levels) as t_taps:
        loss_fn = DetectionDistillationLoss(
            teacher,
            cfg,
            layout,
            size,
            s_taps,
            t_taps,
            levels,
            adapters,
            ignore_threshold=base.ignore_threshold,
        )
        for epoch in range(cfg.epochs):
            student.train()
            adapters.train()
            teacher.eval()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=order).tolist()
            loss_sum, seen = 0.0, 0
            part_sums: dict[str, float] = {}
            lr_used = float(opt.param_groups[0]["lr"])
            for step in range(steps_per_epoch):
                ctx.check_cancel()
                picked = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                inputs, targets = make_batch(
                    [data.train[i] for i in picked],
                    size,
                    rng,
                    flip=base.flip,
                    scale_range=base.scale_range,
                    device=ctx.device,
                )
                lr_used = float(opt.param_groups[0]["lr"])
                loss, parts = loss_fn(student, inputs, targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"distillation: the loss became {float(loss)} at epoch {epoch + 1}, "
                        f"step {step + 1}; lower the learning rate (now {lr_used:.3g})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(picked)
                seen += len(picked)
                for k, v in parts.items():
                    part_sums[k] = part_sums.get(k, 0.0) + v * len(picked)
            row = {"epoch": float(epoch + 1), "loss": loss_sum / max(seen, 1), "lr": lr_used}
            row.update({k: v / max(seen, 1) for k, v in part_sums.items()})
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            ctx.report(
                (epoch + 1) / cfg.epochs,
                f"distillation: epoch {epoch + 1}/{cfg.epochs}, loss {row['loss']:.4f}",
                dict(row),
            )
    ctx.model.module = finish(student)
    last = history[-1] if history else {}
    metrics = {f"distill_{k}": v for k, v in last.items() if k not in ("epoch", "lr", "seconds")}
    return StageResult(model=ctx.model, metrics=metrics, history=history)


def _detector_config_refusal(cfg: DistillationConfig, label: str) -> tuple[str, str] | None:
    """(field, why) when ``cfg`` asks a detector for a classifier-only loss, or None."""
    if cfg.class_consistency_weight > 0:
        return (
            "class_consistency_weight",
            f"the inter-class consistency loss compares a classifier's per-image class "
            f"predictions, but {label} is a detection model; set it to 0 (det_class_weight "
            "distils a detector's class logits)",
        )
    if cfg.feature_weight > 0:
        return (
            "feature_weight",
            f"the hint loss on the penultimate features taps a classifier's input, but {label} "
            "is a detection model; set it to 0 and use det_hint_weight with det_levels",
        )
    for name in ("student_layers", "teacher_layers"):
        if getattr(cfg, name).strip():
            return (
                name,
                f"{label} is a detection model: its feature maps are chosen by det_levels "
                f"(the inputs of those levels' heads), not by {name}; leave it empty",
            )
    return None


def check_model(facts: ModelFacts, cfg: DistillationConfig) -> None:
    """Refuse losses on a student without the layers they tap, before anything runs.

    The hint loss taps the classifier's input (a linear or conv layer with one output per
    class); the channel-correlation and attention losses tap convolution feature maps, the
    last convolution or the ``student_layers`` named. A named layer must be a weighted layer
    of the student or a block containing one. Unknown layer tables pass (the run checks the
    live modules, and the teacher's names, before its first step).

    On a detector: only the YOLO family (the losses read its raw per-level maps), and none of
    the classifier-only terms (inter-class consistency, the penultimate hint, named layers).
    """
    if facts.task == "detection":
        require_yolo_detector(
            facts, "detection-aware distillation reads the raw per-level maps of YOLO heads"
        )
        why = _detector_config_refusal(cfg, facts.label)
        if why is not None:
            raise ConfigError(f"config.{why[0]}", why[1])
        return
    if cfg.feature_weight > 0 and facts.has_classifier() is False:
        raise ConfigError(
            "config.feature_weight",
            f"the hint loss taps the input of the classifier layer, but {facts.label} has no "
            f"linear or conv layer with {facts.num_classes} outputs; set feature_weight to 0",
        )
    if cfg.uses_feature_maps and facts.has_conv() is False:
        layers = ", ".join(facts.layer_names()) or "none"
        field = "attention_weight" if cfg.attention_weight > 0 else "channel_correlation_weight"
        raise ConfigError(
            f"config.{field}",
            f"the attention and channel-correlation losses tap convolution feature maps, but "
            f"{facts.label} has no convolution layers (its layers: {layers}); set "
            f"attention_weight and channel_correlation_weight to 0",
        )
    names = cfg.student_layer_names()
    if names and facts.layers:
        candidates = layer_candidates(facts.layer_names())
        known = set(candidates)
        for name in names:
            if name not in known:
                convs = layer_candidates(facts.layer_names(*CONV_KINDS))
                raise ConfigError(
                    "config.student_layers",
                    f"{facts.label} has no layer {name!r}; candidates (convolutions and the "
                    f"blocks holding them): {_candidates_text(convs)}",
                )
