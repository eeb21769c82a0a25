"""What the decomposition methods share: choosing convs, counting their MACs, swapping them in.

A decomposed conv is only worth it when the chain of small convs costs fewer MACs than the dense
one, so every candidate is built, counted with :mod:`compression.macs` (the one counter) on the
input shape the layer really sees, and kept only when it cuts the layer's MACs by at least
``min_mac_reduction``. Convs that cannot or should not be decomposed are listed with a reason
instead of failing the stage: the job goes on with the layers that can be.

MACs are not time: at batch 1 on a CPU a chain of three or four small convs pays a per-operator
overhead that a narrow conv on a small map never earns back. With ``min_measured_speedup`` set,
a chain that passed the MAC check is measured before it is accepted: the dense conv and the built
chain are each exported to ONNX and timed in ONNX Runtime on this machine at the conv's real input
shape, batch 1, side by side in interleaved rounds (:func:`measure_gate`, through
:func:`compression.latency.measure_round_medians`); the conv keeps its dense weights, listed with
the measured figures, unless the chain is at least that many times faster. ``min_speedup_share``
asks instead (or as well) for a share of the chain's own MAC cut: at 0.75, a chain with 4x fewer
MACs must run at least 3x faster, so a kept decomposition is one whose MAC cut this machine
realises, and the whole model's speedup can follow its MAC reduction.

The decision is taken on the median over rounds of the *paired* speedup (the dense conv's round
median over the chain's, the two timed back to back), each round lasting at least
``GATE_ROUND_MS`` per model however small the conv (the first version timed 20 runs in each of
three rounds: 0.6 ms for a 30 µs conv). That steadies one call, not the machine between jobs:
a conv near the threshold can still be kept by one job and skipped by the next
(docs/methods.md).
"""

from __future__ import annotations

import copy
import re
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.errors import ConfigError
from compression.latency import measure_round_medians
from compression.macs import count_macs
from compression.methods._common import classifier_layer, finish, history_metrics
from compression.onnx_export import export_onnx
from compression.registry import param
from compression.stage import LayerChange, StageContext, StageResult
from compression.structure import replace_module
from compression.training import train


@dataclass
class ConvSite:
    """A conv the stage may decompose, with the per-sample input shape it sees (C, H, W)."""

    name: str
    conv: nn.Conv2d
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str
    params: int | None = None
    latency_us_before: float | None = None  # the latency gate's measured dense conv ...
    latency_us_after: float | None = None  # ... and chain (µs, batch 1), when it measured them
    latency_speedup: float | None = None  # ... and the paired speedup it decided on


# The latency gate's timing: untimed warm-up runs, then interleaved rounds (the order rotated
# each round) in which each model runs at least GATE_MIN_RUNS times and for at least
# GATE_ROUND_MS; each p50 is the median of its round medians.
GATE_WARMUP = 5
GATE_MIN_RUNS = 10
GATE_ROUND_MS = 5.0
GATE_ROUNDS = 5


@dataclass(frozen=True)
class GateTiming:
    """A dense conv and its chain timed side by side by the latency gate (µs, batch 1).

    ``round_speedups`` pairs the two models' medians round by round; ``speedup`` is their median.
    """

    dense_us: float
    chain_us: float
    round_speedups: tuple[float, ...]

    @property
    def speedup(self) -> float:
        return float(statistics.median(self.round_speedups))

    def describe(self) -> str:
        spread = (
            f" (rounds {min(self.round_speedups):.2f}-{max(self.round_speedups):.2f}x)"
            if len(self.round_speedups) > 1
            else ""
        )
        return (
            f"measured ORT {self.dense_us:.0f} µs dense -> {self.chain_us:.0f} µs chain, "
            f"{self.speedup:.2f}x faster{spread}"
        )


def measure_gate(
    dense: nn.Module, chain: nn.Module, input_shape: tuple[int, int, int], *, threads: int
) -> GateTiming:
    """Time ``dense`` and ``chain`` in ONNX Runtime at batch 1 on ``input_shape`` (C, H, W).

    Both are exported to ONNX (from eval-mode CPU copies) in a temporary folder and timed side
    by side in this process by :func:`compression.latency.measure_round_medians`:
    ``GATE_ROUNDS`` interleaved rounds, each model at least ``GATE_MIN_RUNS`` runs and
    ``GATE_ROUND_MS`` per round, after ``GATE_WARMUP`` warm-up runs, with ``threads`` intra-op
    threads. In process, not in fresh children, to stay at a few tenths of a second per conv:
    a child's start costs more than timing a small conv.
    """
    with tempfile.TemporaryDirectory(prefix="edgeslim-gate-") as tmp:
        paths = [
            export_onnx(copy.deepcopy(m).to("cpu").float(), input_shape, Path(tmp) / f"{n}.onnx")
            for n, m in (("dense", dense), ("chain", chain))
        ]
        dense_ms, chain_ms = measure_round_medians(
            paths,
            input_shape=(1, *input_shape),
            threads=threads,
            warmup=GATE_WARMUP,
            rounds=GATE_ROUNDS,
            min_runs=GATE_MIN_RUNS,
            min_round_ms=GATE_ROUND_MS,
        )
    return GateTiming(
        dense_us=statistics.median(dense_ms) * 1000.0,
        chain_us=statistics.median(chain_ms) * 1000.0,
        round_speedups=tuple(d / max(c, 1e-12) for d, c in zip(dense_ms, chain_ms, strict=True)),
    )


def min_measured_speedup_param() -> Any:
    """The latency gate's threshold, one definition for every decomposition method's config."""
    return param(
        0.0,
        help="latency gate: keep a decomposition only if its chain, exported to ONNX and timed "
        "in ONNX Runtime on this machine at the conv's input shape and batch 1 against the "
        "dense conv, runs at least this many times faster; the others are listed with the "
        "measured times (0: no timing, MACs only)",
        ge=0.0,
        le=100.0,
    )


def min_speedup_share_param() -> Any:
    """The latency gate's share-of-MACs threshold (see :func:`min_measured_speedup_param`)."""
    return param(
        0.0,
        help="latency gate: keep a decomposition only if its measured speedup (timed as for "
        "min_measured_speedup) is at least this share of its own MAC reduction, e.g. 0.75: a "
        "chain with 4x fewer MACs must run 3x faster (0: off; with both set, both apply)",
        ge=0.0,
        le=1.0,
    )


def latency_threads_param() -> Any:
    """The latency gate's ONNX Runtime threads (see :func:`min_measured_speedup_param`)."""
    return param(
        2,
        help="latency gate only: ONNX Runtime intra-op threads when timing (2, as the job's "
        "eval.threads default)",
        ge=1,
        le=256,
    )


def conv_input_shapes(
    module: nn.Module, input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The input shape (without batch) every Conv2d sees in one eval forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):

            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], name: str = name) -> None:
                shapes.setdefault(name, tuple(int(s) for s in inp[0].shape[1:]))

            handles.append(m.register_forward_pre_hook(hook))
    was_training = module.training
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return shapes


def select_convs(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    min_channels: int,
    layers: str,
    field: str = "config.layers",
) -> tuple[list[ConvSite], list[Skip]]:
    """The dense k x k convs to decompose, and the convs left alone with a reason.

    ``layers`` is a regular expression searched in each qualified name (empty: every conv);
    convs it does not match are not listed. Grouped and depthwise convs, 1x1 convs, convs with
    non-zero padding modes, the classifier and convs with fewer than ``min_channels`` input or
    output channels are listed as skipped.
    """
    try:
        pattern = re.compile(layers) if layers else None
    except re.error as exc:
        raise ConfigError(field, f"is not a valid regular expression: {exc}") from None
    shapes = conv_input_shapes(module, input_shape)
    head = classifier_layer(module, num_classes)
    sites: list[ConvSite] = []
    skips: list[Skip] = []
    for name, m in module.named_modules():
        if not isinstance(m, nn.Conv2d) or (pattern is not None and not pattern.search(name)):
            continue
        params = m.weight.numel()
        reason = None
        if m is head:
            reason = "the classifier keeps its full rank"
        elif m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            reason = (
                f"{kind} conv (groups={m.groups}): only dense convs have channel modes to factor"
            )
        elif m.kernel_size == (1, 1):
            reason = "1x1 conv: it has no spatial mode (tt_decomposition factors 1x1 convs)"
        elif m.padding_mode != "zeros" or isinstance(m.padding, str):
            reason = (
                f"padding {m.padding!r} / mode {m.padding_mode!r} is not split across the chain"
            )
        elif min(m.in_channels, m.out_channels) < min_channels:
            reason = (
                f"{m.in_channels} -> {m.out_channels} channels: below min_channels "
                f"{min_channels} (a low-dimensional conv)"
            )
        elif name not in shapes:
            reason = "not called in the forward pass"
        if reason is not None:
            skips.append(Skip(name, reason, params))
            continue
        c, h, w = shapes[name]
        sites.append(ConvSite(name, m, (c, h, w)))
    return sites, skips


def layer_macs(layer: nn.Module, input_shape: tuple[int, int, int]) -> int:
    return count_macs(layer, input_shape)


def params_of(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def conv_from(weight: np.ndarray, template: nn.Conv2d, **kwargs: object) -> nn.Conv2d:
    """A conv with ``weight`` (float64 numpy, cast to the template's dtype and device)."""
    out_ch, in_per_group = int(weight.shape[0]), int(weight.shape[1])
    groups = int(kwargs.pop("groups", 1))  # type: ignore[call-overload]
    conv = nn.Conv2d(
        in_per_group * groups,
        out_ch,
        tuple(int(s) for s in weight.shape[2:]),  # type: ignore[arg-type]
        groups=groups,
        **kwargs,  # type: ignore[arg-type]
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
    return conv.to(device=template.weight.device, dtype=template.weight.dtype)


def apply_decomposition(
    root: nn.Module,
    site: ConvSite,
    build: Callable[[], nn.Module],
    *,
    min_mac_reduction: float,
    describe: str,
    ranks: tuple[int, ...],
    min_measured_speedup: float = 0.0,
    min_speedup_share: float = 0.0,
    latency_threads: int = 2,
) -> LayerChange | Skip:
    """Build the replacement, count both, swap it in if it cuts the MACs enough.

    With ``min_measured_speedup`` or ``min_speedup_share`` > 0, a chain that passes the MAC
    check is then timed against the dense conv (:func:`measure_gate`) and swapped in only if it
    is at least ``max(min_measured_speedup, min_speedup_share * its MAC reduction)`` times
    faster; the row (or the skip) carries both measured latencies. At 0 nothing is timed.

    Returns the layer's change row, or a skip when the chain would not save enough MACs or was
    not measured fast enough.
    """
    new = build()
    new.train(site.conv.training)
    before = layer_macs(site.conv, site.input_shape)
    after = layer_macs(new, site.input_shape)
    params_before, params_after = params_of(site.conv), params_of(new)
    if after * min_mac_reduction >= before:
        return Skip(
            site.name,
            f"{describe} would cost {after:,} MACs against {before:,} dense "
            f"(needs {min_mac_reduction:g}x fewer)",
            params_before,
        )
    timing = None
    if min_measured_speedup > 0 or min_speedup_share > 0:
        timing = measure_gate(site.conv, new, site.input_shape, threads=latency_threads)
        mac_cut = before / max(after, 1)
        share_needs = min_speedup_share * mac_cut
        if share_needs > min_measured_speedup:
            needs = (
                f"{share_needs:.2f}x = {min_speedup_share:g} of its {mac_cut:.2f}x MAC cut, "
                "min_speedup_share"
            )
        else:
            needs = f"{min_measured_speedup:g}x, min_measured_speedup"
        if timing.speedup < max(min_measured_speedup, share_needs):
            return Skip(
                site.name,
                f"{describe}: {timing.describe()} at batch 1 on "
                f"{'x'.join(map(str, site.input_shape))} (needs {needs})",
                params_before,
                timing.dense_us,
                timing.chain_us,
                timing.speedup,
            )
        describe = f"{describe}; {timing.describe()}"
    replace_module(root, site.name, new)
    return LayerChange(
        name=site.name,
        kind="conv",
        channels_before=site.conv.out_channels,
        channels_after=site.conv.out_channels,
        params_before=params_before,
        params_after=params_after,
        macs_before=before,
        macs_after=after,
        ranks=ranks,
        note=describe,
        latency_us_before=timing.dense_us if timing else None,
        latency_us_after=timing.chain_us if timing else None,
        latency_speedup=timing.speedup if timing else None,
    )


def skip_row(skip: Skip) -> LayerChange:
    return LayerChange(
        name=skip.name,
        kind="conv",
        params_before=skip.params,
        params_after=skip.params,
        note=f"skipped: {skip.reason}",
        latency_us_before=skip.latency_us_before,
        latency_us_after=skip.latency_us_after,
        latency_speedup=skip.latency_speedup,
    )


def finetune_and_report(
    ctx: StageContext,
    module: nn.Module,
    cfg: Any,
    changes: list[LayerChange],
    skips: list[Skip],
    *,
    start: float,
) -> StageResult:
    """Fine-tune the decomposed ``module`` with the stage's settings and build its result.

    ``cfg`` carries ``epochs``, ``lr``, ``batch_size``, ``optimizer`` and ``weight_decay``;
    progress runs from ``start`` to 1. Skipped layers are listed after the decomposed ones.
    """
    history = train(
        module,
        ctx.data,
        ctx,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        progress=(start, 1.0),
        label="fine-tuning",
    )
    ctx.model.module = finish(module)
    metrics = {
        **history_metrics(history),
        "layers_decomposed": float(len(changes)),
        "layers_skipped": float(len(skips)),
    }
    timed = [c for c in changes if c.latency_us_before is not None] + [
        s for s in skips if s.latency_us_before is not None
    ]
    if timed:
        metrics["layers_timed"] = float(len(timed))
    return StageResult(
        model=ctx.model,
        metrics=metrics,
        layers=changes + [skip_row(s) for s in skips],
        history=history,
    )
