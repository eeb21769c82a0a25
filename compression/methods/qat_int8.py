"""Quantization-aware training that simulates, point for point, the int8 model ONNX Runtime runs.

The simulation is built on torch's core fake-quant ops (``torch.fake_quantize_per_channel_affine``
and ``torch.fake_quantize_per_tensor_affine``), not on the deprecated ``torch.ao.quantization``
flows, and the artifact is the same as ``ptq_int8``'s: an fp32 export quantized by ONNX Runtime's
``quantize_static`` into a QDQ model, with ``ptq_int8``'s default settings (ORT pre-processing,
per-channel symmetric int8 weights, 7-bit with ``reduce_range``, uint8 asymmetric activations,
MinMax). What changes is where the activation scales come from: the ranges learned during
training are handed to the quantizer through its ``TensorQuantOverrides`` option.

How the simulated points are found: the model (BatchNorm folded) is exported and quantized once,
on a few calibration images, before training; every tensor that ORT's QDQ quantizer quantized is
a point to simulate. Each one is traced back to a torch module through the exporter's scoped
node names (``/layer1/layer1.0/relu_1/Relu`` is the second call of ``layer1.0.relu``); a conv
whose BatchNorm is folded is observed at the BN's output, which is what the folded conv computes.
ORT drops a ReLU/Clip after a quantized op and gives its input the activation's range; that is
the range observed here, at the activation's output. Outputs of ops that only reshape or take
a maximum (MaxPool, Flatten) share their input's scale in ORT and need no point of their own.
A tensor no module produces (a functional op in ``forward``) is simulated at the inputs of the
conv/linear layers that read it; one that cannot be placed is left to ORT's calibration on the
trained model and counted in ``calibrated_points``.

Schedule: observers start from the calibration images' min/max (what PTQ would use), then
follow a moving min/max during training and freeze after ``observer_update_epochs`` epochs;
BatchNorm uses batch statistics for ``bn_update_epochs`` epochs and its running statistics
(frozen) after that, so the last epochs train the network that will be folded. Per-channel
symmetric weight quantization commutes with BN's per-channel scaling, so quantizing the conv
weight while BN is frozen is exactly quantizing the folded weight. The int32 bias quantization
(scale = input scale x weight scale) is not simulated; its error is below half a step of the
product of two scales.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.nn.utils import parametrize

from compression.errors import ConfigError, StageScopeError
from compression.evaluation import accuracy_onnx
from compression.fusion import FusedPair, find_conv_bn_pairs, fold_conv_bn
from compression.methods._common import history_metrics, torch_module
from compression.methods.ptq_int8 import _ArrayReader
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.registry import param, register_method
from compression.stage import ModelState, StageContext, StageResult
from compression.training import train

# uint8 activations, as ptq_int8's default; weights are symmetric int8 (+-64 with reduce_range,
# +-127 without), the ranges ORT's quantizer uses (quant_utils.get_qmin_qmax_for_qType).
ACT_QMIN, ACT_QMAX = 0, 255
# Ops whose output ORT quantizes with its input's parameters: nothing new to simulate there.
_SHAPE_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"})
_WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul"})
_CALIBRATION_BATCH = 32
_DRY_RUN_SAMPLES = 8


@dataclass(frozen=True)
class QatInt8Config:
    epochs: int = param(3, help="fine-tuning passes with simulated int8", ge=1, le=1000)
    lr: float = param(
        0.001,
        help="peak learning rate (cosine to zero); small: the model is trained",
        gt=0.0,
        le=10.0,
    )
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(1e-4, help="weight decay", ge=0.0, le=1.0)
    bn_update_epochs: int = param(
        1,
        help="first epochs with BatchNorm batch statistics; the rest use its frozen running "
        "statistics, i.e. train the network that gets folded",
        ge=0,
        le=1000,
    )
    observer_update_epochs: int = param(
        2,
        help="first epochs in which activation ranges follow a moving min/max; frozen after",
        ge=0,
        le=1000,
    )
    averaging_constant: float = param(
        0.01, help="weight of each batch in the moving min/max", gt=0.0, le=1.0
    )
    calibration_samples: int = param(
        128,
        help="training images giving the starting ranges (as ptq_int8 calibrates)",
        ge=1,
        le=10000,
    )
    reduce_range: bool = param(
        True, help="7-bit weights, as ptq_int8's default (x86 CPUs without VNNI)"
    )
    opset: int = param(17, help="ONNX opset of the export", ge=13, le=21)

    def validate(self) -> None:
        for name in ("bn_update_epochs", "observer_update_epochs"):
            if getattr(self, name) > self.epochs:
                raise ConfigError(
                    f"config.{name}",
                    f"must be at most epochs ({self.epochs}), got {getattr(self, name)}",
                )


# --- the simulated quantizers --------------------------------------------------------------


def act_qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of a uint8 asymmetric tensor with range [lo, hi], as ORT computes
    them (``quant_utils.compute_scale_zp``: the range always includes 0)."""
    rmin = min(np.float32(lo), np.float32(0.0))
    rmax = max(np.float32(hi), np.float32(0.0))
    scale = (np.float64(rmax) - np.float64(rmin)) / (ACT_QMAX - ACT_QMIN)
    if scale < np.finfo(np.float32).tiny:
        return np.float32(1.0), np.uint8(0)
    zero = np.round(ACT_QMIN - np.float64(rmin) / scale)
    return np.float32(scale), np.uint8(np.clip(zero, ACT_QMIN, ACT_QMAX))


def weight_qmax(reduce_range: bool) -> int:
    return 64 if reduce_range else 127


def weight_scales(weight: torch.Tensor, reduce_range: bool) -> np.ndarray:
    """Per-output-channel symmetric scales ORT gives this weight (float32)."""
    w = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
    absmax = torch.maximum(w.max(dim=1).values.clamp(min=0), (-w.min(dim=1).values).clamp(min=0))
    scale = (2.0 * absmax / (2 * weight_qmax(reduce_range))).numpy().astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    return scale


class ActivationQuantizer:
    """One activation tensor: a min/max observer and its uint8 fake quantization."""

    def __init__(self, tensor: str, averaging_constant: float) -> None:
        self.tensor = tensor  # the ONNX tensor it stands for
        self.c = averaging_constant
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.mode: Literal["calibrate", "train", "frozen"] = "calibrate"
        self.enabled = False  # fake quantization on (off while calibrating)

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if self.lo is not None and self.hi is not None and self.lo.device != lo.device:
            self.lo, self.hi = self.lo.to(lo.device), self.hi.to(lo.device)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.mode == "calibrate":  # absolute min/max, as ORT's MinMax calibrator
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:  # moving min/max
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.mode == "calibrate" or (self.mode == "train" and training):
            self.observe(x)
        if not self.enabled or self.lo is None or self.hi is None:
            return x
        zero = torch.zeros((), device=x.device)
        rmin = torch.minimum(self.lo.to(x.device), zero)
        rmax = torch.maximum(self.hi.to(x.device), zero)
        scale = ((rmax - rmin) / (ACT_QMAX - ACT_QMIN)).clamp(min=torch.finfo(torch.float32).tiny)
        zp = torch.round(ACT_QMIN - rmin / scale).clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)
        # float32 even under autocast: 8-bit steps need more mantissa than bfloat16 has.
        out = torch.fake_quantize_per_tensor_affine(
            x.float(), scale.reshape(1).float(), zp.reshape(1), ACT_QMIN, ACT_QMAX
        )
        return out.to(x.dtype)

    def qparams(self) -> tuple[np.float32, np.uint8]:
        assert self.lo is not None and self.hi is not None, "the observer saw no data"
        return act_qparams(float(self.lo), float(self.hi))


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (a parametrization)."""

    def __init__(self, reduce_range: bool) -> None:
        super().__init__()
        self.qmax = weight_qmax(reduce_range)
        self.enabled = False

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        flat = w.detach().reshape(w.shape[0], -1)
        absmax = flat.abs().amax(dim=1)
        scale = (absmax / self.qmax).float().clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)


# --- where ORT quantizes, in torch terms -----------------------------------------------------


@dataclass
class QuantPlan:
    """The simulated points: module outputs, module inputs, the model input; weights."""

    outputs: dict[tuple[str, int], ActivationQuantizer]  # (module, call index) -> quantizer
    inputs: dict[tuple[str, int], ActivationQuantizer]
    model_input: ActivationQuantizer | None
    weights: dict[str, str]  # module name -> ONNX weight initializer
    calibrated: list[str]  # ORT-quantized tensors left to ORT's calibration

    def quantizers(self) -> list[ActivationQuantizer]:
        seen: dict[int, ActivationQuantizer] = {}
        for q in [*self.outputs.values(), *self.inputs.values(), self.model_input]:
            if q is not None:
                seen.setdefault(id(q), q)
        return list(seen.values())


_CALL = re.compile(r"(.+)_(\d+)")


def module_of_node(root: nn.Module, node_name: str) -> tuple[str, int] | None:
    """The module (qualified name) and call index a TorchScript-exported node belongs to.

    Node names are scopes: ``/features/features.0/Conv`` (a child of a Sequential repeats the
    parent's scope as a prefix), ``/layer1/layer1.0/relu_1/Relu`` (the second call of
    ``relu``). ``None`` for a node at the top level.
    """
    parts = node_name.strip("/").split("/")[:-1]
    if not parts:
        return None
    cur, names, prev, call = root, [], "", 0
    for comp in parts:
        child = comp[len(prev) + 1 :] if prev and comp.startswith(prev + ".") else comp
        call = 0
        sub = cur._modules.get(child)
        if sub is None and (m := _CALL.fullmatch(child)) and m[1] in cur._modules:
            child, call = m[1], int(m[2])
            sub = cur._modules[child]
        if sub is None:
            return None
        cur, prev = sub, comp
        names.append(child)
    return ".".join(names), call


def _scope(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0]


def plan_points(
    root: nn.Module,
    pre: onnx.ModelProto,
    dry: onnx.ModelProto,
    pairs: list[FusedPair],
    averaging_constant: float,
) -> QuantPlan:
    """Trace every tensor ORT quantized in ``dry`` back to a point in the torch module."""
    inits = {i.name for i in dry.graph.initializer}
    tensors: list[str] = []
    for node in dry.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale = node.input[1]
            # Shared scales (MaxPool, Flatten) name the tensor whose parameters they reuse.
            name = scale[: -len("_scale")] if scale.endswith("_scale") else node.input[0]
            if name not in tensors:
                tensors.append(name)
    producers = {out: n for n in pre.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in pre.graph.node:
        for i in n.input:
            consumers[i].append(n)
    graph_inputs = {i.name for i in pre.graph.input}
    bn_of = {p.conv: p.bn for p in pairs}
    modules = dict(root.named_modules())
    plan = QuantPlan({}, {}, None, {}, [])

    def readers(t: str) -> list[onnx.NodeProto]:
        out: list[onnx.NodeProto] = []
        for c in consumers.get(t, []):
            out += readers(c.output[0]) if c.op_type in _SHAPE_OPS else [c]
        return out

    for t in tensors:
        q = ActivationQuantizer(t, averaging_constant)
        if t in graph_inputs:
            plan.model_input = q
            continue
        producer = producers.get(t)
        loc = module_of_node(root, producer.name) if producer is not None else None
        if loc is not None and producer is not None:
            name, call = loc
            leaf = not any(True for _ in modules[name].children())
            inside = _scope(producer.name) + "/"
            if leaf or all(not c.name.startswith(inside) for c in consumers.get(t, [])):
                plan.outputs[(bn_of.get(name, name), call)] = q
                continue
        targets = [module_of_node(root, c.name) for c in readers(t)]
        ok = bool(targets) and all(
            loc is not None and isinstance(modules[loc[0]], (nn.Conv2d, nn.Linear))
            for loc in targets
        )
        if ok:
            for target in targets:
                assert target is not None
                plan.inputs[target] = q
        else:
            plan.calibrated.append(t)
    for n in pre.graph.node:
        if n.op_type in _WEIGHT_OPS and len(n.input) > 1:
            loc = module_of_node(root, n.name)
            if loc is not None and isinstance(modules[loc[0]], (nn.Conv2d, nn.Linear)):
                plan.weights[loc[0]] = n.input[1]
    return plan


class _Hooks:
    """Forward hooks that apply a plan to a module; ``remove()`` takes them all off."""

    def __init__(self, root: nn.Module, plan: QuantPlan) -> None:
        self.handles: list[Any] = []
        self.calls: dict[str, int] = defaultdict(int)
        self.current: dict[str, int] = {}
        modules = dict(root.named_modules())

        def reset(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            self.calls.clear()
            if plan.model_input is not None:
                return (plan.model_input(args[0], root.training), *args[1:])
            return None

        self.handles.append(root.register_forward_pre_hook(reset))
        names = {n for n, _ in plan.outputs} | {n for n, _ in plan.inputs}
        for name in names:
            m = modules[name]

            def pre(m_: nn.Module, args: tuple[Any, ...], name: str = name) -> Any:
                idx = self.calls[name]
                self.calls[name] = idx + 1
                self.current[name] = idx
                q = plan.inputs.get((name, idx))
                if q is not None:
                    return (q(args[0], root.training), *args[1:])
                return None

            def post(m_: nn.Module, args: Any, out: Any, name: str = name) -> Any:
                q = plan.outputs.get((name, self.current.get(name, 0)))
                return q(out, root.training) if q is not None else None

            self.handles.append(m.register_forward_pre_hook(pre))
            self.handles.append(m.register_forward_hook(post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


# --- the stage --------------------------------------------------------------------------------


def _quantize(
    src: Path,
    dst: Path,
    ctx: StageContext,
    cfg: QatInt8Config,
    n_samples: int,
    overrides: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """ONNX Runtime's pre-processing and ``quantize_static`` with ptq_int8's settings."""
    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    arrays = ctx.data.calibration_arrays(n_samples, seed=ctx.seed)
    reader = _ArrayReader(_input_name(pre), arrays, ctx.check_cancel)
    quantize_static(
        str(pre),
        str(dst),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=cfg.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"TensorQuantOverrides": overrides or {}},
    )
    return pre


def _input_name(path: Path) -> str:
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise StageScopeError(f"qat_int8 needs a model with one input, this one has {len(names)}")
    return names[0]


def _calibrate(module: nn.Module, ctx: StageContext, plan: QuantPlan, n: int) -> None:
    arrays = ctx.data.calibration_arrays(n, seed=ctx.seed)
    device = next(iter(module.parameters())).device
    module.eval()
    with torch.no_grad():
        for i in range(0, len(arrays), _CALIBRATION_BATCH):
            ctx.check_cancel()
            batch = np.concatenate(arrays[i : i + _CALIBRATION_BATCH], axis=0)
            module(torch.from_numpy(batch).to(device))


def overrides_for(
    plan: QuantPlan, folded: nn.Module, reduce_range: bool
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[float, int]]]:
    """``TensorQuantOverrides`` for the learned activation ranges and the weights' scales."""
    overrides: dict[str, list[dict[str, Any]]] = {}
    learned: dict[str, tuple[float, int]] = {}
    for q in plan.quantizers():
        scale, zero = q.qparams()
        overrides[q.tensor] = [{"scale": np.array(scale), "zero_point": np.array(zero)}]
        learned[q.tensor] = (float(scale), int(zero))
    for name, init in plan.weights.items():
        m = folded.get_submodule(name)
        assert isinstance(m, (nn.Conv2d, nn.Linear))
        scales = weight_scales(m.weight, reduce_range)
        chans: list[dict[str, Any]] = [
            {"scale": np.array(s), "zero_point": np.array(0, dtype=np.int8)} for s in scales
        ]
        chans[0]["axis"] = 0
        overrides[init] = chans
    return overrides, learned


def check_overrides(int8: Path, learned: dict[str, tuple[float, int]]) -> list[str]:
    """The learned activation tensors whose scale or zero point the int8 model does not carry."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer}
    bad = []
    for tensor, (scale, zero) in learned.items():
        s, z = inits.get(f"{tensor}_scale"), inits.get(f"{tensor}_zero_point")
        if s is None or z is None or float(s) != scale or int(z) != zero:
            bad.append(tensor)
    return bad


def check_model(facts: ModelFacts, cfg: QatInt8Config) -> None:
    """Refuse an ONNX model: QAT retrains weights, which needs the torch module."""
    if facts.format == "onnx":
        raise ConfigError(
            "method",
            f"quantization-aware training retrains the weights, so it needs a torch model, but "
            f"{facts.label} is ONNX at this point; use ptq_int8 for an ONNX model, or put "
            "qat_int8 before any stage that outputs ONNX",
        )


@register_method(
    "qat_int8",
    config=QatInt8Config,
    summary="Fine-tune with simulated int8 (the exact quantization ONNX Runtime will run), then "
    "quantize with the learned ranges; the result is an int8 ONNX model like ptq_int8's.",
    inputs=("torch",),
    tasks=("classification",),
    output="onnx",
    check_model=lambda facts, cfg: check_model(facts, cfg),
)
def run(ctx: StageContext, cfg: QatInt8Config) -> StageResult:
    """Train ``ctx.model`` with simulated int8 and write ``ctx.work_dir/model_int8.onnx``."""
    module = torch_module(ctx, "qat_int8")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    module.to("cpu").eval()

    # 1. Where ORT will quantize: a dry run on the folded model.
    pairs = find_conv_bn_pairs(module)
    folded = copy.deepcopy(module).eval()
    fold_conv_bn(folded, pairs)
    dry_dir = ctx.work_dir / "dry_run"
    dry_dir.mkdir(exist_ok=True)
    fp32_dry = export_onnx(folded, ctx.model.input_shape, dry_dir / "fp32.onnx", opset=cfg.opset)
    dry_int8 = dry_dir / "int8.onnx"
    pre = _quantize(fp32_dry, dry_int8, ctx, cfg, _DRY_RUN_SAMPLES)
    plan = plan_points(
        module, onnx.load(str(pre)), onnx.load(str(dry_int8)), pairs, cfg.averaging_constant
    )
    del folded
    ctx.report(
        0.03,
        f"simulating {len(plan.quantizers())} activation tensors and {len(plan.weights)} weights "
        f"as ONNX Runtime quantizes them ({len(plan.calibrated)} left to calibration)",
        {},
    )

    # 2. Starting ranges from calibration images (the PTQ ranges), then train.
    weight_fq: list[WeightFakeQuant] = []
    for name in plan.weights:
        fq = WeightFakeQuant(cfg.reduce_range)
        parametrize.register_parametrization(module.get_submodule(name), "weight", fq)
        weight_fq.append(fq)
    hooks = _Hooks(module, plan)
    quantizers = plan.quantizers()
    bns = [module.get_submodule(p.bn) for p in pairs]
    state = {"bn_frozen": cfg.bn_update_epochs == 0}

    def freeze_bn(m: nn.Module, _args: Any) -> None:
        if state["bn_frozen"]:
            m.training = False  # running statistics: the network that will be folded

    bn_handles = [bn.register_forward_pre_hook(freeze_bn) for bn in bns]
    history: list[dict[str, float]] = []
    try:
        _calibrate(module, ctx, plan, cfg.calibration_samples)
        for q in quantizers:
            q.mode = "train" if cfg.observer_update_epochs > 0 else "frozen"
            q.enabled = True
        for fq in weight_fq:
            fq.enabled = True

        def on_report(fraction: float, message: str, metrics: dict[str, Any]) -> None:
            epoch = int(metrics.get("epoch", 0))
            if epoch >= cfg.bn_update_epochs:
                state["bn_frozen"] = True
            if epoch >= cfg.observer_update_epochs:
                for q in quantizers:
                    q.mode = "frozen"
            ctx.report(fraction, message, metrics)

        history = train(
            module,
            ctx.data,
            dataclasses.replace(ctx, report=on_report),
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            progress=(0.05, 0.85),
            label="quantization-aware training",
        )
    finally:
        hooks.remove()
        for h in bn_handles:
            h.remove()
        module.to("cpu").eval()
        for name in plan.weights:
            parametrize.remove_parametrizations(
                module.get_submodule(name), "weight", leave_parametrized=False
            )

    # 3. Fold, export fp32, quantize with the learned ranges.
    ctx.check_cancel()
    fold_conv_bn(module, pairs)
    fp32 = export_onnx(module, ctx.model.input_shape, ctx.work_dir / "fp32.onnx", opset=cfg.opset)
    overrides, learned = overrides_for(plan, module, cfg.reduce_range)
    out = ctx.work_dir / "model_int8.onnx"
    _quantize(fp32, out, ctx, cfg, cfg.calibration_samples, overrides)
    mismatched = check_overrides(out, learned)
    if mismatched:
        raise StageScopeError(
            f"qat_int8: ONNX Runtime did not use the learned ranges of {len(mismatched)} "
            f"tensors (first: {mismatched[0]}); the int8 model would not be the one trained"
        )
    ranges = ctx.work_dir / "qat_ranges.json"
    ranges.write_text(
        json.dumps(
            {t: {"scale": s, "zero_point": z} for t, (s, z) in sorted(learned.items())}, indent=1
        ),
        encoding="utf-8",
    )
    ctx.report(0.95, "quantized with the learned ranges; measuring the int8 model", {})
    val_int8 = accuracy_onnx(out, ctx.data.val_loader(), check_cancel=ctx.check_cancel)
    ctx.report(1.0, f"int8 model: val acc {val_int8:.2f}%", {})

    metrics: dict[str, float] = {
        **history_metrics(history),
        "val_acc_int8": val_int8,
        "fused_pairs": float(len(pairs)),
        "simulated_tensors": float(len(learned)),
        "simulated_weights": float(len(plan.weights)),
        "calibrated_points": float(len(plan.calibrated)),
        "size_bytes_before": float(fp32.stat().st_size),
        "size_bytes_after": float(out.stat().st_size),
        "size_ratio": fp32.stat().st_size / max(out.stat().st_size, 1),
    }
    if history:
        metrics["simulation_gap"] = history[-1]["val_acc"] - val_int8
    model = ModelState(
        input_shape=ctx.model.input_shape,
        num_classes=ctx.model.num_classes,
        task=ctx.model.task,
        module=None,
        onnx_path=out,
        arch=ctx.model.arch,
    )
    return StageResult(
        model=model,
        metrics=metrics,
        artifacts={"onnx_int8": out, "onnx_fp32": fp32, "qat_ranges": ranges},
        history=history,
    )
