"""Operator fusion on the graph (seed 003): Conv+BN folding, graph simplification, ORT's offline
optimisation, with the node counts and the measured latency before and after.

The passes are :mod:`compression.fusion`'s, in the only safe order. Simplification runs on float
graphs only: on a quantized graph it would fold Q/DQ pairs back into float weights, so there it
is skipped and the report says so, and only ONNX Runtime's optimisation (which is QDQ-aware)
runs. Put this stage before ``ptq_int8`` to quantize the simplified graph, or after a
quantization stage to save ORT's optimised int8 graph.

``ort_level``: ``basic`` keeps standard ONNX operators, so the file runs on any ONNX runtime;
``extended`` saves ORT's fused contrib operators (FusedConv, QLinearConv from QDQ units), which
only ONNX Runtime's CPU provider of a compatible version runs: choose it when the target is
known to run ORT on a CPU. Note that ORT applies these same fusions at load time anyway (the
latency harness loads with every optimisation on), so the measured latency change of the ORT
pass is usually small; what it saves is session-creation time (``load_ms_*``) and a graph that
no longer changes when loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from compression.errors import Cancelled, ConfigError
from compression.fusion import (
    find_conv_bn_pairs,
    fold_conv_bn,
    is_quantized,
    node_count,
    ort_optimize,
    simplify_onnx,
)
from compression.latency import measure_latency_isolated
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.registry import param, register_method
from compression.stage import LayerChange, ModelState, StageContext, StageResult


@dataclass(frozen=True)
class FuseOperatorsConfig:
    fold_batchnorm: bool = param(
        True,
        help="torch models: fold each Conv+BatchNorm pair into the conv (refused without BN)",
    )
    simplify: bool = param(
        True, help="simplify the float graph with onnxslim (skipped on a quantized graph)"
    )
    ort_level: Literal["none", "basic", "extended"] = param(
        "basic",
        help="save ORT's optimised graph: basic runs anywhere, extended only on ORT's CPU provider",
    )
    latency_rounds: int = param(
        3, help="interleaved timing rounds before/after at batch 1 (0: do not time)", ge=0, le=50
    )
    latency_runs: int = param(20, help="timed runs per model per round", ge=1, le=10000)
    threads: int = param(2, help="ORT intra-op threads when timing", ge=1, le=256)
    opset: int = param(17, help="ONNX opset when exporting a torch model", ge=13, le=21)


def _max_diff(a: Path, b: Path, input_shape: tuple[int, int, int], seed: int) -> float:
    """Largest output difference of two ONNX models on the same random batch."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((4, *input_shape)).astype(np.float32)
    outs = []
    for path in (a, b):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs.append(np.asarray(s.run(None, {s.get_inputs()[0].name: x})[0]))
    return float(np.max(np.abs(outs[0] - outs[1])))


def check_model(facts: ModelFacts, cfg: FuseOperatorsConfig) -> None:
    """Refuse Conv+BN folding on a torch model that has no BatchNorm to fold."""
    if cfg.fold_batchnorm and facts.format == "torch" and facts.has_batchnorm is False:
        raise ConfigError(
            "config.fold_batchnorm",
            f"{facts.label} has no BatchNorm layers, so there is no Conv+BN pair to fold; set "
            "fold_batchnorm to false to run only the graph passes (simplification, ORT)",
        )


@register_method(
    "fuse_operators",
    config=FuseOperatorsConfig,
    summary="Fold Conv+BatchNorm, simplify the ONNX graph and save ONNX Runtime's optimised "
    "graph; reports the fused pairs, node counts and latency before and after.",
    inputs=("torch", "onnx"),
    tasks=("classification", "detection"),
    output="onnx",
    check_model=lambda facts, cfg: check_model(facts, cfg),
)
def run(ctx: StageContext, cfg: FuseOperatorsConfig) -> StageResult:
    """Write ``ctx.work_dir/model_fused.onnx`` from ``ctx.model``."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    shape = ctx.model.input_shape
    layers: list[LayerChange] = []
    notes: list[str] = []
    if ctx.model.module is not None:
        module = copy.deepcopy(ctx.model.module).to("cpu").eval()
        before = export_onnx(module, shape, ctx.work_dir / "before.onnx", opset=cfg.opset)
        pairs = fold_conv_bn(module, find_conv_bn_pairs(module)) if cfg.fold_batchnorm else []
        if cfg.fold_batchnorm and not pairs:
            notes.append("no Conv+BN pair to fold")
        layers = [LayerChange(name=f"{p.conv} + {p.bn}", kind="conv+bn") for p in pairs]
        current = export_onnx(module, shape, ctx.work_dir / "folded.onnx", opset=cfg.opset)
    else:
        assert ctx.model.onnx_path is not None
        before = Path(ctx.model.onnx_path)
        pairs = []
        current = before
    ctx.report(0.2, f"folded {len(pairs)} Conv+BN pairs", {})
    counts = {"nodes_before": node_count(before), "nodes_folded": node_count(current)}
    quantized = is_quantized(current)
    simplified = False
    if cfg.simplify and quantized:
        notes.append("graph simplification skipped: the model is quantized")
    elif cfg.simplify:
        current = simplify_onnx(current, ctx.work_dir / "simplified.onnx")
        simplified = True
    counts["nodes_simplified"] = node_count(current)
    ctx.report(0.4, f"simplified: {counts['nodes_simplified']} nodes", {})
    if cfg.ort_level != "none":
        current = ort_optimize(current, ctx.work_dir / "ort_optimized.onnx", cfg.ort_level)
    counts["nodes_after"] = node_count(current)
    out = ctx.work_dir / "model_fused.onnx"
    out.write_bytes(Path(current).read_bytes())
    ctx.report(0.6, f"{counts['nodes_before']} -> {counts['nodes_after']} nodes", {})

    metrics: dict[str, float] = {k: float(v) for k, v in counts.items()}
    metrics["fused_pairs"] = float(len(pairs))
    metrics["simplified"] = 1.0 if simplified else 0.0
    metrics["quantized_input"] = 1.0 if quantized else 0.0
    metrics["max_abs_diff"] = _max_diff(before, out, shape, ctx.seed)
    if cfg.latency_rounds > 0:
        ctx.report(0.7, f"timing before and after ({cfg.latency_rounds} interleaved rounds)", {})
        lat_before, lat_after = measure_latency_isolated(
            [before, out],
            input_shapes=(1, *shape),
            threads=cfg.threads,
            runs=cfg.latency_runs,
            rounds=cfg.latency_rounds,
            warmup=5,
            should_cancel=_poll(ctx),
        )
        metrics["p50_ms_before"] = lat_before.p50_ms
        metrics["p50_ms_after"] = lat_after.p50_ms
        metrics["latency_speedup"] = lat_before.p50_ms / max(lat_after.p50_ms, 1e-9)
        if lat_before.load_time_ms is not None and lat_after.load_time_ms is not None:
            metrics["load_ms_before"] = lat_before.load_time_ms
            metrics["load_ms_after"] = lat_after.load_time_ms
    message = f"fused: {counts['nodes_before']} -> {counts['nodes_after']} nodes"
    if notes:
        message += " (" + "; ".join(notes) + ")"
    ctx.report(1.0, message, {})
    model = ModelState(
        input_shape=shape,
        num_classes=ctx.model.num_classes,
        task=ctx.model.task,
        module=None,
        onnx_path=out,
        arch=ctx.model.arch,
    )
    artifacts = {"onnx_fused": out}
    if ctx.model.module is not None:
        artifacts["onnx_fp32"] = before
    return StageResult(model=model, metrics=metrics, layers=layers, artifacts=artifacts)


def _poll(ctx: StageContext) -> Callable[[], bool]:
    """``ctx.check_cancel`` (which raises) as the poll the latency harness expects."""

    def should_cancel() -> bool:
        try:
            ctx.check_cancel()
        except Cancelled:
            return True
        return False

    return should_cancel
