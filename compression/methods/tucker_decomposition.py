"""Tucker-2 decomposition of k x k convs: 1x1 reduce, k x k core, 1x1 restore, then fine-tune.

Kim et al. 2016 ("Compression of deep convolutional neural networks for fast and low power
mobile applications") factor a conv weight ``W`` (O x I x k x k) on its two channel modes only,

    W[o, i, :, :] ~ sum_{a, b} U_out[o, a] * G[a, b, :, :] * U_in[i, b],

which is three convs in a row: a 1x1 from I to R_in channels (``U_in^T``), a k x k core from R_in
to R_out (``G``, with the original stride, padding and dilation) and a 1x1 from R_out back to O
(``U_out``, with the original bias). The ranks come from EVBMF on the mode-0 and mode-1
unfoldings (:mod:`compression.evbmf`, Kim et al.'s choice; the thesis of seed 002 decomposes its
high-dimensional convs this way), from an energy threshold on the same unfoldings, from a target
per-layer compression ratio, or are given. The factors come from tensorly's HOOI
(:mod:`compression.decompose`). A fine-tuning phase recovers the accuracy the truncation cost.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from compression.decompose import tucker2
from compression.errors import ConfigError
from compression.evbmf import evbmf
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
from compression.model_facts import ModelFacts
from compression.registry import param, register_method
from compression.stage import LayerChange, StageContext, StageResult


@dataclass(frozen=True)
class TuckerDecompositionConfig:
    rank_method: Literal["evbmf", "energy", "ratio", "fixed"] = param(
        "evbmf",
        help="how each layer's ranks are chosen: evbmf (analytic variational Bayes on the "
        "channel unfoldings), energy (keep this share of the squared singular values), "
        "ratio (a target compression per layer) or fixed (rank_out / rank_in)",
    )
    energy: float = param(
        0.9,
        help="energy only: share of the unfoldings' squared singular values kept",
        gt=0.0,
        le=1.0,
    )
    target_ratio: float = param(
        3.0,
        help="ratio only: each decomposed conv gets this many times fewer weights",
        gt=1.0,
        le=1000.0,
    )
    rank_out: int | None = param(None, help="fixed only: rank of the output-channel mode", ge=1)
    rank_in: int | None = param(None, help="fixed only: rank of the input-channel mode", ge=1)
    min_channels: int = param(
        16,
        help="decompose only convs with at least this many input and output channels "
        "(the high-dimensional ones; early convs are left to pruning)",
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
    epochs: int = param(3, help="fine-tuning epochs after the decomposition", ge=0, le=1000)
    lr: float = param(0.01, help="peak fine-tuning learning rate (cosine decay)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)

    def validate(self) -> None:
        fixed = self.rank_method == "fixed"
        for name in ("rank_out", "rank_in"):
            value = getattr(self, name)
            if fixed and value is None:
                raise ConfigError(f"config.{name}", "rank_method fixed needs rank_out and rank_in")
            if not fixed and value is not None:
                raise ConfigError(
                    f"config.{name}", f"is only used with rank_method fixed, not {self.rank_method}"
                )


def _unfold(w: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def _energy_rank(matrix: np.ndarray, energy: float) -> int:
    s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
    total = float(s2.sum())
    if total <= 0:
        return 1
    return int(np.searchsorted(np.cumsum(s2) / total, energy - 1e-12) + 1)


def ratio_ranks(out_ch: int, in_ch: int, k: int, ratio: float) -> tuple[int, int]:
    """Ranks ``(rho O, rho I)`` whose three convs hold ``1/ratio`` of the dense weights.

    ``I R_in + R_in R_out k^2 + R_out O = O I k^2 / ratio`` with ``R = rho * channels`` gives
    ``k^2 rho^2 + 2 rho - k^2 / ratio = 0``.
    """
    k2 = float(k * k)
    rho = (-1.0 + math.sqrt(1.0 + k2 * k2 / ratio)) / k2
    return (
        max(1, min(out_ch, math.floor(rho * out_ch))),
        max(1, min(in_ch, math.floor(rho * in_ch))),
    )


def choose_ranks(
    w: np.ndarray, cfg: TuckerDecompositionConfig
) -> tuple[tuple[int, int] | None, str]:
    """``((R_out, R_in), how)``, or ``(None, why not)`` when EVBMF keeps nothing of a mode."""
    out_ch, in_ch, kh, kw = w.shape
    if cfg.rank_method == "fixed":
        assert cfg.rank_out is not None and cfg.rank_in is not None
        return (cfg.rank_out, cfg.rank_in), "fixed"
    if cfg.rank_method == "ratio":
        return ratio_ranks(out_ch, in_ch, max(kh, kw), cfg.target_ratio), (
            f"ratio {cfg.target_ratio:g}"
        )
    if cfg.rank_method == "energy":
        return (
            _energy_rank(_unfold(w, 0), cfg.energy),
            _energy_rank(_unfold(w, 1), cfg.energy),
        ), f"energy {cfg.energy:g}"
    r_out, r_in = evbmf(_unfold(w, 0)).rank, evbmf(_unfold(w, 1)).rank
    if r_out == 0 or r_in == 0:
        return None, "EVBMF keeps no component of a channel mode (the weights look like noise)"
    return (r_out, r_in), "EVBMF"


def tucker_chain(
    conv: nn.Conv2d, core: np.ndarray, u_out: np.ndarray, u_in: np.ndarray
) -> nn.Sequential:
    """The three convs of a Tucker-2 factorisation of ``conv``."""
    first = conv_from(u_in.T[:, :, None, None], conv, bias=False)
    middle = conv_from(
        core,
        conv,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
    )
    last = conv_from(u_out[:, :, None, None], conv, bias=conv.bias is not None)
    if conv.bias is not None:
        with torch.no_grad():
            assert last.bias is not None
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def _check_fixed_ranks(site: ConvSite, cfg: TuckerDecompositionConfig) -> None:
    conv = site.conv
    for field, rank, size, what in (
        ("rank_out", cfg.rank_out, conv.out_channels, "output"),
        ("rank_in", cfg.rank_in, conv.in_channels, "input"),
    ):
        if rank is not None and rank > size:
            raise ConfigError(
                f"config.{field}",
                f"rank {rank} is larger than {site.name} allows ({size} {what} channels); "
                "lower it, or raise min_channels / narrow layers to leave that conv out",
            )


def decompose_model(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    cfg: TuckerDecompositionConfig,
    *,
    seed: int = 0,
) -> tuple[list[LayerChange], list[Skip]]:
    """Replace every eligible conv of ``module`` by its Tucker-2 chain (in place)."""
    sites, skips = select_convs(
        module, input_shape, num_classes, min_channels=cfg.min_channels, layers=cfg.layers
    )
    for site in sites:  # bad fixed ranks fail before any layer changes
        _check_fixed_ranks(site, cfg)
    changes: list[LayerChange] = []
    for site in sites:
        w = site.conv.weight.detach().to("cpu", torch.float64).numpy()
        try:
            ranks, how = choose_ranks(w, cfg)
            if ranks is None:
                skips.append(Skip(site.name, how, site.conv.weight.numel()))
                continue
            t = tucker2(w, ranks, seed=seed)
        except (np.linalg.LinAlgError, ValueError) as exc:
            skips.append(
                Skip(site.name, f"the decomposition failed: {exc}", site.conv.weight.numel())
            )
            continue
        describe = (
            f"Tucker-2 ranks out {ranks[0]} / in {ranks[1]} ({how}), weight error {t.rel_error:.3f}"
        )
        done = apply_decomposition(
            module,
            site,
            functools.partial(tucker_chain, site.conv, t.core, t.u_out, t.u_in),
            min_mac_reduction=cfg.min_mac_reduction,
            min_measured_speedup=cfg.min_measured_speedup,
            min_speedup_share=cfg.min_speedup_share,
            latency_threads=cfg.latency_threads,
            describe=describe,
            ranks=ranks,
        )
        if isinstance(done, Skip):
            skips.append(done)
        else:
            changes.append(done)
    return changes, skips


def check_model(facts: ModelFacts, cfg: TuckerDecompositionConfig) -> None:
    """Refuse a fixed rank larger than every eligible conv allows, before anything runs."""
    if cfg.rank_method != "fixed" or not facts.layers:
        return
    convs = [
        layer
        for layer in facts.layers
        if layer.kind == "conv"
        and layer.in_channels is not None
        and layer.out_channels is not None
        and min(layer.in_channels, layer.out_channels) >= cfg.min_channels
    ]
    for layer in convs:
        assert layer.in_channels is not None and layer.out_channels is not None
        if cfg.rank_out is not None and cfg.rank_out > layer.out_channels:
            raise ConfigError(
                "config.rank_out",
                f"rank {cfg.rank_out} is larger than {layer.name} allows "
                f"({layer.out_channels} output channels)",
            )
        if cfg.rank_in is not None and cfg.rank_in > layer.in_channels:
            raise ConfigError(
                "config.rank_in",
                f"rank {cfg.rank_in} is larger than {layer.name} allows "
                f"({layer.in_channels} input channels)",
            )


@register_method(
    "tucker_decomposition",
    config=TuckerDecompositionConfig,
    summary="Factor k x k convs into 1x1 -> k x k core -> 1x1 (Tucker-2, EVBMF ranks), "
    "then fine-tune.",
    inputs=("torch",),
    tasks=("classification",),
    check_model=lambda facts, cfg: check_model(facts, cfg),
)
def run(ctx: StageContext, cfg: TuckerDecompositionConfig) -> StageResult:
    """Decompose the eligible convs of ``ctx.model``, list the rest, fine-tune."""
    module = torch_module(ctx, "tucker_decomposition")
    module.to("cpu")
    ctx.report(0.0, "Tucker-2: choosing ranks and factoring convs", {})
    changes, skips = decompose_model(
        module, ctx.model.input_shape, ctx.model.num_classes, cfg, seed=ctx.seed
    )
    ctx.check_cancel()
    ctx.report(
        0.1,
        f"Tucker-2: {len(changes)} convs decomposed, {len(skips)} left as they were",
        {},
    )
    return finetune_and_report(ctx, module, cfg, changes, skips, start=0.1)
