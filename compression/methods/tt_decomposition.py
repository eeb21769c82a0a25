"""Adaptive Tensor-Train decomposition of 1x1 convolutions and linear layers (seed 001).

Each eligible layer's ``(O, I)`` weight is factorised into 2-4 TT cores (see
:mod:`compression.tensor_train`). The thesis's two points are both here:

* **adaptive ranks**: every layer gets its own ranks from a budget instead of one hand-tuned
  rank: the delta-truncated TT-SVD keeps, bond by bond, the fewest singular values whose
  discarded energy stays within a relative reconstruction error (``rank_criterion: error``), or
  the budget itself is searched per layer by bisection until the model's measured validation
  accuracy with that layer decomposed stays within ``max_accuracy_drop`` (``accuracy``). The
  number of modes is chosen the same way: the one with the fewest parameters wins.
* **contraction order**: the factorised layer only runs faster when ``x, G_1..G_d`` is
  contracted in a good order. For each layer and its real input (batch 1, its actual H x W) the
  order is found with opt_einsum's dynamic programming against FLOPs and compared with
  opt_einsum's greedy order and with the dense layer. When no order beats the dense layer the
  cores are multiplied back into a dense weight of the same shape (still low-rank, so it keeps
  the approximation, but it costs what the original cost) and the report says so.

Then the model is fine-tuned through the shared loop. The TT layer's forward is plain
reshape/permute/matmul, so the ONNX export has no ``Einsum`` node and ``ptq_int8`` still works.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from compression.errors import ConfigError
from compression.methods._common import (
    classifier_layer,
    example_input,
    finish,
    history_metrics,
    torch_module,
)
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.structure import replace_module
from compression.tensor_train import (
    LayerKind,
    TTLayer,
    balance_cores,
    left_to_right_path,
    max_ranks,
    mode_pairs,
    plan_order,
    ranks_for_error,
    relative_error,
    search_error_budget,
    tt_params,
    tt_svd,
    tt_to_matrix,
)
from compression.training import evaluate, train

if TYPE_CHECKING:
    from compression.model_facts import ModelFacts

# Error budgets the accuracy criterion bisects over (ascending).
ERROR_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class TTDecompositionConfig:
    rank_criterion: Literal["error", "accuracy"] = param(
        "error",
        help="choose each layer's ranks by reconstruction error, or by measured val accuracy",
    )
    max_error: float = param(
        0.5,
        help="error criterion: largest relative Frobenius error of each layer's TT weight",
        gt=0.0,
        lt=1.0,
    )
    max_accuracy_drop: float = param(
        1.0,
        help="accuracy criterion: largest val accuracy drop (points) one decomposed layer may cost",
        ge=0.0,
        le=100.0,
    )
    search_images: int = param(
        500, help="accuracy criterion: validation images per measurement", ge=10, le=100000
    )
    rank: int | None = param(
        None,
        help="one fixed TT rank on every bond instead of the search (empty: search)",
        ge=1,
        le=65536,
    )
    modes: int = param(
        0, help="cores per layer, 2-4; 0 tries 2, 3 and 4 and keeps the smallest", ge=0, le=4
    )
    layers: str = param(
        "",
        help="comma-separated layer names to decompose; empty: every 1x1 conv and linear layer",
    )
    include_classifier: bool = param(
        False, help="also decompose the final classifier (off: the logits layer stays dense)"
    )
    min_params: int = param(
        1024, help="leave layers with fewer weights than this dense", ge=0, le=10**9
    )
    dense_fallback: bool = param(
        True,
        help="multiply a layer's cores back into a dense weight when no order beats its FLOPs",
    )
    balance_cores: bool = param(
        True,
        help="rescale each layer's cores to equal norms before fine-tuning (same product)",
    )
    finetune_epochs: int = param(2, help="fine-tuning epochs after decomposing", ge=0, le=1000)
    lr: float = param(0.01, help="peak learning rate of the fine-tuning", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(1e-4, help="weight decay", ge=0.0, le=1.0)

    def validate(self) -> None:
        if self.modes == 1:
            raise ConfigError(
                "config.modes",
                "one core is the dense matrix itself; use 2, 3 or 4 cores, or 0 to choose",
            )
        if self.rank is not None and self.rank < 1:
            raise ConfigError(
                "config.rank",
                f"a TT rank of {self.rank} would disconnect the layer's inputs from its "
                "outputs; use 1 or more, or leave it empty to search",
            )

    def layer_names(self) -> list[str]:
        return [n.strip() for n in self.layers.split(",") if n.strip()]


@dataclass
class _Decision:
    """What happened to one layer, for the report."""

    name: str
    kind: LayerKind
    params_before: int
    params_after: int | None = None
    action: str = "skipped"  # "tt", "recontracted" or "skipped"
    reason: str = ""
    out_modes: tuple[int, ...] = ()
    in_modes: tuple[int, ...] = ()
    ranks: tuple[int, ...] = ()
    rel_error: float | None = None
    spatial: int | None = None
    flops_dense: int | None = None
    flops_greedy: int | None = None
    flops_dp: int | None = None
    error_budget: float | None = None
    measurements: int = 0

    def row(self) -> dict[str, Any]:
        """One row of ``extras.tensor_train.layers`` in report.json (docs/report-schema.md)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "action": self.action,
            "reason": self.reason or None,
            "out_modes": list(self.out_modes) or None,
            "in_modes": list(self.in_modes) or None,
            "ranks": list(self.ranks) or None,
            "rel_error": self.rel_error,
            "error_budget": self.error_budget,
            "input_hw": self.spatial,
            "flops_dense": self.flops_dense,
            "flops_greedy": self.flops_greedy,
            "flops_dp": self.flops_dp,
        }


def _kind(m: nn.Module) -> LayerKind:
    return "conv" if isinstance(m, nn.Conv2d) else "linear"


def _ineligible(m: nn.Module) -> str | None:
    """Why a layer cannot be a TT matrix, or None when it can."""
    if isinstance(m, nn.Linear):
        return None
    if not isinstance(m, nn.Conv2d):
        return f"a {type(m).__name__} is neither a conv nor a linear layer"
    if m.groups > 1:
        what = "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
        return (
            f"{what} conv (groups={m.groups}): TT factorises one (out, in) channel matrix, "
            "which a grouped conv does not have"
        )
    if tuple(m.kernel_size) != (1, 1):
        k = "x".join(str(v) for v in m.kernel_size)
        return f"{k} conv: TT here covers 1x1 convs only (use tucker_decomposition for kxk)"
    if tuple(m.padding) != (0, 0) or m.padding_mode != "zeros":
        return "1x1 conv with padding: its border outputs are not a channel matrix product"
    if tuple(m.dilation) != (1, 1) or m.stride[0] != m.stride[1]:
        return "1x1 conv with an unequal stride or a dilation"
    return None


def _weight_matrix(m: nn.Conv2d | nn.Linear) -> np.ndarray:
    w = m.weight.detach().to("cpu", torch.float32)
    return w.reshape(w.shape[0], -1).numpy()


def _out_hw(module: nn.Module, ctx: StageContext, names: list[str]) -> dict[str, int]:
    """Each named layer's output pixels (H*W) for one input of the model's real size."""
    found: dict[str, int] = {}
    handles = []
    mods = dict(module.named_modules())
    for n in names:

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor, n: str = n) -> None:
            found[n] = int(out.shape[2] * out.shape[3]) if out.dim() == 4 else 1

        handles.append(mods[n].register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(example_input(ctx, module))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return found


class _Evaluator:
    """Validation accuracy of the model with one layer swapped, on a fixed image subset."""

    def __init__(self, module: nn.Module, ctx: StageContext, images: int) -> None:
        self.module = module
        self.ctx = ctx
        data = ctx.data.subset(val=images, seed=ctx.seed)
        self.loader = data.val_loader(batch_size=256)
        self.base = evaluate(module, self.loader, ctx.device, check_cancel=ctx.check_cancel)

    def with_layer(self, name: str, layer: nn.Module) -> float:
        original = self.module.get_submodule(name)
        self.module.set_submodule(name, layer.to(self.ctx.device))
        try:
            return evaluate(self.module, self.loader, self.ctx.device)
        finally:
            self.module.set_submodule(name, original)


def _candidates(
    module: nn.Module, cfg: TTDecompositionConfig, num_classes: int
) -> tuple[list[tuple[str, nn.Conv2d | nn.Linear]], list[_Decision]]:
    """Layers to try and the listed skips of layers the user named but TT cannot take."""
    mods = dict(module.named_modules())
    named = cfg.layer_names()
    classifier = classifier_layer(module, num_classes)
    skips: list[_Decision] = []
    chosen: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    if named:
        missing = [n for n in named if n not in mods]
        if missing:
            raise ConfigError(
                "config.layers",
                f"no layer named {', '.join(repr(n) for n in missing[:5])} in this model",
            )
        for n in named:
            m = mods[n]
            why = _ineligible(m)
            if why is not None:
                params = sum(p.numel() for p in m.parameters(recurse=False))
                kind: LayerKind = "conv" if isinstance(m, nn.Conv2d) else "linear"
                skips.append(_Decision(n, kind, params, params, reason=why))
            else:
                assert isinstance(m, (nn.Conv2d, nn.Linear))
                chosen.append((n, m))
        return chosen, skips
    for n, m in module.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or _ineligible(m) is not None:
            continue
        if m is classifier and not cfg.include_classifier:
            continue
        chosen.append((n, m))
    return chosen, skips


def _mode_options(
    cfg: TTDecompositionConfig, out_f: int, in_f: int
) -> list[tuple[tuple[int, ...], ...]]:
    ds = [cfg.modes] if cfg.modes else [2, 3, 4]
    out = []
    for d in ds:
        pairs = mode_pairs(out_f, in_f, d)
        if pairs is not None:
            out.append(pairs)
    return out


def _dp_not_faster(
    kind: LayerKind, out_modes: Any, in_modes: Any, ranks: list[int], pixels: int
) -> bool:
    plan = plan_order(kind, out_modes, in_modes, ranks, spatial=pixels)
    return plan.dp_flops >= plan.dense_flops


def _choose(
    name: str,
    m: nn.Conv2d | nn.Linear,
    cfg: TTDecompositionConfig,
    evaluator: _Evaluator | None,
    pixels: int,
) -> _Decision:
    """Modes and ranks for one layer (no module swapped yet)."""
    w = _weight_matrix(m)
    out_f, in_f = w.shape
    dense = out_f * in_f
    dec = _Decision(name, _kind(m), params_before=sum(p.numel() for p in m.parameters()))
    options = _mode_options(cfg, out_f, in_f)
    if not options:
        dec.reason = (
            f"{out_f}x{in_f} cannot be split into {cfg.modes or '2-4'} paired modes "
            "without a core that maps one channel to one"
        )
        return dec
    best: tuple[tuple[bool, int], Any, Any, list[int], float] | None = None
    too_large: list[str] = []
    for out_modes, in_modes in options:
        limits = max_ranks(out_modes, in_modes)
        if cfg.rank is not None:
            if any(cfg.rank > lim for lim in limits):
                too_large.append(
                    f"{'x'.join(map(str, out_modes))} / {'x'.join(map(str, in_modes))} "
                    f"allows at most {limits}"
                )
                continue
            ranks = [cfg.rank] * len(limits)
            budget = float("nan")
        elif cfg.rank_criterion == "error":
            ranks, _ = ranks_for_error(w, out_modes, in_modes, cfg.max_error)
            budget = cfg.max_error
        else:
            assert evaluator is not None
            floor = evaluator.base - cfg.max_accuracy_drop

            def accept(
                eps: float,
                out_modes: Any = out_modes,
                in_modes: Any = in_modes,
                floor: float = floor,
            ) -> bool:
                r, _ = ranks_for_error(w, out_modes, in_modes, eps)
                trial = TTLayer.from_cores(
                    dec.kind,
                    tt_svd(w, out_modes, in_modes, r),
                    left_to_right_path(len(out_modes)),
                    bias=m.bias,
                    stride=int(m.stride[0]) if isinstance(m, nn.Conv2d) else 1,
                )
                return evaluator.with_layer(name, trial) >= floor

            found, calls = search_error_budget(ERROR_LEVELS, accept)
            dec.measurements += calls
            if found is None:
                continue
            budget = found
            ranks, _ = ranks_for_error(w, out_modes, in_modes, found)
        params = tt_params(out_modes, in_modes, ranks)
        # With the dense fallback on, a split whose best order beats the dense layer's FLOPs
        # is preferred to a smaller one that would be multiplied back (and so save nothing).
        slower = cfg.dense_fallback and _dp_not_faster(dec.kind, out_modes, in_modes, ranks, pixels)
        key = (slower, params)
        if best is None or key < best[0]:
            best = (key, out_modes, in_modes, ranks, budget)
    if best is None:
        if too_large:
            dec.reason = f"rank {cfg.rank} is larger than this layer allows: " + "; ".join(
                too_large
            )
        else:
            dec.reason = (
                f"even a {ERROR_LEVELS[0]} relative error costs more than "
                f"{cfg.max_accuracy_drop} points of val accuracy"
            )
        return dec
    (_, params), out_modes, in_modes, ranks, budget = best
    dec.out_modes, dec.in_modes, dec.ranks = tuple(out_modes), tuple(in_modes), tuple(ranks)
    dec.error_budget = None if budget != budget else budget
    if params >= dense:
        dec.reason = f"the TT cores would hold {params} weights, the dense layer {dense}"
        dec.out_modes, dec.in_modes, dec.ranks = (), (), ()
        return dec
    dec.action = "tt"
    return dec


def _apply(
    root: nn.Module, name: str, m: nn.Conv2d | nn.Linear, dec: _Decision, cfg: TTDecompositionConfig
) -> None:
    """Decompose, plan the order, and swap the layer in (or recontract it)."""
    w = _weight_matrix(m)
    cores = tt_svd(w, dec.out_modes, dec.in_modes, dec.ranks)
    dec.rel_error = relative_error(w, cores)
    plan = plan_order(dec.kind, dec.out_modes, dec.in_modes, dec.ranks, spatial=dec.spatial or 1)
    dec.flops_dense, dec.flops_greedy, dec.flops_dp = (
        plan.dense_flops,
        plan.greedy_flops,
        plan.dp_flops,
    )
    stride = int(m.stride[0]) if isinstance(m, nn.Conv2d) else 1
    if cfg.dense_fallback and plan.dp_flops >= plan.dense_flops:
        dense = copy.deepcopy(m)
        with torch.no_grad():
            approx = torch.from_numpy(tt_to_matrix(cores)).to(dense.weight.dtype)
            dense.weight.copy_(approx.reshape(dense.weight.shape).to(dense.weight.device))
        replace_module(root, name, dense)
        dec.action = "recontracted"
        dec.params_after = dec.params_before
        dec.reason = (
            f"no contraction order beats the dense layer ({plan.dp_flops} DP FLOPs vs "
            f"{plan.dense_flops} dense at {dec.spatial} pixels): cores multiplied back into "
            "one dense weight"
        )
        return
    if cfg.balance_cores:
        cores = balance_cores(cores)
    layer = TTLayer.from_cores(dec.kind, cores, plan.dp_path, bias=m.bias, stride=stride)
    layer.to(m.weight.device)
    replace_module(root, name, layer)
    dec.params_after = sum(p.numel() for p in layer.parameters())


@register_method(
    "tt_decomposition",
    config=TTDecompositionConfig,
    summary=(
        "Tensor-Train 1x1 convs and linear layers with per-layer adaptive ranks and a "
        "DP-optimal contraction order, then fine-tune."
    ),
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),
)
def run(ctx: StageContext, cfg: TTDecompositionConfig) -> StageResult:
    """Decompose the eligible layers of ``ctx.model`` and fine-tune; skips are listed."""
    module = torch_module(ctx, "tt_decomposition")
    module.to(ctx.device)
    chosen, decisions = _candidates(module, cfg, ctx.model.num_classes)
    pixels = _out_hw(module, ctx, [n for n, _ in chosen])
    evaluator = (
        _Evaluator(module, ctx, cfg.search_images)
        if cfg.rank_criterion == "accuracy" and cfg.rank is None
        else None
    )
    total = max(len(chosen), 1)
    to_apply: list[tuple[str, nn.Conv2d | nn.Linear, _Decision]] = []
    for k, (name, m) in enumerate(chosen):
        ctx.check_cancel()
        ctx.report(0.5 * k / total, f"TT: {name}", {})
        params = sum(p.numel() for p in m.parameters())
        if m.weight.numel() < cfg.min_params:
            decisions.append(
                _Decision(
                    name,
                    _kind(m),
                    params,
                    params,
                    reason=f"{m.weight.numel()} weights, below min_params {cfg.min_params}",
                )
            )
            continue
        try:
            dec = _choose(name, m, cfg, evaluator, pixels.get(name, 1))
            dec.spatial = pixels.get(name, 1)
        except np.linalg.LinAlgError as exc:
            dec = _Decision(name, _kind(m), params, reason=f"the SVD did not converge ({exc})")
        decisions.append(dec)
        if dec.action == "tt":
            to_apply.append((name, m, dec))
    # Swap only once every layer is chosen: the accuracy criterion measures each layer against
    # the dense model, not against a model whose earlier layers are already factorised.
    for name, m, dec in to_apply:
        try:
            _apply(module, name, m, dec, cfg)
        except np.linalg.LinAlgError as exc:
            dec.action, dec.reason = "skipped", f"the SVD did not converge ({exc})"
    for dec in decisions:
        if dec.action == "skipped":
            dec.params_after = dec.params_before

    history = train(
        module,
        ctx.data,
        ctx,
        epochs=cfg.finetune_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        progress=(0.5, 1.0),
        label="TT fine-tuning",
    )
    ctx.model.module = finish(module)
    return StageResult(
        model=ctx.model,
        metrics={**_summary(decisions), **history_metrics(history)},
        layers=[_layer_change(d) for d in decisions],
        history=history,
        extras={"tensor_train": {"layers": [d.row() for d in decisions]}},
    )


def _layer_change(dec: _Decision) -> LayerChange:
    return LayerChange(
        name=dec.name,
        kind=dec.kind,
        params_before=dec.params_before,
        params_after=dec.params_after,
    )


def _summary(decisions: list[_Decision]) -> dict[str, float]:
    tt = [d for d in decisions if d.action == "tt"]
    before = sum(d.params_before for d in decisions)
    after = sum(d.params_after or d.params_before for d in decisions)
    out: dict[str, float] = {
        "tt_layers": float(len(tt)),
        "recontracted_layers": float(sum(d.action == "recontracted" for d in decisions)),
        "skipped_layers": float(sum(d.action == "skipped" for d in decisions)),
        "layer_params_before": float(before),
        "layer_params_after": float(after),
    }
    if tt:
        out["tt_flops_dense"] = float(sum(d.flops_dense or 0 for d in tt))
        out["tt_flops_greedy"] = float(sum(d.flops_greedy or 0 for d in tt))
        out["tt_flops_dp"] = float(sum(d.flops_dp or 0 for d in tt))
        out["tt_max_rel_error"] = max(d.rel_error or 0.0 for d in tt)
        out["accuracy_measurements"] = float(sum(d.measurements for d in decisions))
    return out


def check_model(facts: ModelFacts, cfg: TTDecompositionConfig) -> None:
    """Refuse an ONNX model and names that are not in the model, before anything runs."""
    if facts.format == "onnx":
        raise ConfigError(
            "method",
            "tt_decomposition factorises torch weights; an ONNX model has none to train. "
            "Upload the torch checkpoint, or put tt_decomposition before ptq_int8",
        )
    known = set(facts.layer_names())
    if known:
        missing = [n for n in cfg.layer_names() if n not in known]
        if missing:
            raise ConfigError(
                "config.layers",
                f"{facts.label} has no conv or linear layer named "
                f"{', '.join(repr(n) for n in missing[:5])}",
            )
