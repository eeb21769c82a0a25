"""Knowledge distillation: the current model (the student) learns from a frozen teacher.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"): match the teacher's
temperature-softened class distribution. Seed 003 adds feature-map and attention losses; here
they are FitNets-style hints on the penultimate features (Romero et al. 2015, with a learned
adapter when widths differ) and attention transfer (Zagoruyko & Komodakis 2017) on the spatial
attention maps of the last convolution at every resolution the two networks share.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.methods._common import classifier_layer, finish, history_metrics, torch_module
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import StageContext, StageResult
from compression.training import train


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
    feature_weight: float = param(
        0.0, help="weight of the hint loss on the penultimate features (0: off)", ge=0.0, le=1000.0
    )
    attention_weight: float = param(
        0.0, help="weight of the attention-transfer loss (0: off; 1000 is usual)", ge=0.0, le=1e6
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
    epochs: int = param(10, help="training epochs", ge=1, le=1000)
    lr: float = param(0.01, help="peak learning rate (cosine decay to zero)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's KD loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    The ``T^2`` keeps its gradient on the same scale as the label loss whatever ``T`` is.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squares, L2-normalised."""
    a = features.float().pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


class _Taps:
    """Forward hooks that keep the classifier's input and the last conv output per resolution."""

    def __init__(self, module: nn.Module, classifier: nn.Module | None, spatial: bool) -> None:
        self.penultimate: torch.Tensor | None = None
        self.maps: dict[tuple[int, int], torch.Tensor] = {}
        self._handles: list[Any] = []
        if classifier is not None:
            self._handles.append(classifier.register_forward_pre_hook(self._keep_input))
        if spatial:
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    self._handles.append(m.register_forward_hook(self._keep_map))

    def _keep_input(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        self.penultimate = args[0].flatten(1)

    def _keep_map(self, _m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> None:
        # Later convs at the same resolution overwrite earlier ones: the last one per stage wins.
        self.maps[(int(out.shape[-2]), int(out.shape[-1]))] = out

    def clear(self) -> None:
        self.penultimate = None
        self.maps = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def _taps(module: nn.Module, classifier: nn.Module | None, spatial: bool) -> Iterator[_Taps]:
    taps = _Taps(module, classifier, spatial)
    try:
        yield taps
    finally:
        taps.remove()


class DistillationLoss:
    """The training loss: label CE, soft targets, and the optional hint and attention terms."""

    def __init__(
        self,
        teacher: nn.Module,
        cfg: DistillationConfig,
        student_taps: _Taps,
        teacher_taps: _Taps,
        adapter: nn.Module | None,
    ) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.s_taps = student_taps
        self.t_taps = teacher_taps
        self.adapter = adapter
        self.last_terms: dict[str, float] = {}

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
        if cfg.feature_weight > 0:
            f_s, f_t = self.s_taps.penultimate, self.t_taps.penultimate
            if f_s is None or f_t is None:
                raise StageScopeError("distillation: no classifier layer to take features from")
            if self.adapter is not None:
                f_s = self.adapter(f_s)
            loss = loss + cfg.feature_weight * F.mse_loss(f_s.float(), f_t.float())
        if cfg.attention_weight > 0:
            shared = sorted(set(self.s_taps.maps) & set(self.t_taps.maps))
            if not shared:
                raise StageScopeError(
                    "distillation: student and teacher share no feature-map resolution "
                    "for attention transfer"
                )
            at = sum(
                (attention_map(self.s_taps.maps[r]) - attention_map(self.t_taps.maps[r]))
                .pow(2)
                .mean()
                for r in shared
            )
            loss = loss + cfg.attention_weight * at / len(shared)
        return loss, logits


def _penultimate_width(
    module: nn.Module, classifier: nn.Module | None, shape: tuple[int, ...]
) -> int:
    with _taps(module, classifier, spatial=False) as taps, torch.no_grad():
        device = next(iter(module.parameters())).device
        was_training = module.training
        module.eval()
        module(torch.zeros(1, *shape, device=device))
        module.train(was_training)
        if taps.penultimate is None:
            raise StageScopeError("distillation: no classifier layer to take features from")
        return int(taps.penultimate.shape[1])


@register_method(
    "distillation",
    config=DistillationConfig,
    summary="Train the current model against a frozen teacher's soft targets (Hinton KD), "
    "optionally with feature hints and attention transfer.",
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: DistillationConfig) -> StageResult:
    """Distil a teacher into ``ctx.model``'s module, which is trained in place."""
    student = torch_module(ctx, "distillation")
    if cfg.teacher:
        if ctx.load_model is None:
            raise StageScopeError(
                f"distillation: cannot resolve teacher {cfg.teacher!r} here (no model loader)"
            )
        teacher_state = ctx.load_model(cfg.teacher)
        if teacher_state.module is None:
            raise StageScopeError("distillation: the teacher must be a torch model, not ONNX")
        if teacher_state.num_classes != ctx.model.num_classes:
            raise StageScopeError(
                f"distillation: the teacher has {teacher_state.num_classes} classes, "
                f"the student {ctx.model.num_classes}"
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

    n = ctx.model.num_classes
    s_cls, t_cls = classifier_layer(student, n), classifier_layer(teacher, n)
    adapter: nn.Module | None = None
    if cfg.feature_weight > 0:
        shape = ctx.model.input_shape
        d_s = _penultimate_width(student, s_cls, shape)
        d_t = _penultimate_width(teacher, t_cls, shape)
        if d_s != d_t:
            # A 1x1 projection of the student's features into the teacher's width (FitNets'
            # regressor); it is trained with the student and thrown away afterwards.
            adapter = nn.Linear(d_s, d_t, bias=False).to(ctx.device)

    clip = None
    if cfg.max_grad_norm is not None:
        max_norm = cfg.max_grad_norm
        params = list(student.parameters()) + (list(adapter.parameters()) if adapter else [])

        def clip(_: nn.Module) -> None:
            # At high T the KD gradient approaches logit regression, (z_s - z_t) / N: a
            # teacher trained to near-zero loss has large logits, and without BatchNorm a
            # student's first steps can diverge. Runs after AMP's unscale, so norms are true.
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    spatial = cfg.attention_weight > 0
    with _taps(student, s_cls, spatial) as s_taps, _taps(teacher, t_cls, spatial) as t_taps:
        loss = DistillationLoss(teacher, cfg, s_taps, t_taps, adapter)
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
            extra_params=adapter.parameters() if adapter is not None else (),
            label="distillation",
        )
    ctx.model.module = finish(student)
    return StageResult(model=ctx.model, metrics=history_metrics(history), history=history)


def check_model(facts: ModelFacts, cfg: DistillationConfig) -> None:
    """Refuse hint or attention losses on a student without the layers they tap.

    The hint loss taps the classifier's input (a linear or conv layer with one output per
    class); attention transfer taps convolution feature maps. Unknown layers pass.
    """
    if cfg.feature_weight > 0 and facts.has_classifier() is False:
        raise ConfigError(
            "config.feature_weight",
            f"the hint loss taps the input of the classifier layer, but {facts.label} has no "
            f"linear or conv layer with {facts.num_classes} outputs; set feature_weight to 0",
        )
    if cfg.attention_weight > 0 and facts.has_conv() is False:
        layers = ", ".join(facts.layer_names()) or "none"
        raise ConfigError(
            "config.attention_weight",
            f"attention transfer taps convolution feature maps, but {facts.label} has no "
            f"convolution layers (its layers: {layers}); set attention_weight to 0",
        )
