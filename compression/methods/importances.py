"""Channel importances written as Torch-Pruning plug-ins, so every EdgeSlim pruner ranks with them.

A Torch-Pruning importance is a callable ``importance(group) -> scores``: ``group`` is one
coupled set of layers (a conv's output channels, its BatchNorm, the next layers' input
channels, every residual branch that adds onto them) and ``scores`` has one entry per channel of
the group's root, larger = keep. Because the two classes here follow that contract (and reduce
over a group like ``tp.importance.GroupMagnitudeImportance``: every layer of the group that has
a score contributes, and the scores are averaged per root channel), channel pruning's global
ranking, ``round_to`` and layer-collapse floor work with them exactly as with L1 or BN scales.

* :class:`DynamicImportance` (seed 003's "dynamic weighting"): ``alpha * gamma_hat + (1 - alpha)
  * independence_hat``, the normalised |BN gamma| and a channel-independence score measured on
  ``val`` batches (how much of a channel's feature map the other channels of its layer cannot
  explain). ``alpha`` is set by the pruner between iterations.
* :class:`StatisticsImportance` (seed 002): the mean and variance of every filter's weights,
  2-means clustered per layer into weak and strong filters; the score says which cluster a
  filter belongs to and how firmly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_CONV_OUT = tp.prune_conv_out_channels
_CONV_IN = tp.prune_conv_in_channels
_BN_OUT = tp.prune_batchnorm_out_channels

# Rows (batch x positions) of one feature map that go into a layer's channel covariance per
# batch; a random subset of positions is as good for a C x C covariance and keeps the cost flat.
_MAX_ROWS_PER_BATCH = 8192
# Ridge of the independence regression on the channels' correlation matrix: large enough that a
# channel copied exactly (a singular matrix) stays solvable, small enough that such a copy still
# scores ~0 (about sqrt(2 * ridge) of its spread).
_RIDGE = 1e-4


def _reduce(
    size: int, parts: list[tuple[torch.Tensor, list[int]]], device: torch.device | None = None
) -> torch.Tensor | None:
    """Average per-layer scores onto the group's root channels (Torch-Pruning's ``mean``)."""
    if not parts:
        return None
    out = torch.zeros(size, dtype=torch.float64)
    count = torch.zeros(size, dtype=torch.float64)
    for scores, root_idxs in parts:
        idx = torch.as_tensor(root_idxs, dtype=torch.int64)
        out.scatter_add_(0, idx, scores.detach().double().cpu())
        count.scatter_add_(0, idx, torch.ones(len(root_idxs), dtype=torch.float64))
    return (out / count.clamp_min(1.0)).float()


def _mean_normalise(x: torch.Tensor) -> torch.Tensor:
    """Divide by the group's mean (Torch-Pruning's default ``normalizer="mean"``).

    It makes scores of layers with different sizes and scales comparable, so one global
    threshold can rank channels across the whole network.
    """
    m = x.mean()
    return x / m if float(m) > 0 else torch.zeros_like(x)


def _root_size(group: Any) -> int:
    return len(group[0][1])


def _valid_root_idxs(group: Any, i: int) -> list[int] | None:
    root = list(group[i].root_idxs)
    return None if any(r is None for r in root) else root


# --- independence ------------------------------------------------------------------------------


class _ChannelCovariance:
    """Running first and second moments of one feature map's channels (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor, generator: torch.Generator) -> None:
        c = x.shape[1]
        rows = x.detach().transpose(0, 1).reshape(c, -1).t()  # (N*H*W, C)
        if rows.shape[0] > _MAX_ROWS_PER_BATCH:
            pick = torch.randperm(rows.shape[0], generator=generator)[:_MAX_ROWS_PER_BATCH]
            rows = rows[pick.to(rows.device)]
        rows = rows.double()
        s1, s2 = rows.sum(0), rows.t() @ rows
        if self.s1 is None or self.s2 is None or self.s1.shape[0] != c:
            self.n, self.s1, self.s2 = 0, torch.zeros_like(s1), torch.zeros_like(s2)
        self.n += rows.shape[0]
        self.s1 += s1
        self.s2 += s2

    def independence(self) -> torch.Tensor:
        """Per channel: the standard deviation of what a ridge regression on the others leaves.

        On the correlation matrix ``R`` (channels standardised, so one ridge ``lam`` suits
        every layer and every channel's scale), ``1 / ((R + lam I)^-1)_cc - lam`` is the
        fraction of channel ``c``'s variance that regressing it on every other channel of the
        layer cannot explain (``1 - R^2``, the Schur complement). Times the channel's standard
        deviation it is the residual's spread: ~0 for a channel that is a linear combination of
        others and for a dead (constant) channel, the channel's own spread for one carrying
        information no other channel has.
        """
        assert self.s1 is not None and self.s2 is not None and self.n > 1
        mean = self.s1 / self.n
        cov = self.s2 / self.n - torch.outer(mean, mean)
        std = cov.diagonal().clamp_min(0.0).sqrt()
        live = std > 1e-12 * float(std.max().clamp_min(1e-30))
        safe = torch.where(live, std, torch.ones_like(std))
        corr = cov / torch.outer(safe, safe)
        corr = torch.where(torch.outer(live, live), corr, torch.zeros_like(corr))
        corr.fill_diagonal_(1.0)
        eye = torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
        inv = torch.linalg.pinv(corr + _RIDGE * eye, hermitian=True)
        unexplained = (1.0 / inv.diagonal().clamp_min(1e-30) - _RIDGE).clamp(0.0, 1.0)
        return (torch.where(live, std, torch.zeros_like(std)) * unexplained.sqrt()).float().cpu()


def channel_independence(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    layers: Iterable[nn.Module] | None = None,
    *,
    seed: int = 0,
) -> dict[nn.Module, dict[str, torch.Tensor]]:
    """Independence scores of the feature maps around every conv and BatchNorm of ``module``.

    For each ``nn.Conv2d`` it records its *input* (what it reads from the previous layer, after
    BN and activation), for each BatchNorm its *output*; the result maps a layer to
    ``{"in": scores}`` or ``{"out": scores}``. ``module`` runs in eval mode under ``no_grad``;
    its train flag is restored.
    """
    targets = list(layers) if layers is not None else list(module.modules())
    stats: dict[tuple[int, str], _ChannelCovariance] = {}
    owners: dict[int, nn.Module] = {}
    gen = torch.Generator().manual_seed(seed)
    handles = []

    def hook_for(key: tuple[int, str]) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            x = args[0] if key[1] == "in" else out
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                stats.setdefault(key, _ChannelCovariance()).add(x, gen)

        return hook

    for m in targets:
        if isinstance(m, nn.Conv2d):
            owners[id(m)] = m
            handles.append(m.register_forward_hook(hook_for((id(m), "in"))))
        elif isinstance(m, _BatchNorm):
            owners[id(m)] = m
            handles.append(m.register_forward_hook(hook_for((id(m), "out"))))
    was_training = module.training
    module.eval()
    device = next(iter(module.parameters())).device
    try:
        with torch.no_grad():
            for x in batches:
                module(x.to(device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    out: dict[nn.Module, dict[str, torch.Tensor]] = {}
    for (mid, side), cov in stats.items():
        if cov.n > 1:
            out.setdefault(owners[mid], {})[side] = cov.independence()
    return out


class DynamicImportance(tp.importance.Importance):  # type: ignore[misc]
    """``alpha * |gamma|_hat + (1 - alpha) * independence_hat``, per channel of a group.

    ``|gamma|`` is averaged over the group's BatchNorms; independence over the group's conv
    inputs (the feature maps the next layers read) and, where a channel has none (e.g. the last
    conv before a flatten), the BatchNorm outputs. Each part is divided by its group mean
    before mixing, so ``alpha`` weighs two dimensionless quantities. Groups without a
    BatchNorm (e.g. the classifier's inputs) score by independence alone.

    ``prepare(module)`` must run before scoring a changed model: it measures independence on
    the calibration batches (``batches()`` yields input tensors).
    """

    def __init__(
        self, batches: Callable[[], Iterable[torch.Tensor]], alpha: float = 0.5, seed: int = 0
    ) -> None:
        self.batches = batches
        self.alpha = alpha
        self.seed = seed
        self._indep: dict[nn.Module, dict[str, torch.Tensor]] = {}

    def prepare(self, module: nn.Module) -> None:
        self._indep = channel_independence(module, self.batches(), seed=self.seed)

    def components(self, group: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The group's normalised |gamma| and independence scores (None where it has none)."""
        size = _root_size(group)
        gammas: list[tuple[torch.Tensor, list[int]]] = []
        conv_in: list[tuple[torch.Tensor, list[int]]] = []
        bn_out: list[tuple[torch.Tensor, list[int]]] = []
        for i, (dep, idxs) in enumerate(group):
            root = _valid_root_idxs(group, i)
            if root is None:
                continue
            layer, fn = dep.target.module, dep.handler
            if fn == _BN_OUT and isinstance(layer, _BatchNorm) and layer.affine:
                gammas.append((layer.weight.detach().abs()[idxs], root))
                ind = self._indep.get(layer, {}).get("out")
                if ind is not None and len(ind) == layer.num_features:
                    bn_out.append((ind[idxs], root))
            elif fn == _CONV_IN and isinstance(layer, nn.Conv2d):
                ind = self._indep.get(layer, {}).get("in")
                if ind is not None and len(ind) == layer.in_channels:
                    conv_in.append((ind[idxs], root))
        g = _reduce(size, gammas)
        ind_red = _reduce(size, conv_in or bn_out)
        return (
            _mean_normalise(g) if g is not None else None,
            _mean_normalise(ind_red) if ind_red is not None else None,
        )

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        g, ind = self.components(group)
        if g is None and ind is None:
            return None
        if g is None:
            return ind
        if ind is None:
            return g
        return self.alpha * g + (1.0 - self.alpha) * ind


# --- mean / variance statistics ----------------------------------------------------------------


def filter_statistics(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per output filter: the mean and the variance of its weights."""
    w = weight.detach().flatten(1).double().cpu()
    return w.mean(1).numpy(), w.var(1, unbiased=False).numpy()


def weak_filter_scores(mean: np.ndarray, var: np.ndarray, seed: int = 0) -> np.ndarray:
    """Score filters by 2-means clustering of their standardised ``(|mean|, variance)``.

    The cluster whose centroid is nearer the origin of the raw statistics (smaller ``mean^2 +
    var``, i.e. smaller mean square weight) is the weak one. A filter's score is
    ``d_weak / (d_weak + d_strong)``, its distance to the weak centroid relative to both: below
    0.5 exactly for weak-cluster members, lowest for the filters deepest in the weak cluster,
    and in [0, 1] for every layer, so scores of different layers rank on one scale. ``|mean|``
    rather than the signed mean: a filter of all-negative weights responds as strongly as an
    all-positive one. A layer whose filters do not separate (fewer than 3, or identical
    statistics) scores 1 everywhere.
    """
    n = len(mean)
    feats = np.stack([np.abs(mean), var], axis=1)
    sd = feats.std(0)
    if n < 3 or not np.any(sd > 0):
        return np.ones(n)
    z = (feats - feats.mean(0)) / np.where(sd > 0, sd, 1.0)
    km = KMeans(n_clusters=2, n_init=4, random_state=seed).fit(z)
    if len(set(km.labels_.tolist())) < 2:
        return np.ones(n)
    # The weak cluster is the one with the smaller mean square weight (mean^2 + var).
    energy = feats[:, 0] ** 2 + feats[:, 1]
    weak = int(np.argmin([energy[km.labels_ == k].mean() for k in (0, 1)]))
    d = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None, :, :], axis=2)
    d_weak, d_strong = d[:, weak], d[:, 1 - weak]
    return np.asarray(d_weak / np.maximum(d_weak + d_strong, 1e-12))


class StatisticsImportance(tp.importance.Importance):  # type: ignore[misc]
    """Seed 002's filter statistics as a Torch-Pruning importance.

    For every conv or linear layer of a group whose *output* channels are the group's channels
    (several in a residual stage), filters are scored by :func:`weak_filter_scores`; the scores
    are averaged per root channel. Layers that only read the channels (the next layer, which
    Torch-Pruning rebuilds from the kept filters) do not vote.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        parts: list[tuple[torch.Tensor, list[int]]] = []
        for i, (dep, idxs) in enumerate(group):
            root = _valid_root_idxs(group, i)
            layer, fn = dep.target.module, dep.handler
            if root is None or fn not in (_CONV_OUT, tp.prune_linear_out_channels):
                continue
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            weight = layer.weight
            if isinstance(layer, nn.Conv2d) and layer.transposed:  # pragma: no cover
                weight = weight.transpose(0, 1)
            mean, var = filter_statistics(weight)
            scores = torch.from_numpy(weak_filter_scores(mean, var, self.seed))
            parts.append((scores[idxs], root))
        return _reduce(_root_size(group), parts)
