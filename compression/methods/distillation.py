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
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.methods._common import classifier_layer, finish, history_metrics, torch_module
from compression.model_facts import CONV_KINDS, ModelFacts
from compression.registry import param, register_method
from compression.stage import StageContext, StageResult
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

    def validate(self) -> None:
        """Cross-field checks: layer lists well formed and paired one to one."""
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
    "spatial-attention losses and FitNets hints.",
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


def check_model(facts: ModelFacts, cfg: DistillationConfig) -> None:
    """Refuse losses on a student without the layers they tap, before anything runs.

    The hint loss taps the classifier's input (a linear or conv layer with one output per
    class); the channel-correlation and attention losses tap convolution feature maps, the
    last convolution or the ``student_layers`` named. A named layer must be a weighted layer
    of the student or a block containing one. Unknown layer tables pass (the run checks the
    live modules, and the teacher's names, before its first step).
    """
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
