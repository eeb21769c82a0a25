"""Structured channel pruning: whole channels leave the network, so it really gets faster.

Torch-Pruning's DependencyGraph (Fang et al. 2023, "DepGraph") finds every layer coupled to a
channel, so removing it keeps the network consistent (BN, the next conv's inputs, residual adds,
flatten into the classifier). With ``importance: bn_scale`` this is network slimming (Liu et al.
2017, "Learning Efficient Convolutional Networks through Network Slimming"; seed 000's "Std
Prune"): sparsity training with an L1 penalty on the BatchNorm scales drives unimportant
channels' gamma towards zero, the smallest are pruned, and the slim network is fine-tuned.

``iterative_steps`` > 1 reaches the target in several prune-and-fine-tune steps on a geometric
schedule (each step removes the same *factor* of MACs), re-ranking channels on the partly
recovered network before every step; the fine-tuning epochs are split across the steps so the
total training budget does not change. ``importance: dynamic`` (seed 003) mixes |BN gamma| with
a channel-independence score measured on ``val`` and re-weighs the two at every step.
``recovery_distillation`` fine-tunes against the unpruned model's soft targets.

:func:`prune_and_finetune` is the loop; ``statistics_pruning`` runs it with its own importance.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compression.errors import ConfigError, MacTargetError, StageScopeError
from compression.macs import count_macs
from compression.methods._common import (
    classifier_layer,
    detection_heads,
    example_input,
    finish,
    layer_kind,
    prunable_layers,
    require_yolo_detector,
    torch_module,
)
from compression.methods._detection import flip_param, train_detector_in_stage
from compression.methods.distillation import teacher_kd_loss
from compression.methods.importances import DynamicImportance
from compression.metrics import count_params
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.training import cross_entropy_loss, train

# With a MAC target the pruner removes channels in sub-steps of 1 / _MAC_SEARCH_STEPS of the
# channels (ranked globally) until the next one would reach the target, then one unit (a channel,
# or round_to channels) of one layer at a time (see _Search). Each move costs a graph walk and a
# MAC count. The last sub-step asks for every channel, which leaves each layer at its floor
# (max_layer_ratio, round_to): the search only ends short of the target when the guards allow
# no more pruning.
_MAC_SEARCH_STEPS = 100
_FINE = 10  # sub_steps count in 1 / (_MAC_SEARCH_STEPS * _FINE) of the channels
# The largest global fraction of channels a gamma threshold may remove; max_layer_ratio still
# caps every single layer.
_MAC_SEARCH_CEILING = 0.95
# With a MAC target every step lands in [target, target * (1 + MAC_TOLERANCE)] where any order
# of removals allows it (see _Search); the stage reports when none does.
MAC_TOLERANCE = 0.05
# ONNX Runtime's x86 NCHWc blocks, in channels (floats per vector register): AVX2, AVX-512. Its
# NchwcTransformer runs a dense conv in the blocked layout only when the conv's input channels
# are below the block or a multiple of it; other convs stay on the plain NCHW kernels.
NCHWC_BLOCKS = {8: "AVX2", 16: "AVX-512"}
# round_to's help, shared by every pruning method with the option.
ROUND_TO_HELP = (
    "keep channel counts multiples of this: ONNX Runtime's x86 CPU kernels block channels by 8 "
    "(AVX2) or 16 (AVX-512), and a conv off the block runs slower kernels"
)
# Recovery distillation: Hinton's temperature, and the gradient-norm clip distillation uses
# (a confident teacher's soft targets can throw a freshly pruned student off in its first steps).
_KD_TEMPERATURE = 4.0
_KD_MAX_GRAD_NORM = 5.0
# Dynamic importance: val batches (of 64) for the independence statistics, train batches for the
# BatchNorm re-estimation before a candidate is scored, and the first step's weight offset
# (halved every step: a coarse-to-fine search over alpha).
_CALIBRATION_BATCHES = 2
_BN_RECALIBRATION_BATCHES = 8
_FIRST_WEIGHT_STEP = 0.5


@dataclass(frozen=True)
class ChannelPruningConfig:
    importance: Literal["bn_scale", "l1", "l2", "dynamic"] = param(
        "bn_scale",
        help="channel score: |BN gamma| (network slimming), L1 / L2 norm of the filters, or "
        "dynamic (|BN gamma| mixed with channel independence on val, re-weighed every step)",
    )
    ratio: float = param(
        0.5,
        help="fraction of channels to remove (ignored when target_mac_reduction or threshold is set)",
        ge=0.0,
        lt=1.0,
    )
    layer_ratios: dict[str, float] | None = param(  # noqa: RUF009 (its default is None)
        None,
        help="per-layer ratios instead of one: layer name -> fraction of its channels to remove "
        "(e.g. from a layer sensitivity analysis); only the named layers are pruned",
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
    round_to: int = param(8, help=ROUND_TO_HELP, ge=1)
    sparsity_lambda: float = param(
        1e-2,
        help="bn_scale only: L1 penalty on BN gammas during sparsity training "
        "(the paper's 1e-4 assumes ~60k steps; small data sets need more)",
        ge=0.0,
        le=1.0,
    )
    sparsity_epochs: int = param(
        5,
        help="bn_scale only: sparsity-training epochs before pruning (a detector trains with "
        "its detection loss)",
        ge=0,
        le=1000,
    )
    finetune_epochs: int = param(
        5,
        help="fine-tuning epochs after pruning, split across the iterative steps",
        ge=0,
        le=1000,
    )
    iterative_steps: int = param(
        1,
        help="prune in this many steps (each removes the same factor of MACs), fine-tuning "
        "and re-ranking in between; 1 prunes once",
        ge=1,
        le=20,
    )
    dynamic_weight: float = param(
        0.5,
        help="dynamic only: starting weight of |BN gamma| against channel independence; "
        "every step tries it and its neighbours and keeps the best on val",
        ge=0.0,
        le=1.0,
    )
    recovery_distillation: float = param(
        0.0,
        help="weight of a soft-target loss (T=4) from the unpruned model while fine-tuning; "
        "1 - weight stays on the labels (0: off)",
        ge=0.0,
        le=1.0,
    )
    lr: float = param(0.01, help="peak learning rate of each training phase", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)
    flip: bool = flip_param()

    def validate(self) -> None:
        if self.layer_ratios is not None:
            if self.target_mac_reduction is not None or self.threshold is not None:
                raise ConfigError(
                    "config.layer_ratios",
                    "per-layer ratios replace target_mac_reduction and threshold; set only one",
                )
            if not self.layer_ratios:
                raise ConfigError("config.layer_ratios", "names no layer; leave it null instead")
            for name, value in self.layer_ratios.items():
                if value > self.max_layer_ratio:
                    raise ConfigError(
                        f"config.layer_ratios.{name}",
                        f"{value:g} is above max_layer_ratio {self.max_layer_ratio:g}; "
                        "raise max_layer_ratio or lower the ratio",
                    )
        if self.threshold is not None and self.importance != "bn_scale":
            raise ConfigError("config.threshold", "a gamma threshold needs importance bn_scale")
        if self.threshold is not None and self.target_mac_reduction is not None:
            raise ConfigError(
                "config.threshold", "set either threshold or target_mac_reduction, not both"
            )


class PruneSettings(Protocol):
    """What :func:`prune_and_finetune` reads from a pruning method's config."""

    @property
    def ratio(self) -> float: ...
    @property
    def target_mac_reduction(self) -> float | None: ...
    @property
    def allow_mac_shortfall(self) -> bool: ...
    @property
    def global_pruning(self) -> bool: ...
    @property
    def max_layer_ratio(self) -> float: ...
    @property
    def round_to(self) -> int: ...
    @property
    def finetune_epochs(self) -> int: ...
    @property
    def iterative_steps(self) -> int: ...
    @property
    def recovery_distillation(self) -> float: ...
    @property
    def lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def optimizer(self) -> Literal["sgd", "adam"]: ...
    @property
    def weight_decay(self) -> float: ...


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


# --- schedules ---------------------------------------------------------------------------------


def mac_schedule(target: float, steps: int) -> list[float]:
    """The MAC reduction each step reaches: ``target ** (k / steps)``, geometric, ending at it.

    Every step removes the same factor of the MACs still there (e.g. 16x in 4 steps: 2x, 4x,
    8x, 16x), so early steps, which damage a full network, are as gentle as later ones.
    """
    return [target ** (k / steps) for k in range(1, steps + 1)]


def ratio_schedule(ratio: float, steps: int) -> list[float]:
    """The cumulative fraction of channels removed after each step: each step keeps the same
    fraction of the channels still there, ``1 - (1 - ratio) ** (k / steps)``."""
    return [1.0 - (1.0 - ratio) ** (k / steps) for k in range(1, steps + 1)]


def split_batches(total: int, steps: int) -> list[int]:
    """How many fine-tuning batches follow each prune step; they add up to ``total``.

    The last step, whose network is the one delivered, gets half the budget (all of it for
    one step, an equal share when there are two); the earlier steps share the other half
    equally, only enough to recover before the next ranking.
    """
    if steps <= 1:
        return [total]
    last = max(math.ceil(total / steps), math.ceil(total / 2))
    rest = total - last
    shares = [rest // (steps - 1)] * (steps - 1)
    for i in range(rest - sum(shares)):
        shares[-1 - i] += 1
    return [*shares, last]


# --- the pruner --------------------------------------------------------------------------------


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

    ``initial`` (layer name -> channel count) carries the unpruned counts over to a pruner built
    on a copy of a partly pruned network, so floors and fractions stay relative to the original.
    An importance with a ``prepare(module)`` method (e.g. one measuring activations) is
    prepared before every scoring.
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        *,
        importance: Any,
        ignored: list[nn.Module],
        global_pruning: bool,
        protect_inputs: Iterable[nn.Module] = (),
        max_layer_ratio: float,
        round_to: int,
        initial: dict[str, int] | None = None,
    ) -> None:
        self.module = module
        self.dg = tp.DependencyGraph().build_dependency(module, example_inputs=example)
        self.importance = importance
        self.ignored = ignored
        # Layers whose input channels must stay: a group that removes any of them (i.e. the
        # channels of whatever feeds the layer, through concatenations too) is never pruned.
        self.protect_inputs = set(protect_inputs)
        self.global_pruning = global_pruning
        self.max_layer_ratio = max_layer_ratio
        self.round_to = round_to
        self.names = {m: n for n, m in module.named_modules()}
        self.initial: dict[str, int] = dict(initial or {})
        if initial is None:
            for c in self._candidates():
                self.initial[self.names[c.module]] = len(c.scores)

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
            if self.protect_inputs and any(
                d.target.module in self.protect_inputs
                and self.dg.is_in_channel_pruning_fn(d.handler)
                for d, _ in g
            ):
                continue
            groups.append(g)
        return groups

    def _candidates(self) -> list[_Candidate]:
        prepare = getattr(self.importance, "prepare", None)
        if callable(prepare):
            prepare(self.module)
        out = []
        for g in self._groups():
            dep, _ = g[0]
            scores = self.importance(g)
            if scores is None:
                continue
            current = len(scores)
            initial = self.initial.get(self.names.get(dep.target.module, ""), current)
            out.append(
                _Candidate(
                    dep.target.module,
                    dep.handler,
                    scores.detach().cpu(),
                    initial,
                    self._floor(initial, current),
                )
            )
        return out

    def _floor(self, initial: int, current: int) -> int:
        floor = max(1, math.ceil(initial * (1.0 - self.max_layer_ratio) - 1e-9))
        return min(current, math.ceil(floor / self.round_to) * self.round_to)

    def layer_names(self) -> list[str]:
        """The layers whose channels this pruner can remove, in module order: each coupled
        group's root (the classifier, grouped convs and a residual branch's partners, which
        follow their root, are not among them)."""
        order = {m: i for i, m in enumerate(self.module.modules())}
        roots = [dep.target.module for dep, _ in (g[0] for g in self._groups())]
        return [self.names[m] for m in sorted(set(roots), key=lambda m: order.get(m, 0))]

    def check_layer_names(self, names: Iterable[str]) -> None:
        """Refuse per-layer ratios that name a layer this pruner cannot prune."""
        known = self.layer_names()
        unknown = sorted(set(names) - set(known))
        if unknown:
            listed = ", ".join(known) or "(none)"
            raise ConfigError(
                f"config.layer_ratios.{unknown[0]}",
                f"{len(unknown)} unknown or unprunable layer name(s): {', '.join(unknown)}; "
                f"the prunable layers are: {listed}",
            )

    def prune_layers(self, fractions: Mapping[str, float]) -> None:
        """Remove ``fractions[name]`` of each named layer's initial channels (its floor and
        ``round_to`` still apply); layers not named keep theirs."""
        for c in self._candidates():
            fraction = fractions.get(self.names.get(c.module, ""))
            if not fraction:
                continue
            n_drop = len(c.scores) - self._round(round((1.0 - fraction) * c.initial), c)
            if n_drop > 0:
                idxs = torch.argsort(c.scores)[:n_drop].tolist()
                self.dg.get_pruning_group(c.module, c.handler, sorted(idxs)).prune()

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

    def prune_weakest(self, exclude: frozenset[str] = frozenset()) -> str | None:
        """Remove one unit (one channel, or ``round_to`` channels) from one layer and name it.

        The layer is the one whose weakest channel ranks lowest (global pruning) or which has
        kept the largest fraction of its channels (per-layer pruning), among the layers not in
        ``exclude`` that are above their floor; None when there is none. The MAC search's last
        moves: a fraction of all channels can span several layers at once.
        """
        best: tuple[float, _Candidate, int, str] | None = None
        for c in self._candidates():
            name = self.names.get(c.module, "")
            keep = max(c.floor, (len(c.scores) - 1) // self.round_to * self.round_to)
            if name in exclude or keep >= len(c.scores):
                continue
            key = float(c.scores.min()) if self.global_pruning else -len(c.scores) / c.initial
            if best is None or key < best[0]:
                best = (key, c, keep, name)
        if best is None:
            return None
        _, c, keep, name = best
        idxs = torch.argsort(c.scores)[: len(c.scores) - keep].tolist()
        self.dg.get_pruning_group(c.module, c.handler, sorted(idxs)).prune()
        return name

    def channel_counts(self) -> dict[str, int]:
        """Current channel count of every prunable layer (the roots ``initial`` names)."""
        layers = dict(self.module.named_modules())
        out = {}
        for name in self.initial:
            m = layers.get(name)
            if isinstance(m, nn.Conv2d):
                out[name] = int(m.out_channels)
            elif isinstance(m, nn.Linear):
                out[name] = int(m.out_features)
        return out


def _snapshot(module: nn.Module) -> dict[str, tuple[str, int, int]]:
    out = {}
    for name, m in prunable_layers(module):
        channels = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        out[name] = (layer_kind(m), int(channels), sum(p.numel() for p in m.parameters()))
    return out


# --- recovery distillation ---------------------------------------------------------------------


def recovery_kd_loss(
    teacher: nn.Module, weight: float, temperature: float = _KD_TEMPERATURE
) -> Any:
    """A training loss: ``weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE``.

    Hinton et al.'s soft targets from the unpruned network (self-distillation): the pruned
    student re-learns the full model's dark knowledge, not only the labels, which recovers
    accuracy at high pruning ratios with the same epochs. ``T^2`` keeps the soft term's gradient
    on the label loss's scale.
    """

    return teacher_kd_loss(teacher, weight, temperature)


def _clip_grads(max_norm: float) -> Callable[[nn.Module], None]:
    def hook(module: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    return hook


# --- dynamic weighting -------------------------------------------------------------------------


def _val_inputs(ctx: StageContext, n_batches: int) -> Iterator[torch.Tensor]:
    for i, (x, _y) in enumerate(ctx.data.val_loader(batch_size=64)):
        if i >= n_batches:
            break
        yield x


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, ctx: StageContext, n_batches: int) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches (no weight change).

    Removing channels shifts every later layer's input distribution; scoring a just-pruned
    candidate with the old running statistics would measure that mismatch, not the ranking.
    """
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    device = next(iter(module.parameters())).device
    was_training = module.training
    module.train()
    loader = ctx.data.train_loader(64, seed=ctx.seed, shuffle=True)
    for i, (x, _y) in enumerate(loader):
        if i >= n_batches:
            break
        module(x.to(device))
    module.train(was_training)
    for bn, momentum in saved:
        bn.momentum = momentum


@torch.no_grad()
def _val_acc_and_loss(module: nn.Module, ctx: StageContext) -> tuple[float, float]:
    """Top-1 accuracy (percent) and mean cross-entropy on ``val``, in one pass: a candidate's
    score inside the dynamic weighting, never a reported number."""
    module.eval()
    correct, total, n = 0, 0.0, 0
    for x, y in ctx.data.val_loader():
        ctx.check_cancel()
        logits = module(x.to(ctx.device)).float()
        y = y.to(ctx.device)
        correct += int((logits.argmax(1) == y).sum())
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    return 100.0 * correct / max(n, 1), total / max(n, 1)


def weight_candidates(alpha: float, step: int) -> list[float]:
    """The weights tried at prune step ``step`` (1-based): ``alpha`` and ``alpha +- d``,
    ``d = 0.5 / 2 ** (step - 1)``, clipped to [0, 1], current weight first."""
    d = _FIRST_WEIGHT_STEP / 2 ** (step - 1)
    out = [alpha]
    for a in (alpha - d, alpha + d):
        a = min(1.0, max(0.0, a))
        if all(abs(a - b) > 1e-9 for b in out):
            out.append(a)
    return out


# --- the loop ----------------------------------------------------------------------------------


@dataclass
class PruneOutcome:
    module: nn.Module
    history: list[dict[str, float]]
    metrics: dict[str, float]


class _Search:
    """The MAC search of one network towards ``[target, target * (1 + MAC_TOLERANCE)]``.

    Coarse moves remove a further ``1 / _MAC_SEARCH_STEPS`` of the channels (cumulative, ranked
    globally, re-ranked every move) while the last one's MAC drop says the next cannot reach the
    target; from there each move removes one unit (one channel, or ``round_to`` channels) of the
    layer whose weakest channel ranks lowest. A network pruned past its target pays accuracy for
    MACs nobody asked to remove, so every move is checked once taken: one that cuts the MACs
    below the window is undone (the network before it is kept as a copy). An undone coarse move
    switches to unit moves; an undone unit move excludes its layer for the rest of this search,
    because that layer's next unit costs more MACs than are left to remove (one filter of
    LeNet-5's first conv is 14-40% of its MACs), and the next-weakest channels of the other
    layers go instead. The ranking decides the order; the budget decides how far it goes. If
    no move lands in the window, the undone move that overshot least is taken, so the target is
    still reached, and the stage says by how much it went past.

    ``rebuild(network, initial)`` makes a pruner like this one on another copy of the network.
    """

    def __init__(
        self,
        pruner: _SlimPruner,
        shape: tuple[int, int, int],
        macs_before: int,
        rebuild: Callable[[nn.Module, dict[str, int]], _SlimPruner],
    ) -> None:
        self.pruner = pruner
        self.shape = shape
        self.macs_before = macs_before
        self.rebuild = rebuild
        self.sub_steps = 0  # in units of 1 / (_MAC_SEARCH_STEPS * _FINE)

    def reached(self) -> float:
        return self.macs_before / max(count_macs(self.pruner.module, self.shape), 1)

    def _restore(self, network: nn.Module) -> None:
        self.pruner = self.rebuild(network, self.pruner.initial)

    def to_target(self, target: float, check_cancel: Callable[[], None]) -> float:
        goal = self.macs_before / target
        low = self.macs_before / (target * (1.0 + MAC_TOLERANCE))
        macs = count_macs(self.pruner.module, self.shape)
        end = _MAC_SEARCH_STEPS * _FINE
        total = max(1, sum(self.pruner.initial.values()))
        drop_per_coarse: float | None = None
        fine_only = False
        excluded: frozenset[str] = frozenset()
        # The undone move that overshot least: (its MACs, its network).
        fallback: tuple[int, nn.Module] | None = None
        while macs > goal:
            check_cancel()
            fine = fine_only or (drop_per_coarse is not None and macs - drop_per_coarse < goal)
            before = copy.deepcopy(self.pruner.module)
            name: str | None = None
            if fine:
                # One unit of one layer at a time, the weakest first.
                name = self.pruner.prune_weakest(excluded)
                if name is None:
                    break
                step = 1
            else:
                step = min(end - self.sub_steps, _FINE)
                if step <= 0:
                    fine_only = True
                    continue
                self.pruner.prune_to((self.sub_steps + step) / end)
                self.sub_steps += step
            new = count_macs(self.pruner.module, self.shape)
            if new < low:
                if fallback is None or new > fallback[0]:
                    fallback = (new, self.pruner.module)
                self._restore(before)
                if name is not None:
                    excluded |= {name}
                else:
                    self.sub_steps -= step
                fine_only = True
                continue
            if fine:
                # Later coarse sub-steps continue from the channels now gone.
                gone = total - sum(self.pruner.channel_counts().values())
                self.sub_steps = max(self.sub_steps, math.floor(end * gone / total))
            elif new < macs:
                drop_per_coarse = (macs - new) * _FINE / step
            macs = new
        if macs > goal and fallback is not None:
            macs, network = fallback
            self._restore(network)
        return self.macs_before / max(macs, 1)


def prune_and_finetune(
    ctx: StageContext,
    module: nn.Module,
    cfg: PruneSettings,
    make_importance: Callable[[float], Any],
    *,
    ratio: float,
    macs_before: int,
    teacher: nn.Module | None,
    progress: tuple[float, float],
    epoch_offset: float = 0.0,
    dynamic_weight: float | None = None,
    layer_ratios: Mapping[str, float] | None = None,
) -> PruneOutcome:
    """Prune ``module`` to the target in ``cfg.iterative_steps`` steps, fine-tuning after each.

    Each step first re-ranks channels on the current network (a fresh importance call), prunes
    to the step's point of :func:`mac_schedule` (or :func:`ratio_schedule` without a MAC
    target), then fine-tunes its share of the budget (:func:`split_batches`, total
    ``cfg.finetune_epochs`` epochs). With ``dynamic_weight`` set, ``make_importance(alpha)`` is
    tried for every weight of :func:`weight_candidates` on a copy, each copy's BatchNorm
    statistics re-estimated, and the one with the best ``val`` accuracy (then loss) is kept, its
    weight becoming the next step's centre. Among the networks that meet the target (the
    last step's, or an earlier one that overshot it), the epoch with the best ``val`` accuracy
    is returned; the test split is never looked at. With ``layer_ratios`` (layer name ->
    fraction) only the named layers are pruned, each on its own :func:`ratio_schedule`.
    """
    shape = ctx.model.input_shape
    ignored = _ignored(module, ctx.model.num_classes)
    example = example_input(ctx, module)
    steps = cfg.iterative_steps
    target = cfg.target_mac_reduction
    plan = mac_schedule(target, steps) if target is not None else ratio_schedule(ratio, steps)
    if layer_ratios is not None:
        plan = [k / steps for k in range(1, steps + 1)]  # the share of each layer's schedule

    def new_pruner(m: nn.Module, alpha: float, initial: dict[str, int] | None) -> _SlimPruner:
        return _SlimPruner(
            m,
            example_input(ctx, m),
            importance=make_importance(alpha),
            ignored=_ignored(m, ctx.model.num_classes),
            protect_inputs=_protected_inputs(m),
            global_pruning=cfg.global_pruning,
            max_layer_ratio=cfg.max_layer_ratio,
            round_to=cfg.round_to,
            initial=initial,
        )

    def rebuilder(alpha: float) -> Callable[[nn.Module, dict[str, int]], _SlimPruner]:
        return lambda m, initial: new_pruner(m, alpha, initial)

    alpha = dynamic_weight if dynamic_weight is not None else 0.0
    search = _Search(
        _SlimPruner(
            module,
            example,
            importance=make_importance(alpha),
            ignored=ignored,
            protect_inputs=_protected_inputs(module),
            global_pruning=cfg.global_pruning,
            max_layer_ratio=cfg.max_layer_ratio,
            round_to=cfg.round_to,
        ),
        shape,
        macs_before,
        rebuild=rebuilder(alpha),
    )
    if ctx.model.task == "detection":
        # The classification training loop does not apply; a detector is fine-tuned by a
        # later stage. Every step prunes, none trains.
        steps_per_epoch = 1
        shares = [0] * steps
    else:
        steps_per_epoch = len(ctx.data.train_loader(cfg.batch_size, seed=ctx.seed, shuffle=True))
        shares = split_batches(cfg.finetune_epochs * steps_per_epoch, steps)
    start, end = progress
    budget = max(1, sum(shares))
    done = 0
    loss_fn = cross_entropy_loss
    after_backward = None
    if teacher is not None and cfg.recovery_distillation > 0:
        teacher.to(ctx.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        loss_fn = recovery_kd_loss(teacher, cfg.recovery_distillation)
        after_backward = _clip_grads(_KD_MAX_GRAD_NORM)

    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    keeper = _BestOnVal()
    reached = 1.0
    for k, point in enumerate(plan, start=1):
        ctx.check_cancel()
        module.eval()
        if dynamic_weight is not None:
            tried: list[tuple[float, float, float, float, _Search]] = []
            for a in weight_candidates(alpha, k):
                m = copy.deepcopy(search.pruner.module)
                s = _Search(
                    new_pruner(m, a, search.pruner.initial),
                    shape,
                    macs_before,
                    rebuild=rebuilder(a),
                )
                s.sub_steps = search.sub_steps
                _advance(s, point, target, ctx, layer_ratios)
                m = s.pruner.module  # the search may have rebuilt it from an undo copy
                recalibrate_batchnorm(m, ctx, _BN_RECALIBRATION_BATCHES)
                acc, loss = _val_acc_and_loss(m, ctx)
                tried.append((acc, -loss, -abs(a - alpha), a, s))
                ctx.report(
                    start + (end - start) * done / budget,
                    f"step {k}/{steps}: weight {a:.3f} on |gamma| -> val acc {acc:.2f}% "
                    "before fine-tuning",
                    {},
                )
            win = max(tried, key=lambda t: t[:3])
            alpha, search = win[3], win[4]
            module = search.pruner.module
            metrics[f"step{k}_dynamic_weight"] = alpha
        else:
            _advance(search, point, target, ctx, layer_ratios)
            module = search.pruner.module  # the search may have rebuilt it from an undo copy
        reached = search.reached()
        msg = f"step {k}/{steps}: MACs {macs_before / 1e6:.1f}M -> "
        msg += f"{macs_before / reached / 1e6:.1f}M ({reached:.2f}x fewer)"
        ctx.report(start + (end - start) * done / budget, msg, {"mac_reduction": reached})
        if target is not None and reached < point and not cfg.allow_mac_shortfall:
            # Every layer is at its floor: later steps cannot do better, so fail before the
            # epochs are spent on a network the recipe rejects.
            raise MacTargetError(
                reached,
                target,
                f"every layer is at its floor (max_layer_ratio {cfg.max_layer_ratio:g}, "
                f"round_to {cfg.round_to}; the classifier and grouped convs are never pruned): "
                "raise max_layer_ratio, lower round_to or the target",
            )
        eligible = k == steps or (target is not None and reached >= target)
        n = shares[k - 1]
        if n > 0:
            epochs = max(1, n // steps_per_epoch)
            per_epoch = math.ceil(n / epochs)
            base_epoch = epoch_offset + done / steps_per_epoch

            tap = _EpochTap(
                ctx.report,
                keeper,
                module,
                label=f"step {k}/{steps} ",
                base_epoch=base_epoch,
                scale=per_epoch / steps_per_epoch,
                eligible=eligible,
            )
            step_ctx = dataclasses.replace(ctx, seed=ctx.seed + 7919 * (k - 1), report=tap)
            rows = train(
                module,
                ctx.data,
                step_ctx,
                epochs=epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                optimizer=cfg.optimizer,
                weight_decay=cfg.weight_decay,
                loss_fn=loss_fn,
                after_backward=after_backward,
                progress=(
                    start + (end - start) * done / budget,
                    start + (end - start) * (done + n) / budget,
                ),
                label="fine-tuning",
                max_batches_per_epoch=per_epoch if per_epoch < steps_per_epoch else None,
            )
            for row in rows:
                row["epoch"] = base_epoch + row["epoch"] * per_epoch / steps_per_epoch
            history += rows
            done += n
    if keeper.best is not None:
        val_acc, chosen, epoch = keeper.best
        module = chosen
        metrics["val_acc"] = val_acc
        metrics["selected_epoch"] = epoch
        ctx.report(end, f"kept the epoch with the best val accuracy ({val_acc:.2f}%)", {})
    if dynamic_weight is not None:
        metrics["dynamic_weight"] = alpha
    metrics["mac_reduction"] = macs_before / max(count_macs(module, shape), 1)
    return PruneOutcome(module=module, history=history, metrics=metrics)


class _BestOnVal:
    """The best network so far by val accuracy: (val acc, a copy of the network, epoch)."""

    def __init__(self) -> None:
        self.best: tuple[float, nn.Module, float] | None = None

    def offer(self, val_acc: float, module: nn.Module, epoch: float) -> None:
        if self.best is None or val_acc > self.best[0]:
            self.best = (val_acc, copy.deepcopy(module), epoch)


class _EpochTap:
    """A ``ctx.report`` for one step's ``train``: numbers its epochs on the stage's epoch axis
    and offers every epoch's network (evaluated on val just before the call) to the keeper."""

    def __init__(
        self,
        report: Callable[[float, str, dict[str, Any]], None],
        keeper: _BestOnVal,
        module: nn.Module,
        *,
        label: str,
        base_epoch: float,
        scale: float,
        eligible: bool,
    ) -> None:
        self.report = report
        self.keeper = keeper
        self.module = module
        self.label = label
        self.base_epoch = base_epoch
        self.scale = scale
        self.eligible = eligible

    def __call__(self, frac: float, message: str, row: dict[str, Any]) -> None:
        if "val_acc" in row and "epoch" in row:
            row = dict(row)
            row["epoch"] = self.base_epoch + float(row["epoch"]) * self.scale
            if self.eligible:
                self.keeper.offer(float(row["val_acc"]), self.module, row["epoch"])
        self.report(frac, self.label + message, row)


def _ignored(module: nn.Module, num_classes: int) -> list[nn.Module]:
    # Never remove class logits: the classifier's outputs are the task's contract. A YOLO
    # head's outputs are A * (5 + C) raw predictions per cell, the post-processing's contract.
    heads = detection_heads(module)
    if heads is not None:
        return heads
    classifier = classifier_layer(module, num_classes)
    return [classifier] if classifier is not None else []


def _protected_inputs(module: nn.Module) -> list[nn.Module]:
    """Layers whose input channels stay: a detector's heads (Torch-Pruning's ``ignored_layers``
    only keeps a layer's outputs, so the channels feeding a head would still be removed,
    Torch-Pruning issue #341). A head's weights then come out of pruning untouched."""
    return detection_heads(module) or []


def _advance(
    search: _Search,
    point: float,
    target: float | None,
    ctx: StageContext,
    layer_ratios: Mapping[str, float] | None = None,
) -> None:
    if layer_ratios is not None:
        # ``point`` is k / steps: each layer reaches 1 - (1 - r) ** (k / steps), r at the end.
        search.pruner.prune_layers({n: 1.0 - (1.0 - r) ** point for n, r in layer_ratios.items()})
    elif target is not None:
        search.to_target(point, ctx.check_cancel)
    else:
        search.pruner.prune_to(point)


# --- the method --------------------------------------------------------------------------------


@register_method(
    "channel_pruning",
    config=ChannelPruningConfig,
    summary="Remove whole channels (network slimming on BN scales, L1/L2 filter norms, or a "
    "dynamic mix of BN scales and channel independence) with Torch-Pruning's DependencyGraph, "
    "in one or several prune-and-fine-tune steps.",
    inputs=("torch",),
    tasks=("classification", "detection"),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: ChannelPruningConfig) -> StageResult:
    """Slim ``ctx.model``: optional sparsity training, physical channel removal, fine-tuning.

    On a YOLO detector the heads keep their inputs and outputs; sparsity training uses the
    detection loss, and the fine-tuning epochs are skipped (a detector is fine-tuned by a later
    stage, ``finetune``).
    """
    module = torch_module(ctx, "channel_pruning")
    module.to(ctx.device)
    detector = ctx.model.task == "detection"
    if detector:
        _check_detector(module, cfg)
    if cfg.importance in ("bn_scale", "dynamic") and not _bn_layers(module):
        raise StageScopeError(
            f"channel_pruning with importance {cfg.importance} needs BatchNorm layers; "
            "this model has none, use importance l1 or l2, or statistics_pruning"
        )
    if cfg.layer_ratios is not None:
        # Before any training: a misspelt layer name must not cost the sparsity epochs.
        layer_pruner(
            module, example_input(ctx, module), num_classes=ctx.model.num_classes
        ).check_layer_names(cfg.layer_ratios)
    teacher = copy.deepcopy(module) if cfg.recovery_distillation > 0 and not detector else None
    sparsity_epochs = cfg.sparsity_epochs if cfg.importance == "bn_scale" else 0
    if detector and cfg.finetune_epochs:
        ctx.report(
            0.0,
            "detection model: fine-tuning after the cut is skipped "
            "(fine-tune the pruned detector in a later stage)",
            {},
        )
    # A detector's pruning steps do not train: the sparsity epochs take most of the bar.
    after = 1 if detector else cfg.finetune_epochs
    split = sparsity_epochs / max(1, sparsity_epochs + after)
    history: list[dict[str, float]] = []
    if sparsity_epochs > 0 and detector:
        # SlimYOLOv3's sparsity training: the detection loss plus the L1 push on every BN scale
        # (the heads have none), so the channels the detector can spare drift to gamma ~ 0.
        history += train_detector_in_stage(
            ctx,
            module,
            "channel_pruning",
            epochs=sparsity_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            flip=cfg.flip,
            label="sparsity training",
            after_backward=l1_on_bn_scales(cfg.sparsity_lambda),
            progress_range=(0.0, split),
        )
    elif sparsity_epochs > 0:
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
    ctx.check_cancel()
    module.eval()
    ratio = cfg.ratio
    if cfg.threshold is not None:
        ratio = min(_ratio_from_threshold(module, cfg.threshold), _MAC_SEARCH_CEILING)

    def make_importance(alpha: float) -> Any:
        if cfg.importance == "dynamic":
            return DynamicImportance(
                lambda: _val_inputs(ctx, _CALIBRATION_BATCHES), alpha=alpha, seed=ctx.seed
            )
        return _importance(cfg.importance)

    result = run_pruning(
        ctx,
        module,
        cfg,
        make_importance,
        ratio=ratio,
        teacher=teacher,
        history=history,
        progress_start=split,
        dynamic_weight=cfg.dynamic_weight if cfg.importance == "dynamic" else None,
        layer_ratios=cfg.layer_ratios,
    )
    if cfg.target_mac_reduction is None and cfg.layer_ratios is None:
        result.metrics["channel_ratio"] = ratio
    return result


def layer_pruner(
    module: nn.Module,
    example: torch.Tensor,
    *,
    num_classes: int,
    importance: str = "l1",
    round_to: int = 1,
    max_layer_ratio: float = 0.99,
) -> _SlimPruner:
    """A pruner on ``module`` for per-layer work: its :meth:`~_SlimPruner.layer_names` are the
    names ``layer_ratios`` accepts, :meth:`~_SlimPruner.prune_layers` prunes some of them
    (``importance``: ``l1``, ``l2`` or ``bn_scale``). The classifier is never pruned."""
    return _SlimPruner(
        module,
        example,
        importance=_importance(importance),
        ignored=_ignored(module, num_classes),
        protect_inputs=_protected_inputs(module),
        global_pruning=False,
        max_layer_ratio=max_layer_ratio,
        round_to=round_to,
    )


def off_block_convs(module: nn.Module, block: int) -> list[str]:
    """The dense 2-d convs ONNX Runtime's x86 provider leaves off its NCHWc kernels for a
    ``block``-channel vector: input channels at least ``block`` and not a multiple of it."""
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.groups == 1
        and m.in_channels >= block
        and m.in_channels % block != 0
    ]


def _report_off_block(
    ctx: StageContext, before: Mapping[int, int], after: nn.Module, metrics: dict[str, float]
) -> None:
    """Count, per NCHWc block, the convs whose input channels leave the blocked kernels, and
    say so when the pruning made more of them (the cut then buys less time than its MACs)."""
    convs = sum(1 for m in after.modules() if isinstance(m, nn.Conv2d) and m.groups == 1)
    for block, isa in NCHWC_BLOCKS.items():
        names = off_block_convs(after, block)
        metrics[f"convs_off_block_{block}"] = float(len(names))
        added = len(names) - before[block]
        if added > 0:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            ctx.report(
                1.0,
                f"{len(names)} of {convs} convs take input channels that are not a multiple of "
                f"{block} ({shown}): on a CPU whose ONNX Runtime blocks by {block} "
                f"({isa}) they run on the plain kernels; "
                f"round_to {block} keeps them blocked",
                {},
            )


def run_pruning(
    ctx: StageContext,
    module: nn.Module,
    cfg: PruneSettings,
    make_importance: Callable[[float], Any],
    *,
    ratio: float,
    teacher: nn.Module | None,
    history: list[dict[str, float]],
    progress_start: float = 0.0,
    dynamic_weight: float | None = None,
    layer_ratios: Mapping[str, float] | None = None,
) -> StageResult:
    """Everything after the optional sparsity training: prune, fine-tune, report per layer.

    Shared by ``channel_pruning`` and ``statistics_pruning`` (which differ only in the
    importance); the metrics are those of :func:`prune_and_finetune` plus MACs and parameters
    before and after.
    """
    # Counted on the network as the stage received it (sparsity training changes no shape).
    macs_before = count_macs(module, ctx.model.input_shape)
    params_before = count_params(module)
    before = _snapshot(module)
    off_block_before = {b: len(off_block_convs(module, b)) for b in NCHWC_BLOCKS}
    epoch_offset = float(len(history))
    outcome = prune_and_finetune(
        ctx,
        module,
        cfg,
        make_importance,
        ratio=ratio,
        macs_before=macs_before,
        teacher=teacher,
        progress=(progress_start, 1.0),
        epoch_offset=epoch_offset,
        dynamic_weight=dynamic_weight,
        layer_ratios=layer_ratios,
    )
    module = outcome.module
    history += outcome.history
    macs_after = count_macs(module, ctx.model.input_shape)
    reached = macs_before / max(macs_after, 1)
    metrics: dict[str, float] = {
        "macs_before": float(macs_before),
        "macs_after": float(macs_after),
        "mac_reduction": reached,
        "params_before": float(params_before),
        "params_after": float(count_params(module)),
        "iterative_steps": float(cfg.iterative_steps),
    }
    if cfg.target_mac_reduction is not None:
        metrics["target_mac_reduction"] = cfg.target_mac_reduction
        if reached < cfg.target_mac_reduction:
            ctx.report(
                1.0,
                f"MAC target {cfg.target_mac_reduction:.2f}x not reached ({reached:.2f}x); "
                "allow_mac_shortfall accepts it",
                {},
            )
        elif reached > cfg.target_mac_reduction * (1.0 + MAC_TOLERANCE):
            ctx.report(
                1.0,
                f"MAC target {cfg.target_mac_reduction:.2f}x overshot: {reached:.2f}x fewer MACs "
                f"(no removal the layer guards allow lands within +{MAC_TOLERANCE:.0%} of it)",
                {},
            )
        else:
            ctx.report(
                1.0,
                f"{reached:.2f}x fewer MACs (target {cfg.target_mac_reduction:.2f}x, "
                f"within +{MAC_TOLERANCE:.0%})",
                {},
            )
    if history:
        metrics["val_acc"] = history[-1]["val_acc"]
    metrics.update(outcome.metrics)
    metrics["mac_reduction"] = reached
    _report_off_block(ctx, off_block_before, module, metrics)
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
    ctx.model.module = finish(module)
    return StageResult(model=ctx.model, metrics=metrics, layers=layers, history=history)


def _detector_refusal(cfg: ChannelPruningConfig, label: str) -> str | None:
    """Why channel_pruning's config cannot run on the detector ``label``, or None."""
    if cfg.importance == "dynamic":
        return (
            f"importance dynamic scores candidates by classification accuracy on val, but "
            f"{label} is a detection model; use importance bn_scale, l1 or l2"
        )
    if cfg.recovery_distillation > 0:
        return (
            f"recovery_distillation matches class soft targets, but {label} is a detection "
            "model; set it to 0"
        )
    return None


def _check_detector(module: nn.Module, cfg: ChannelPruningConfig) -> None:
    label = f"the {type(module).__name__}"
    if detection_heads(module) is None:
        raise StageScopeError(
            f"channel_pruning supports detection models of the YOLO family (whose heads it "
            f"protects); {label} is a detection model without head_convs()"
        )
    why = _detector_refusal(cfg, label)
    if why is not None:
        raise StageScopeError(f"channel_pruning: {why}")


def check_model(facts: ModelFacts, cfg: ChannelPruningConfig) -> None:
    """Refuse BatchNorm-based importances on a model without BatchNorm, per-layer ratios
    naming layers the model does not have, and on a detector anything but a YOLO with a
    data-free importance, before anything runs."""
    if facts.task == "detection":
        require_yolo_detector(facts, "channel_pruning protects only YOLO heads so far")
        why = _detector_refusal(cfg, facts.label)
        if why is not None:
            field = "importance" if cfg.importance == "dynamic" else "recovery_distillation"
            raise ConfigError(f"config.{field}", why)
    known = facts.layer_names("conv", "depthwise_conv", "linear")
    if cfg.layer_ratios and known:
        unknown = sorted(set(cfg.layer_ratios) - set(known))
        if unknown:
            raise ConfigError(
                f"config.layer_ratios.{unknown[0]}",
                f"{facts.label} has no conv or linear layer named {', '.join(map(repr, unknown))}; "
                f"its layers are: {', '.join(known)}",
            )
    if cfg.importance == "bn_scale" and facts.has_batchnorm is False:
        raise ConfigError(
            "config.importance",
            f"importance bn_scale ranks channels by their BatchNorm scales, but {facts.label} "
            "has no BatchNorm layers; use importance l1 or l2 (filter norms) instead",
        )
    if cfg.importance == "dynamic" and facts.has_batchnorm is False:
        raise ConfigError(
            "config.importance",
            f"importance dynamic mixes BatchNorm scales with channel independence, but "
            f"{facts.label} has no BatchNorm layers; use importance l1 or l2 (filter norms), "
            "or the statistics_pruning method (filter mean and variance) instead",
        )
