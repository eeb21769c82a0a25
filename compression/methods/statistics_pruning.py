"""Statistics-based filter pruning (seed 002: Gong, Zhang and Zeng 2020).

Every filter is summarised by the mean and the variance of its weights; per layer, 2-means
clustering of the standardised ``(|mean|, variance)`` separates weak filters (the cluster with
the smaller mean square weight) from strong ones. Weak filters are removed and the next layer is
rebuilt from the kept ones by Torch-Pruning's DependencyGraph (its input channels of the removed
filters go with them), then the network is fine-tuned, in ``iterative_steps`` rounds.

The score (:class:`compression.methods.importances.StatisticsImportance`) is a Torch-Pruning
importance, so this method is ``channel_pruning``'s loop (global ranking, ``round_to``, the
layer-collapse floor, MAC targets, the geometric schedule, best epoch on ``val``, recovery
distillation) with another ranking; it needs no BatchNorm and no data to rank.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from compression.methods._common import torch_module
from compression.methods.channel_pruning import ROUND_TO_HELP, run_pruning
from compression.methods.importances import StatisticsImportance
from compression.registry import param, register_method
from compression.stage import StageContext, StageResult


@dataclass(frozen=True)
class StatisticsPruningConfig:
    ratio: float = param(
        0.5,
        help="fraction of channels to remove (ignored when target_mac_reduction is set)",
        ge=0.0,
        lt=1.0,
    )
    target_mac_reduction: float | None = param(
        None,
        help="remove filters until MACs shrink by this factor, e.g. 3.0; the stage fails if "
        "the layer guards stop it short",
        gt=1.0,
        le=100.0,
    )
    allow_mac_shortfall: bool = param(
        False,
        help="accept a target_mac_reduction that is not reached instead of failing the stage",
    )
    iterative_steps: int = param(
        3,
        help="prune in this many steps (each removes the same factor of MACs), re-clustering "
        "and fine-tuning in between",
        ge=1,
        le=20,
    )
    global_pruning: bool = param(
        True, help="rank filters across layers (true) or remove the same fraction per layer"
    )
    max_layer_ratio: float = param(
        0.9,
        help="never remove more than this fraction of any layer's filters (layer collapse guard)",
        gt=0.0,
        lt=1.0,
    )
    round_to: int = param(8, help=ROUND_TO_HELP, ge=1)
    finetune_epochs: int = param(
        5,
        help="fine-tuning epochs in all, split across the iterative steps",
        ge=0,
        le=1000,
    )
    recovery_distillation: float = param(
        0.0,
        help="weight of a soft-target loss (T=4) from the unpruned model while fine-tuning "
        "(0: off)",
        ge=0.0,
        le=1.0,
    )
    lr: float = param(0.01, help="peak learning rate of each fine-tuning phase", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)


@register_method(
    "statistics_pruning",
    config=StatisticsPruningConfig,
    summary="Remove the filters whose weight mean and variance cluster as weak (2-means per "
    "layer), rebuild the next layers with Torch-Pruning's DependencyGraph, fine-tune; iterative.",
    inputs=("torch",),
    tasks=("classification",),
)
def run(ctx: StageContext, cfg: StatisticsPruningConfig) -> StageResult:
    """Prune ``ctx.model`` by filter statistics in ``cfg.iterative_steps`` rounds."""
    module = torch_module(ctx, "statistics_pruning")
    module.to(ctx.device)
    teacher = copy.deepcopy(module) if cfg.recovery_distillation > 0 else None
    module.eval()

    def make_importance(_alpha: float) -> Any:
        return StatisticsImportance(seed=ctx.seed)

    result = run_pruning(
        ctx, module, cfg, make_importance, ratio=cfg.ratio, teacher=teacher, history=[]
    )
    if cfg.target_mac_reduction is None:
        result.metrics["channel_ratio"] = cfg.ratio
    return result
