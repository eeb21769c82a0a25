"""Unstructured magnitude pruning with a gradual schedule and masked sparse fine-tuning.

Han et al. 2015 ("Learning both Weights and Connections", the pruning step of Deep Compression,
seed 004) prune the smallest weights and retrain the rest; Zhu & Gupta 2017 ("To prune, or not
to prune") ramp the sparsity up along a cubic so the network adapts between cuts. Optionally the
sparse fine-tuning also learns from the unpruned model's softened predictions (Hinton et al.
2015's soft targets, the model as it was before this stage as the teacher), which keeps the
pruned network's function close to the dense one on a small training set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.methods._common import (
    detection_heads,
    finish,
    history_metrics,
    layer_kind,
    torch_module,
)
from compression.methods.distillation import teacher_kd_loss
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.training import LossFn, cross_entropy_loss, train


@dataclass(frozen=True)
class MagnitudePruningConfig:
    sparsity: float = param(
        0.8, help="final fraction of conv/linear weights set to zero", ge=0.0, lt=1.0
    )
    scope: Literal["global", "layer"] = param(
        "global", help="rank weights across all layers, or prune every layer to the same sparsity"
    )
    steps: int = param(
        4, help="pruning steps on the cubic schedule (Zhu & Gupta); 1 prunes at once", ge=1, le=100
    )
    epochs_per_step: int = param(
        1, help="masked fine-tuning epochs after each pruning step but the last", ge=0, le=100
    )
    finetune_epochs: int = param(
        2, help="masked fine-tuning epochs after the last step", ge=0, le=1000
    )
    lr: float = param(0.01, help="peak learning rate of each fine-tuning phase", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)
    distill: float = param(
        0.0,
        help="weight of the soft-target loss towards the unpruned model's predictions during "
        "the sparse fine-tuning; 1 - distill weighs the label loss (0: labels only)",
        ge=0.0,
        le=1.0,
    )
    temperature: float = param(
        4.0, help="softmax temperature of the soft targets (with distill > 0)", gt=0.0, le=100.0
    )

    def validate(self) -> None:
        if self.steps > 1 and self.epochs_per_step == 0 and self.finetune_epochs == 0:
            raise ConfigError(
                "config.epochs_per_step",
                "a gradual schedule without fine-tuning between steps is one-shot pruning; "
                "set steps to 1 or give it epochs",
            )


def cubic_schedule(final: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps: ``s_f * (1 - (1 - t/n)^3)``.

    Prunes fast while many redundant weights remain and slowly near the target.
    """
    return [final * (1.0 - (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The conv and linear weights to prune; a YOLO detector's heads stay dense (a small share
    of the weights that turns features into box offsets, objectness and class scores)."""
    heads = set(detection_heads(module) or [])
    return {
        name: m.weight
        for name, m in module.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in heads
    }


@torch.no_grad()
def _masks_for(
    weights: dict[str, torch.Tensor], sparsity: float, scope: str
) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the ``sparsity`` fraction of smallest-magnitude weights."""
    if sparsity <= 0.0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    if scope == "global":
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        k = round(sparsity * flat.numel())
        if k == 0:
            return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        # Rank globally with topk on the indices rather than a value threshold: ties at the
        # threshold (many weights already exactly zero) would otherwise overshoot the target.
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[torch.topk(flat, k, largest=False).indices] = True
        masks: dict[str, torch.Tensor] = {}
        offset = 0
        for n, w in weights.items():
            masks[n] = ~drop[offset : offset + w.numel()].view_as(w)
            offset += w.numel()
        return masks
    masks = {}
    for n, w in weights.items():
        flat_w = w.detach().abs().flatten()
        k = round(sparsity * flat_w.numel())
        keep = torch.ones(flat_w.numel(), dtype=torch.bool, device=flat_w.device)
        if k > 0:
            keep[torch.topk(flat_w, k, largest=False).indices] = False
        masks[n] = keep.view_as(w)
    return masks


def _sparsity(w: torch.Tensor) -> float:
    return float((w == 0).sum().item()) / max(w.numel(), 1)


@register_method(
    "magnitude_pruning",
    config=MagnitudePruningConfig,
    summary="Zero the smallest weights along a cubic schedule, then fine-tune with fixed masks.",
    inputs=("torch",),
    tasks=("classification", "detection"),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined below
)
def run(ctx: StageContext, cfg: MagnitudePruningConfig) -> StageResult:
    """Prune ``ctx.model`` to ``cfg.sparsity`` and fine-tune it; masks stay zero throughout.

    The result is a plain module whose pruned weights are exact zeros (no parametrizations or
    mask buffers are left behind), so it exports and checkpoints like any other.

    A detection model is pruned at once to the final sparsity (YOLO heads stay dense) and not
    trained: the classification fine-tuning does not apply, a later stage fine-tunes it.
    """
    module = torch_module(ctx, "magnitude_pruning")
    detector = ctx.model.task == "detection"
    if detector and cfg.distill > 0.0:
        raise StageScopeError(f"magnitude_pruning: {_DISTILL_REFUSAL}")
    module.to(ctx.device)
    weights = _weights(module)
    before = {n: (_sparsity(w), w.numel()) for n, w in weights.items()}
    kinds = {n: layer_kind(m) for n, m in module.named_modules() if n in weights}
    masks: dict[str, torch.Tensor] = {}
    loss_fn: LossFn = cross_entropy_loss
    if cfg.distill > 0.0:
        # The teacher is the model as it came in: frozen, in eval mode, on the same device.
        teacher = copy.deepcopy(module).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        loss_fn = teacher_kd_loss(teacher, cfg.distill, cfg.temperature)

    def apply_masks(_: nn.Module) -> None:
        # Re-zero after every optimizer step: momentum and weight decay would revive them.
        with torch.no_grad():
            for n, w in weights.items():
                w.mul_(masks[n])

    schedule = cubic_schedule(cfg.sparsity, cfg.steps)
    phases = [cfg.epochs_per_step] * (cfg.steps - 1) + [cfg.finetune_epochs]
    if detector:
        # Without training between them, the schedule's steps would only repeat the last cut.
        schedule, phases = [cfg.sparsity], [0]
        ctx.report(0.0, "detection model: one-shot pruning, no fine-tuning in this stage", {})
    total_epochs = max(1, sum(phases))
    done = 0
    history: list[dict[str, float]] = []
    for step, (target, epochs) in enumerate(zip(schedule, phases, strict=True)):
        ctx.check_cancel()
        masks = _masks_for(weights, target, cfg.scope)
        apply_masks(module)
        ctx.report(
            done / total_epochs,
            f"pruning step {step + 1}/{cfg.steps}: sparsity {target:.3f}",
            {"sparsity": target},
        )
        if epochs == 0:
            continue
        history += train(
            module,
            ctx.data,
            ctx,
            epochs=epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            loss_fn=loss_fn,
            after_step=apply_masks,
            progress=(done / total_epochs, (done + epochs) / total_epochs),
            label=f"sparse fine-tuning {step + 1}/{cfg.steps}",
        )
        done += epochs

    layers = []
    zeros = 0
    total = 0
    for n, w in weights.items():
        after = _sparsity(w)
        zeros += int((w == 0).sum().item())
        total += w.numel()
        layers.append(
            LayerChange(
                name=n,
                kind=kinds[n],
                params_before=round(before[n][1] * (1.0 - before[n][0])),
                params_after=w.numel() - int((w == 0).sum().item()),
                sparsity_before=before[n][0],
                sparsity_after=after,
            )
        )
    metrics = {
        "sparsity": zeros / max(total, 1),
        "nonzero_params": float(total - zeros),
        **history_metrics(history),
    }
    ctx.model.module = finish(module)
    return StageResult(model=ctx.model, metrics=metrics, layers=layers, history=history)


_DISTILL_REFUSAL = "distill matches a classifier's soft targets; a detection model needs distill 0"


def check_model(facts: ModelFacts, cfg: MagnitudePruningConfig) -> None:
    """Refuse soft-target distillation on a detection model before anything runs."""
    if facts.task == "detection" and cfg.distill > 0.0:
        raise ConfigError(
            "config.distill", f"{facts.label} is a detection model: {_DISTILL_REFUSAL}"
        )
