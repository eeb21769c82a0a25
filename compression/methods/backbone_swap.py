"""Backbone swap: standard convolutions become lightweight blocks, then the original teaches them.

Seed 003's first step replaces YOLOv3's backbone with a lightweight one built from depthwise
separable convolutions, inverted residuals and channel attention, and recovers accuracy by
training. Here the swap is done block by block on the model in hand: every ungrouped ``k x k``
convolution (``k > 1``) that the config selects is replaced, in place, by a
:mod:`compression.light_blocks` block with the same channels, stride, padding and dilation, so
the BatchNorm, activation and residual adds around it are untouched (in a CIFAR ResNet that
means both 3x3 convs of each BasicBlock; in a VGG every 3x3 conv of ``features``). The network's
first convolution, which sees the image's one to three channels, is left alone by default: a
depthwise filter over three channels saves nothing and loses the most.

The new blocks start from random weights, so the swapped model is then trained with the
original, unswapped model as a frozen teacher (Hinton et al. 2015's soft targets, through
:func:`compression.methods.distillation.soft_target_loss`, plus the label loss).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.light_blocks import light_block_for
from compression.macs import count_macs, count_macs_per_module
from compression.methods._common import finish, history_metrics, torch_module
from compression.methods.distillation import soft_target_loss
from compression.metrics import count_params
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.structure import replace_module
from compression.training import train


@dataclass(frozen=True)
class BackboneSwapConfig:
    block: Literal["depthwise_separable", "inverted_residual"] = param(
        "depthwise_separable",
        help="replacement: depthwise separable conv (MobileNetV1) or inverted residual "
        "with expansion (MobileNetV2, a shortcut when shapes match)",
    )
    expansion: float = param(
        2.0,
        help="inverted_residual only: hidden width = expansion x input channels "
        "(above ~4 it costs more MACs than the 3x3 conv it replaces)",
        ge=1.0,
        le=8.0,
    )
    se: bool = param(False, help="add squeeze-and-excitation channel attention to every block")
    se_reduction: int = param(4, help="SE bottleneck: channels / reduction", ge=1, le=64)
    skip_first: bool = param(
        True, help="leave the network's first convolution (it sees the raw image) standard"
    )
    include: str = param(
        "",
        help="comma-separated name patterns (fnmatch, e.g. 'layer2.*,layer3.*') of the convs "
        "to swap; empty: every eligible conv",
    )
    exclude: str = param(
        "", help="comma-separated name patterns of convs to leave standard, e.g. 'features.0'"
    )
    only_if_cheaper: bool = param(
        True,
        help="leave a conv standard when its replacement would not cost fewer MACs",
    )
    epochs: int = param(
        5, help="training epochs of the swapped model with the original as teacher", ge=0, le=1000
    )
    temperature: float = param(
        4.0, help="softmax temperature of the soft targets", gt=0.0, le=100.0
    )
    alpha: float = param(
        0.9,
        help="weight of the soft-target loss; 1 - alpha weighs the label loss (0: no teacher)",
        ge=0.0,
        le=1.0,
    )
    lr: float = param(0.05, help="peak learning rate (cosine decay to zero)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)
    max_grad_norm: float | None = param(
        5.0, help="clip the gradient norm (the fresh blocks' first steps can be large)", gt=0.0
    )

    def validate(self) -> None:
        for field_name in ("include", "exclude"):
            for pattern in _patterns(getattr(self, field_name)):
                if any(c.isspace() for c in pattern):
                    raise ConfigError(
                        f"config.{field_name}",
                        f"pattern {pattern!r} contains a space; separate patterns with commas",
                    )


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _matches(name: str, patterns: list[str]) -> bool:
    # "layer2" selects everything inside layer2 as well as a layer of that exact name.
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def is_swappable(conv: nn.Module) -> bool:
    """A standard convolution a light block can stand in for: 2-D, ungrouped, ``k x k``
    with ``k > 1``, zero padding given as numbers."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.kernel_size[0] == conv.kernel_size[1] > 1
    )


def swap_candidates(
    module: nn.Module, cfg: BackboneSwapConfig
) -> tuple[list[str], list[tuple[str, str]]]:
    """The convs the config selects, in module order, and the eligible ones it leaves, why.

    Returns ``(selected, skipped)`` where ``skipped`` pairs a name with the reason (cost checks
    come later, when the input sizes are known).
    """
    include, exclude = _patterns(cfg.include), _patterns(cfg.exclude)
    eligible = [name for name, m in module.named_modules() if is_swappable(m)]
    first = next((n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)
    selected: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in eligible:
        if cfg.skip_first and name == first:
            skipped.append((name, "first convolution (skip_first)"))
        elif include and not _matches(name, include):
            skipped.append((name, "not matched by include"))
        elif exclude and _matches(name, exclude):
            skipped.append((name, "matched by exclude"))
        else:
            selected.append(name)
    return selected, skipped


def _input_sizes(
    module: nn.Module, names: list[str], input_shape: tuple[int, int, int]
) -> dict[str, tuple[int, int, int]]:
    """Each named conv's input shape (C, H, W) for one sample, from one forward pass."""
    sizes: dict[str, tuple[int, int, int]] = {}
    modules = dict(module.named_modules())
    handles = []
    for name in names:

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            shape = args[0].shape
            sizes[name] = (int(shape[1]), int(shape[2]), int(shape[3]))

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        param_ = next(module.parameters())
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=param_.device, dtype=param_.dtype))
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _subtree_macs(per_module: dict[str, int], name: str) -> int:
    return sum(v for k, v in per_module.items() if k == name or k.startswith(name + "."))


class _KDLoss:
    """Soft targets from the frozen original plus the label loss."""

    def __init__(self, teacher: nn.Module, cfg: BackboneSwapConfig) -> None:
        self.teacher = teacher
        self.cfg = cfg

    def __call__(
        self, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = module(inputs)
        loss = (1.0 - self.cfg.alpha) * F.cross_entropy(logits, targets)
        if self.cfg.alpha > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            soft = soft_target_loss(logits, teacher_logits, self.cfg.temperature)
            loss = loss + self.cfg.alpha * soft
        return loss, logits


@register_method(
    "backbone_swap",
    config=BackboneSwapConfig,
    summary="Replace standard k x k convs block by block with depthwise separable convs or "
    "inverted residuals (optionally with squeeze-and-excitation), then train the new model "
    "with the original as teacher.",
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: BackboneSwapConfig) -> StageResult:
    """Swap the selected convs of ``ctx.model``'s module, then distil the original into it."""
    module = torch_module(ctx, "backbone_swap")
    shape = ctx.model.input_shape
    selected, skipped = swap_candidates(module, cfg)
    if not selected:
        raise StageScopeError(_nothing_to_swap(module, skipped))

    teacher = copy.deepcopy(module)
    macs_before = count_macs(module, shape)
    params_before = count_params(module)
    per_module_before = count_macs_per_module(module, shape)
    sizes = _input_sizes(module, selected, shape)
    modules = dict(module.named_modules())

    layers: list[LayerChange] = []
    swapped: list[str] = []
    for name in selected:
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        new = light_block_for(
            conv, cfg.block, expansion=cfg.expansion, se=cfg.se, se_reduction=cfg.se_reduction
        )
        conv_macs = per_module_before.get(name, 0)
        new_macs = count_macs(new, sizes[name]) if name in sizes else 0
        if name not in sizes:
            # Never called in the forward pass (a dead branch): nothing to gain.
            skipped.append((name, "not used in the forward pass"))
            continue
        if cfg.only_if_cheaper and new_macs >= conv_macs:
            skipped.append(
                (name, f"{cfg.block} would cost {new_macs:,} MACs against {conv_macs:,}")
            )
            continue
        replace_module(module, name, new)
        swapped.append(name)
        layers.append(
            LayerChange(
                name=name,
                kind=f"conv -> {cfg.block}" + (" + se" if cfg.se else ""),
                channels_before=conv.out_channels,
                channels_after=conv.out_channels,
                params_before=sum(p.numel() for p in conv.parameters()),
                params_after=sum(p.numel() for p in new.parameters()),
                macs_before=conv_macs,
                macs_after=new_macs,
            )
        )
    if not swapped:
        raise StageScopeError(_nothing_to_swap(module, skipped))

    macs_after = count_macs(module, shape)
    params_after = count_params(module)
    per_module_after = count_macs_per_module(module, shape)
    # The counts per block are re-read from the whole model: they must add up to its total.
    layers = [
        dataclasses.replace(layer, macs_after=_subtree_macs(per_module_after, layer.name))
        for layer in layers
    ]
    swap_metrics = {
        "macs_before": float(macs_before),
        "macs_after": float(macs_after),
        "mac_reduction": macs_before / max(macs_after, 1),
        "params_before": float(params_before),
        "params_after": float(params_after),
        "param_reduction": params_before / max(params_after, 1),
        "swapped_convs": float(len(swapped)),
        "kept_convs": float(len(skipped)),
    }
    ctx.report(
        0.0,
        f"swapped {len(swapped)} convs for {cfg.block}: MACs {macs_before / 1e6:.2f}M -> "
        f"{macs_after / 1e6:.2f}M, params {params_before / 1e6:.3f}M -> {params_after / 1e6:.3f}M"
        + (f"; kept {', '.join(n for n, _ in skipped)}" if skipped else ""),
        swap_metrics,
    )

    teacher.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    module.to(ctx.device)
    clip = None
    if cfg.max_grad_norm is not None:
        max_norm = cfg.max_grad_norm

        def clip(m: nn.Module) -> None:
            torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)

    history = train(
        module,
        ctx.data,
        ctx,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        loss_fn=_KDLoss(teacher, cfg),
        after_backward=clip,
        label="training with the original as teacher",
    )
    ctx.model.module = finish(module)
    return StageResult(
        model=ctx.model,
        metrics={**swap_metrics, **history_metrics(history)},
        layers=layers,
        history=history,
    )


def _nothing_to_swap(module: nn.Module, skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        convs = [
            f"{n} ({m.kernel_size[0]}x{m.kernel_size[1]}, groups {m.groups})"
            for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d)
        ]
        if not convs:
            return (
                "backbone_swap replaces convolutions, and this model has none; "
                "it cannot be mapped to a lightweight backbone"
            )
        return (
            "backbone_swap found no standard k x k convolution (ungrouped, k > 1) to replace; "
            f"its convolutions: {', '.join(convs[:8])}" + (" ..." if len(convs) > 8 else "")
        )
    reasons = "; ".join(f"{n}: {why}" for n, why in skipped[:8])
    hint = ""
    if all("skip_first" in why for _, why in skipped):
        hint = "; its only standard k x k convolution is the first one (set skip_first false)"
    return f"backbone_swap left every eligible convolution standard ({reasons}){hint}"


def check_model(facts: ModelFacts, cfg: BackboneSwapConfig) -> None:
    """Refuse a model the swap cannot map before anything runs.

    ONNX models (the graph is not rebuilt), models without convolutions, and (for a zoo
    architecture, which is built to look) models with no eligible conv, or none the include
    and exclude patterns leave, are refused.
    """
    if facts.format != "torch":
        raise ConfigError(
            "method",
            f"backbone_swap rebuilds a torch module, but {facts.label} is ONNX at this point; "
            "swap the backbone before quantization or export",
        )
    if facts.has_conv() is False:
        raise ConfigError(
            "method",
            f"backbone_swap replaces convolutions, but {facts.label} has none "
            f"(its layers: {', '.join(facts.layer_names()) or 'none'})",
        )
    module = _zoo_module(facts)
    if module is not None:
        selected, skipped = swap_candidates(module, cfg)
        if not selected:
            field = (
                "config.include" if cfg.include else "config.exclude" if cfg.exclude else "method"
            )
            raise ConfigError(field, _nothing_to_swap(module, skipped))
    elif cfg.include and facts.layers:
        convs = facts.layer_names("conv")
        if not any(_matches(n, _patterns(cfg.include)) for n in convs):
            raise ConfigError(
                "config.include",
                f"no convolution of {facts.label} matches {cfg.include!r}; "
                f"its convolutions: {', '.join(convs[:12])}",
            )


def _zoo_module(facts: ModelFacts) -> nn.Module | None:
    from compression.zoo import create_model, has_model

    if not facts.arch or not has_model(facts.arch):
        return None
    return create_model(
        facts.arch,
        num_classes=facts.num_classes or 10,
        in_channels=facts.input_shape[0] if facts.input_shape else 3,
    )
