"""Structured channel pruning: whole channels leave the network, so it really gets faster.

Torch-Pruning's DependencyGraph (Fang et al. 2023, "DepGraph") finds every layer coupled to a
channel, so removing it keeps the network consistent (BN, the next conv's inputs, residual adds,
flatten into the classifier). With ``importance: bn_scale`` this is network slimming (Liu et al.
2017, "Learning Efficient Convolutional Networks through Network Slimming"; seed 000's "Std
Prune"): sparsity training with an L1 penalty on the BatchNorm scales drives unimportant
channels' gamma towards zero, the smallest are pruned, and the slim network is fine-tuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compression.errors import ConfigError, MacTargetError, StageScopeError
from compression.macs import count_macs
from compression.methods._common import (
    classifier_layer,
    example_input,
    finish,
    history_metrics,
    layer_kind,
    prunable_layers,
    torch_module,
)
from compression.metrics import count_params
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.training import train

# With a MAC target the pruner removes channels in this many small global steps until the target
# is met; finer steps overshoot less, each step costs one graph walk and one MAC count. The last
# step asks for every channel, which leaves each layer at its floor (max_layer_ratio, round_to):
# the search only ends short of the target when the guards allow no more pruning.
_MAC_SEARCH_STEPS = 100
# The largest global fraction of channels a gamma threshold may remove; max_layer_ratio still
# caps every single layer.
_MAC_SEARCH_CEILING = 0.95


@dataclass(frozen=True)
class ChannelPruningConfig:
    importance: Literal["bn_scale", "l1", "l2"] = param(
        "bn_scale",
        help="channel score: |BN gamma| (network slimming), or L1 / L2 norm of the filters",
    )
    ratio: float = param(
        0.5,
        help="fraction of channels to remove (ignored when target_mac_reduction or threshold is set)",
        ge=0.0,
        lt=1.0,
    )
    target_mac_reduction: float | None = param(
        None,
        help="remove channels step by step until MACs shrink by this factor, e.g. 3.0; "
        "the stage fails if the layer guards stop it short",
        gt=1.0,
        le=100.0,
    )
    allow_mac_shortfall: bool = param(
        False,
        help="accept a target_mac_reduction that is not reached (the reached factor is "
        "still reported) instead of failing the stage",
    )
    threshold: float | None = param(
        None,
        help="bn_scale only: remove the channels whose |gamma| is below this value",
        gt=0.0,
    )
    global_pruning: bool = param(
        True, help="rank channels across layers (true) or remove the same fraction per layer"
    )
    max_layer_ratio: float = param(
        0.9,
        help="never remove more than this fraction of any layer's channels (layer collapse guard)",
        gt=0.0,
        lt=1.0,
    )
    round_to: int = param(
        8, help="keep channel counts multiples of this (fast kernels like multiples of 8)", ge=1
    )
    sparsity_lambda: float = param(
        1e-2,
        help="bn_scale only: L1 penalty on BN gammas during sparsity training "
        "(the paper's 1e-4 assumes ~60k steps; small data sets need more)",
        ge=0.0,
        le=1.0,
    )
    sparsity_epochs: int = param(
        5, help="bn_scale only: sparsity-training epochs before pruning", ge=0, le=1000
    )
    finetune_epochs: int = param(5, help="fine-tuning epochs after pruning", ge=0, le=1000)
    lr: float = param(0.01, help="peak learning rate of each training phase", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)

    def validate(self) -> None:
        if self.threshold is not None and self.importance != "bn_scale":
            raise ConfigError("config.threshold", "a gamma threshold needs importance bn_scale")
        if self.threshold is not None and self.target_mac_reduction is not None:
            raise ConfigError(
                "config.threshold", "set either threshold or target_mac_reduction, not both"
            )


def _importance(name: str) -> Any:
    if name == "bn_scale":
        # Raw |gamma|, no per-group normalisation: after sparsity training the gammas of all
        # layers live on one scale, and slimming prunes them against one global threshold.
        return tp.importance.BNScaleImportance(normalizer=None)
    # Torch-Pruning's default mean normalisation makes filter norms of differently sized layers
    # comparable when ranking globally.
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def _bn_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.affine]


def l1_on_bn_scales(lam: float) -> Any:
    """An ``after_backward`` hook adding the L1 subgradient ``lam * sign(gamma)`` to BN scales."""

    def hook(module: nn.Module) -> None:
        with torch.no_grad():
            for bn in _bn_layers(module):
                if bn.weight.grad is not None:
                    bn.weight.grad.add_(torch.sign(bn.weight), alpha=lam)

    return hook


def _ratio_from_threshold(module: nn.Module, threshold: float) -> float:
    gammas = torch.cat([bn.weight.detach().abs().flatten().cpu() for bn in _bn_layers(module)])
    return float((gammas < threshold).float().mean())


@dataclass
class _Candidate:
    module: nn.Module
    handler: Any
    scores: torch.Tensor  # one importance score per current channel
    initial: int
    floor: int  # channels this layer keeps at least


class _SlimPruner:
    """Removes channels group by group on Torch-Pruning's DependencyGraph.

    The ranking is Torch-Pruning's importance, but the thresholding is ours: TP's global step
    removes every channel under one threshold and silently skips a group that would lose all of
    them, so a layer whose scores are all small (common after sparsity training) is either
    untouched or, with a looser cap, collapsed. Here every layer keeps a floor of
    ``ceil((1 - max_layer_ratio) * initial)`` channels (rounded up to ``round_to``) and the
    channels it may not give up are handed to the next-weakest layers instead.
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        *,
        importance: Any,
        ignored: list[nn.Module],
        global_pruning: bool,
        max_layer_ratio: float,
        round_to: int,
    ) -> None:
        self.dg = tp.DependencyGraph().build_dependency(module, example_inputs=example)
        self.importance = importance
        self.ignored = ignored
        self.global_pruning = global_pruning
        self.max_layer_ratio = max_layer_ratio
        self.round_to = round_to
        self.initial: dict[nn.Module, int] = {}
        for c in self._candidates():
            self.initial[c.module] = len(c.scores)

    def _groups(self) -> list[Any]:
        groups = []
        for g in self.dg.get_all_groups(
            ignored_layers=self.ignored, root_module_types=[nn.Conv2d, nn.Linear]
        ):
            # Grouped (not depthwise) convs need equal-sized channel groups; leave them whole.
            if any(
                isinstance(d.target.module, nn.Conv2d)
                and 1 < d.target.module.groups < d.target.module.in_channels
                for d, _ in g
            ):
                continue
            groups.append(g)
        return groups

    def _candidates(self) -> list[_Candidate]:
        out = []
        for g in self._groups():
            dep, _ = g[0]
            scores = self.importance(g)
            if scores is None:
                continue
            current = len(scores)
            initial = self.initial.get(dep.target.module, current)
            floor = max(1, math.ceil(initial * (1.0 - self.max_layer_ratio) - 1e-9))
            floor = min(current, math.ceil(floor / self.round_to) * self.round_to)
            out.append(
                _Candidate(dep.target.module, dep.handler, scores.detach().cpu(), initial, floor)
            )
        return out

    def _round(self, keep: int, c: _Candidate) -> int:
        if self.round_to > 1:
            keep = round(keep / self.round_to) * self.round_to
        return min(len(c.scores), max(c.floor, keep))

    def prune_to(self, fraction: float) -> None:
        """Remove channels until ``fraction`` of the initial channels (of all layers) is gone."""
        cands = self._candidates()
        if not cands:
            return
        keep: dict[int, int] = {}
        if self.global_pruning:
            total_keep = round((1.0 - fraction) * sum(c.initial for c in cands))
            # Greedy global threshold: drop the weakest channel anywhere until the budget is met,
            # skipping layers that reached their floor.
            removable = sum(len(c.scores) - c.floor for c in cands)
            n_remove = min(removable, sum(len(c.scores) for c in cands) - total_keep)
            if n_remove <= 0:
                return
            pool = torch.cat([c.scores for c in cands])
            owner = torch.cat([torch.full((len(c.scores),), i) for i, c in enumerate(cands)])
            left = [len(c.scores) - c.floor for c in cands]
            removed = [0] * len(cands)
            for j in torch.argsort(pool).tolist():
                if n_remove == 0:
                    break
                i = int(owner[j])
                if removed[i] < left[i]:
                    removed[i] += 1
                    n_remove -= 1
            for i, c in enumerate(cands):
                keep[i] = self._round(len(c.scores) - removed[i], c)
        else:
            for i, c in enumerate(cands):
                keep[i] = self._round(round((1.0 - fraction) * c.initial), c)
        for i, c in enumerate(cands):
            n_drop = len(c.scores) - keep[i]
            if n_drop <= 0:
                continue
            idxs = torch.argsort(c.scores)[:n_drop].tolist()
            self.dg.get_pruning_group(c.module, c.handler, sorted(idxs)).prune()


def _snapshot(module: nn.Module) -> dict[str, tuple[str, int, int]]:
    out = {}
    for name, m in prunable_layers(module):
        channels = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        out[name] = (layer_kind(m), int(channels), sum(p.numel() for p in m.parameters()))
    return out


@register_method(
    "channel_pruning",
    config=ChannelPruningConfig,
    summary="Remove whole channels (network slimming on BN scales, or L1/L2 filter norms) "
    "with Torch-Pruning's DependencyGraph, then fine-tune.",
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: ChannelPruningConfig) -> StageResult:
    """Slim ``ctx.model``: optional sparsity training, physical channel removal, fine-tuning."""
    module = torch_module(ctx, "channel_pruning")
    module.to(ctx.device)
    if cfg.importance == "bn_scale" and not _bn_layers(module):
        raise StageScopeError(
            "channel_pruning with importance bn_scale needs BatchNorm layers; "
            "this model has none, use importance l1 or l2"
        )
    classifier = classifier_layer(module, ctx.model.num_classes)
    # Never remove class logits: the classifier's outputs are the task's contract.
    ignored: list[nn.Module] = [classifier] if classifier is not None else []
    example = example_input(ctx, module)
    macs_before = count_macs(module, ctx.model.input_shape)
    params_before = count_params(module)
    before = _snapshot(module)

    train_epochs = cfg.finetune_epochs
    sparsity_epochs = cfg.sparsity_epochs if cfg.importance == "bn_scale" else 0
    total = max(1, sparsity_epochs + train_epochs)
    split = sparsity_epochs / total
    history: list[dict[str, float]] = []
    if sparsity_epochs > 0:
        history += train(
            module,
            ctx.data,
            ctx,
            epochs=sparsity_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            after_backward=l1_on_bn_scales(cfg.sparsity_lambda),
            progress=(0.0, split),
            label="sparsity training",
        )
        module.to(ctx.device)
        example = example.to(ctx.device)

    ctx.check_cancel()
    module.eval()
    ratio = cfg.ratio
    if cfg.threshold is not None:
        ratio = min(_ratio_from_threshold(module, cfg.threshold), _MAC_SEARCH_CEILING)
    pruner = _SlimPruner(
        module,
        example,
        importance=_importance(cfg.importance),
        ignored=ignored,
        global_pruning=cfg.global_pruning,
        max_layer_ratio=cfg.max_layer_ratio,
        round_to=cfg.round_to,
    )
    if cfg.target_mac_reduction is not None:
        for step in range(1, _MAC_SEARCH_STEPS + 1):
            ctx.check_cancel()
            pruner.prune_to(step / _MAC_SEARCH_STEPS)
            macs = count_macs(module, ctx.model.input_shape)
            if macs_before / max(macs, 1) >= cfg.target_mac_reduction:
                break
    else:
        pruner.prune_to(ratio)
    del pruner  # it holds the dependency graph and hooks into the module
    macs_pruned = count_macs(module, ctx.model.input_shape)
    params_pruned = count_params(module)
    reached = macs_before / max(macs_pruned, 1)
    pruned_metrics = {
        "macs_before": float(macs_before),
        "macs_after": float(macs_pruned),
        "mac_reduction": reached,
    }
    if cfg.target_mac_reduction is not None:
        pruned_metrics["target_mac_reduction"] = cfg.target_mac_reduction
    ctx.report(
        split,
        f"pruned: MACs {macs_before / 1e6:.1f}M -> {macs_pruned / 1e6:.1f}M ({reached:.2f}x fewer)",
        pruned_metrics,
    )
    if cfg.target_mac_reduction is not None and reached < cfg.target_mac_reduction:
        if not cfg.allow_mac_shortfall:
            # Fail before fine-tuning: the epochs would be spent on a model the recipe rejects.
            raise MacTargetError(
                reached,
                cfg.target_mac_reduction,
                f"every layer is at its floor (max_layer_ratio {cfg.max_layer_ratio:g}, "
                f"round_to {cfg.round_to}; the classifier and grouped convs are never pruned): "
                "raise max_layer_ratio, lower round_to or the target",
            )
        ctx.report(
            split,
            f"MAC target {cfg.target_mac_reduction:.2f}x not reached ({reached:.2f}x); "
            "allow_mac_shortfall accepts it",
            pruned_metrics,
        )

    history += train(
        module,
        ctx.data,
        ctx,
        epochs=train_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        progress=(split, 1.0),
        label="fine-tuning",
    )

    after = _snapshot(module)
    layers = [
        LayerChange(
            name=name,
            kind=kind,
            channels_before=ch,
            channels_after=after[name][1] if name in after else 0,
            params_before=n,
            params_after=after[name][2] if name in after else 0,
        )
        for name, (kind, ch, n) in before.items()
    ]
    metrics = {
        **pruned_metrics,
        "params_before": float(params_before),
        "params_after": float(params_pruned),
        **history_metrics(history),
    }
    if cfg.target_mac_reduction is None:
        metrics["channel_ratio"] = ratio
    ctx.model.module = finish(module)
    return StageResult(model=ctx.model, metrics=metrics, layers=layers, history=history)


def check_model(facts: ModelFacts, cfg: ChannelPruningConfig) -> None:
    """Refuse BN-scale importance on a model without BatchNorm before anything runs."""
    if cfg.importance == "bn_scale" and facts.has_batchnorm is False:
        raise ConfigError(
            "config.importance",
            f"importance bn_scale ranks channels by their BatchNorm scales, but {facts.label} "
            "has no BatchNorm layers; use importance l1 or l2 (filter norms) instead",
        )
