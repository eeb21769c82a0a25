"""Trained quantization by weight sharing: per-layer k-means over the non-zero weights.

The second step of Deep Compression (Han, Mao & Dally 2016, seed 004): the surviving weights of
each conv and linear layer are clustered into ``2**bits`` shared values (a codebook), every
weight is replaced by its centroid, and the centroids are then fine-tuned: the gradient of each
shared value is the sum of the gradients of the weights that share it, and the assignments stay
fixed. Pruned weights (exact zeros) are never clustered and stay exactly zero, so the layer can
be stored as a codebook, ``bits``-wide indices and the sparse positions (see ``weight_coding``).

The result is a plain module: each conv/linear weight holds at most ``2**bits`` distinct
non-zero values, so it exports, checkpoints and measures like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from compression.errors import ConfigError
from compression.methods._common import finish, history_metrics, prunable_layers, torch_module
from compression.model_facts import CONV_KINDS, LINEAR_KIND, ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult
from compression.training import train

InitName = Literal["linear", "density", "random"]


@dataclass(frozen=True)
class WeightSharingConfig:
    conv_bits: int = param(
        8, help="bits per shared weight of conv layers: at most 2**bits centroids", ge=1, le=8
    )
    fc_bits: int = param(
        5, help="bits per shared weight of linear layers: at most 2**bits centroids", ge=1, le=8
    )
    init: Literal["linear", "density", "random"] = param(
        "linear",
        help="centroid initialisation: linear over [min, max] (the paper's), density (CDF "
        "quantiles) or random (Forgy)",
    )
    max_iter: int = param(100, help="k-means iterations per layer at most", ge=1, le=1000)
    finetune_epochs: int = param(
        2, help="centroid fine-tuning epochs (assignments fixed); 0 skips it", ge=0, le=1000
    )
    lr: float = param(1e-4, help="learning rate of the centroid fine-tuning", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param(
        "adam",
        help="optimizer of the centroid fine-tuning (the update of a centroid is "
        "driven by the summed gradient of its weights)",
    )


@dataclass
class SharedLayer:
    """One layer's clustering: its centroids and which centroid each non-zero weight uses."""

    name: str
    kind: str
    bits: int
    mask: torch.Tensor  # bool, weight shape: the non-zero weights
    assign: torch.Tensor  # int64, one per True in mask (flattened order)
    centroids: torch.Tensor  # float32, (k,)

    @property
    def clusters(self) -> int:
        return int(self.centroids.numel())


def init_centroids(values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """``k`` starting centroids for 1-D ``values`` (sorted ascending, duplicates removed).

    Linear spaces them evenly between the smallest and the largest weight, which the paper found
    best: it keeps a few centroids on the rare large weights that matter most. Density places
    them at evenly spaced quantiles; random picks ``k`` of the weights.
    """
    if init == "linear":
        c = np.linspace(float(values.min()), float(values.max()), k)
    elif init == "density":
        c = np.quantile(values, (np.arange(k) + 0.5) / k)
    elif init == "random":
        rng = np.random.default_rng(seed)
        c = rng.choice(values, size=k, replace=False)
    else:  # pragma: no cover - the config's Literal refuses it first
        raise ValueError(f"unknown init {init!r}")
    return np.unique(c.astype(np.float64))


def cluster_layer(
    weight: torch.Tensor, bits: int, init: str, *, seed: int, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means over the non-zero entries of ``weight``.

    Returns ``(mask, assign, centroids)``; zeros are left out of the clustering, so they stay
    zero and cost no codebook entry.
    """
    from sklearn.cluster import KMeans

    w = weight.detach().to("cpu", torch.float32)
    mask = w != 0
    values = w[mask].numpy().astype(np.float64)
    if values.size == 0:
        return mask, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
    distinct = np.unique(values)
    k = min(2**bits, distinct.size)
    if k == distinct.size:
        # Already at most 2**bits values: each is its own centroid (k-means would find the same).
        centroids = distinct
    else:
        start = init_centroids(distinct if init == "random" else values, k, init, seed)
        km = KMeans(n_clusters=start.size, init=start.reshape(-1, 1), n_init=1, max_iter=max_iter)
        km.fit(values.reshape(-1, 1))
        centroids = np.sort(km.cluster_centers_.reshape(-1))
        # A centroid that k-means emptied or that lands exactly on 0 would be merged or read as
        # pruned; drop duplicates and keep the ones that are used.
        centroids = np.unique(centroids[centroids != 0.0])
    c32 = np.sort(centroids.astype(np.float32))
    # Nearest centroid in 1-D: the midpoints between sorted centroids split the line. (An
    # n x k distance matrix would need gigabytes for a dense VGG layer.)
    assign = np.searchsorted((c32[1:] + c32[:-1]) / 2, values.astype(np.float32))
    used = np.unique(assign)
    if used.size < c32.size:
        remap = np.full(c32.size, -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        c32 = c32[used]
        assign = remap[assign]
    return mask, torch.from_numpy(assign.astype(np.int64)), torch.from_numpy(c32)


def distinct_nonzero(weight: torch.Tensor) -> int:
    """How many distinct non-zero values a weight tensor holds."""
    w = weight.detach().to("cpu").flatten()
    return int(torch.unique(w[w != 0]).numel())


@register_method(
    "weight_sharing",
    config=WeightSharingConfig,
    summary="Cluster each layer's non-zero weights with k-means into 2^bits shared values, "
    "then fine-tune the shared values (Deep Compression's trained quantization).",
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),  # defined at the end of the file
)
def run(ctx: StageContext, cfg: WeightSharingConfig) -> StageResult:
    """Share the weights of every conv and linear layer of ``ctx.model`` and fine-tune them."""
    module = torch_module(ctx, "weight_sharing")
    module.to("cpu")
    layers = prunable_layers(module)
    if not layers:
        raise ConfigError("config", "the model has no conv or linear layers to share weights in")
    shared: list[SharedLayer] = []
    weights: dict[str, torch.Tensor] = {}
    for i, (name, m) in enumerate(layers):
        ctx.check_cancel()
        kind = "conv" if isinstance(m, nn.Conv2d) else "fc"
        bits = cfg.conv_bits if kind == "conv" else cfg.fc_bits
        mask, assign, centroids = cluster_layer(
            m.weight, bits, cfg.init, seed=ctx.seed + i, max_iter=cfg.max_iter
        )
        shared.append(SharedLayer(name, kind, bits, mask, assign, centroids))
        weights[name] = m.weight
        ctx.report(
            0.2 * (i + 1) / len(layers),
            f"k-means on {name}: {centroids.numel()} clusters over {int(mask.sum())} weights",
            {},
        )

    def write_shared() -> None:
        """Set every weight to its centroid and every pruned one to exactly zero."""
        with torch.no_grad():
            for s in shared:
                w = weights[s.name]
                full = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
                full[s.mask.flatten().to(w.device)] = s.centroids.to(w.device, w.dtype)[
                    s.assign.to(w.device)
                ]
                w.copy_(full.view_as(w))

    write_shared()
    module.to(ctx.device)
    for s in shared:
        s.mask = s.mask.to(ctx.device)
        s.assign = s.assign.to(ctx.device)
        s.centroids = s.centroids.to(ctx.device)
    flat_masks = [s.mask.flatten() for s in shared]

    def group_gradients(_: nn.Module) -> None:
        # Each shared value's gradient is the sum over the weights that use it; every weight in
        # the cluster gets that sum, so the optimizer moves them together (identical state in,
        # identical update out) and the pruned positions get none.
        for s, fm in zip(shared, flat_masks, strict=True):
            w = weights[s.name]
            if w.grad is None:
                continue
            g = w.grad.flatten()
            summed = torch.zeros(s.clusters, dtype=g.dtype, device=g.device)
            summed.index_add_(0, s.assign, g[fm])
            out = torch.zeros_like(g)
            out[fm] = summed[s.assign]
            w.grad.copy_(out.view_as(w.grad))

    def resync(_: nn.Module) -> None:
        # Read each centroid back from the weights (they moved together) and rewrite them all,
        # so float rounding can never split a cluster and pruned weights stay exactly zero.
        with torch.no_grad():
            for s, fm in zip(shared, flat_masks, strict=True):
                vals = weights[s.name].flatten()[fm]
                sums = torch.zeros(s.clusters, dtype=vals.dtype, device=vals.device)
                counts = torch.zeros(s.clusters, dtype=vals.dtype, device=vals.device)
                sums.index_add_(0, s.assign, vals)
                counts.index_add_(0, s.assign, torch.ones_like(vals))
                s.centroids = sums / counts.clamp(min=1)
            write_shared()

    history = train(
        module,
        ctx.data,
        ctx,
        epochs=cfg.finetune_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=0.0,  # decay would pull the shared values towards zero, not train them
        after_backward=group_gradients,
        after_step=resync,
        progress=(0.2, 1.0),
        label="centroid fine-tuning",
    )
    resync(module)

    changes: list[LayerChange] = []
    metrics: dict[str, float] = {}
    total_nz = 0
    total_bits = 0.0
    for s in shared:
        w = weights[s.name]
        nz = int(s.mask.sum())
        total_nz += nz
        total_bits += nz * s.bits
        changes.append(
            LayerChange(
                name=s.name,
                kind="conv" if s.kind == "conv" else "linear",
                params_before=nz,
                params_after=nz,
                sparsity_before=1.0 - nz / max(w.numel(), 1),
                sparsity_after=1.0 - nz / max(w.numel(), 1),
            )
        )
        metrics[f"clusters.{s.name}"] = float(distinct_nonzero(w))
        metrics[f"bits.{s.name}"] = float(s.bits)
    metrics["layers_shared"] = float(len(shared))
    metrics["mean_bits"] = total_bits / max(total_nz, 1)
    metrics["nonzero_params"] = float(total_nz)
    metrics.update(history_metrics(history))
    ctx.model.module = finish(module)
    return StageResult(model=ctx.model, metrics=metrics, layers=changes, history=history)


def check_model(facts: ModelFacts, cfg: WeightSharingConfig) -> None:
    """Refuse a model that has no conv or linear weights to share, before anything runs."""
    if facts.layers and not any(layer.kind in CONV_KINDS | {LINEAR_KIND} for layer in facts.layers):
        raise ConfigError(
            "config",
            f"weight_sharing clusters conv and linear weights, but {facts.label} has none",
        )
