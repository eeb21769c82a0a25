"""CP decomposition of k x k convs: 1x1 -> k x 1 depthwise -> 1 x k depthwise -> 1x1, fine-tuned.

Lebedev et al. 2015 ("Speeding-up convolutional neural networks using fine-tuned
CP-decomposition") write a conv weight as a sum of R rank-one terms,

    W[o, i, y, x] ~ sum_r A[o, r] * B[i, r] * C[y, r] * D[x, r],

which is four convs: a 1x1 from I to R channels (``B^T``), a k x 1 depthwise conv (``C``, the
vertical stride, padding and dilation), a 1 x k depthwise conv (``D``, the horizontal ones) and
a 1x1 from R to O (``A`` with the original bias). R comes from a target per-layer compression
(``R (I + O + kh + kw) = O I kh kw / ratio``), from the smallest rank whose relative
reconstruction error stays under a bound (bisection over R, one ALS fit per probe), or is given.
CP by ALS is known to be unstable and to lose more accuracy than Tucker before fine-tuning, hence
the lower default learning rate.

Memory guard: the SVD initialisation of ALS takes an SVD of each mode unfolding, and some tensorly
releases compute it with full matrices whenever R exceeds a kernel mode (always, for 3 x 3),
allocating (O I k)^2 floats: hundreds of GB for a 256-channel conv. Above
``svd_init_max_elements`` the fit starts from a seeded random point instead, and the layer's note
says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from compression.decompose import CP, SVD_INIT_MAX_ELEMENTS, cp
from compression.errors import ConfigError
from compression.methods._common import torch_module
from compression.methods._decomposition import (
    ConvSite,
    Skip,
    apply_decomposition,
    conv_from,
    finetune_and_report,
    latency_threads_param,
    min_measured_speedup_param,
    min_speedup_share_param,
    select_convs,
)
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult


@dataclass(frozen=True)
class CpDecompositionConfig:
    rank_method: Literal["ratio", "error", "fixed"] = param(
        "ratio",
        help="how each layer's rank is chosen: ratio (a target compression per layer), error "
        "(the smallest rank whose relative reconstruction error is at most max_error) or "
        "fixed (rank)",
    )
    target_ratio: float = param(
        3.0,
        help="ratio only: each decomposed conv gets this many times fewer weights",
        gt=1.0,
        le=1000.0,
    )
    max_error: float = param(
        0.3,
        help="error only: largest relative reconstruction error ||W - W_cp|| / ||W|| accepted",
        gt=0.0,
        lt=1.0,
    )
    rank: int | None = param(None, help="fixed only: the CP rank of every decomposed conv", ge=1)
    min_channels: int = param(
        16,
        help="decompose only convs with at least this many input and output channels",
        ge=1,
    )
    layers: str = param(
        "", help="regular expression a conv's qualified name must contain (empty: every conv)"
    )
    min_mac_reduction: float = param(
        1.5,
        help="keep a decomposition only if it cuts that conv's MACs by this factor; "
        "the others are listed as skipped",
        ge=1.0,
        le=100.0,
    )
    min_measured_speedup: float = min_measured_speedup_param()
    min_speedup_share: float = min_speedup_share_param()
    latency_threads: int = latency_threads_param()
    svd_init_max_elements: int = param(
        SVD_INIT_MAX_ELEMENTS,
        help="start ALS from a random point instead of an SVD when the SVD could allocate a "
        "matrix of more elements than this (the memory guard)",
        ge=0,
    )
    epochs: int = param(3, help="fine-tuning epochs after the decomposition", ge=0, le=1000)
    lr: float = param(0.005, help="peak fine-tuning learning rate (cosine decay)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)

    def validate(self) -> None:
        if self.rank_method == "fixed" and self.rank is None:
            raise ConfigError("config.rank", "rank_method fixed needs a rank")
        if self.rank_method != "fixed" and self.rank is not None:
            raise ConfigError(
                "config.rank", f"is only used with rank_method fixed, not {self.rank_method}"
            )


def max_useful_rank(shape: tuple[int, ...]) -> int:
    """The rank at which the four convs hold as many weights as the dense conv."""
    out_ch, in_ch, kh, kw = shape
    return max(1, (out_ch * in_ch * kh * kw) // (out_ch + in_ch + kh + kw))


def ratio_rank(shape: tuple[int, ...], ratio: float) -> int:
    out_ch, in_ch, kh, kw = shape
    return max(1, int(out_ch * in_ch * kh * kw / (ratio * (out_ch + in_ch + kh + kw))))


def cp_chain(conv: nn.Conv2d, f: CP) -> nn.Sequential:
    """The four convs of a CP factorisation of ``conv``."""
    rank = f.out.shape[1]
    sh, sw = conv.stride
    assert not isinstance(conv.padding, str)  # select_convs leaves string paddings out
    ph, pw = conv.padding
    dh, dw = conv.dilation
    first = conv_from(f.inp.T[:, :, None, None], conv, bias=False)
    vert = conv_from(
        f.vert.T[:, None, :, None],
        conv,
        groups=rank,
        stride=(sh, 1),
        padding=(ph, 0),
        dilation=(dh, 1),
        bias=False,
    )
    horiz = conv_from(
        f.horiz.T[:, None, None, :],
        conv,
        groups=rank,
        stride=(1, sw),
        padding=(0, pw),
        dilation=(1, dw),
        bias=False,
    )
    last = conv_from(f.out[:, :, None, None], conv, bias=conv.bias is not None)
    if conv.bias is not None:
        with torch.no_grad():
            assert last.bias is not None
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, vert, horiz, last)


def _fit(w: np.ndarray, cfg: CpDecompositionConfig, seed: int) -> tuple[CP, str]:
    shape = tuple(int(s) for s in w.shape)
    guard = cfg.svd_init_max_elements
    if cfg.rank_method == "fixed":
        assert cfg.rank is not None
        return cp(w, cfg.rank, seed=seed, svd_init_max_elements=guard), "fixed"
    if cfg.rank_method == "ratio":
        r = ratio_rank(shape, cfg.target_ratio)
        return cp(w, r, seed=seed, svd_init_max_elements=guard), f"ratio {cfg.target_ratio:g}"
    # Smallest rank within the error bound: bisection, one ALS fit per probe.
    lo, hi = 1, max_useful_rank(shape)
    best = cp(w, hi, seed=seed, svd_init_max_elements=guard)
    if best.rel_error > cfg.max_error:
        return (
            best,
            f"error {best.rel_error:.3f} > {cfg.max_error:g} even at the largest useful rank",
        )
    while lo < hi:
        mid = (lo + hi) // 2
        f = cp(w, mid, seed=seed, svd_init_max_elements=guard)
        if f.rel_error <= cfg.max_error:
            best, hi = f, mid
        else:
            lo = mid + 1
    return best, f"error <= {cfg.max_error:g}"


def _check_fixed_rank(site: ConvSite, cfg: CpDecompositionConfig) -> None:
    if cfg.rank is None:
        return
    limit = max_useful_rank(tuple(site.conv.weight.shape))
    if cfg.rank > limit:
        raise ConfigError(
            "config.rank",
            f"rank {cfg.rank} is larger than {site.name} allows (at rank {limit} its four convs "
            "already hold as many weights as the dense conv); lower it, or raise min_channels / "
            "narrow layers to leave that conv out",
        )


def decompose_model(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    cfg: CpDecompositionConfig,
    *,
    seed: int = 0,
) -> tuple[list[LayerChange], list[Skip]]:
    """Replace every eligible conv of ``module`` by its CP chain (in place)."""
    sites, skips = select_convs(
        module, input_shape, num_classes, min_channels=cfg.min_channels, layers=cfg.layers
    )
    for site in sites:
        _check_fixed_rank(site, cfg)
    changes: list[LayerChange] = []
    for site in sites:
        w = site.conv.weight.detach().to("cpu", torch.float64).numpy()
        try:
            f, how = _fit(w, cfg, seed)
        except (np.linalg.LinAlgError, ValueError) as exc:
            skips.append(
                Skip(site.name, f"the decomposition failed: {exc}", site.conv.weight.numel())
            )
            continue
        rank = int(f.out.shape[1])
        init = "" if f.init == "svd" else ", random init (SVD init over the memory guard)"
        describe = f"CP rank {rank} ({how}), weight error {f.rel_error:.3f}{init}"
        done = apply_decomposition(
            module,
            site,
            functools.partial(cp_chain, site.conv, f),
            min_mac_reduction=cfg.min_mac_reduction,
            min_measured_speedup=cfg.min_measured_speedup,
            min_speedup_share=cfg.min_speedup_share,
            latency_threads=cfg.latency_threads,
            describe=describe,
            ranks=(rank,),
        )
        if isinstance(done, Skip):
            skips.append(done)
        else:
            changes.append(done)
    return changes, skips


@register_method(
    "cp_decomposition",
    config=CpDecompositionConfig,
    summary="Factor k x k convs into 1x1 -> k x 1 -> 1 x k depthwise -> 1x1 (CP), then fine-tune.",
    inputs=("torch",),
    tasks=("classification",),
)
def run(ctx: StageContext, cfg: CpDecompositionConfig) -> StageResult:
    """Decompose the eligible convs of ``ctx.model``, list the rest, fine-tune."""
    module = torch_module(ctx, "cp_decomposition")
    module.to("cpu")
    ctx.report(0.0, "CP: choosing ranks and factoring convs", {})
    changes, skips = decompose_model(
        module, ctx.model.input_shape, ctx.model.num_classes, cfg, seed=ctx.seed
    )
    ctx.check_cancel()
    ctx.report(0.2, f"CP: {len(changes)} convs decomposed, {len(skips)} left as they were", {})
    return finetune_and_report(ctx, module, cfg, changes, skips, start=0.2)
