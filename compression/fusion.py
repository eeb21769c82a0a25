"""Operator fusion: Conv+BatchNorm folding in torch, ONNX graph simplification, ORT's offline
graph optimisation.

Three passes, in the order they are safe:

1. :func:`fold_conv_bn` folds each BatchNorm into the convolution that feeds it
   (``torch.nn.utils.fuse_conv_bn_eval``), so the network has one layer where it had two, in
   torch, before any export. Quantization-aware training uses it too: the folded conv is what
   ONNX Runtime quantizes.
2. :func:`simplify_onnx` runs onnxslim on a **float** ONNX graph (constant folding, dead and
   identity node elimination, shape-chain simplification). It must run before quantization,
   never after: its passes fold QuantizeLinear/DequantizeLinear pairs on constants back into
   float weights, which silently turns an int8 model into a float one. It refuses a quantized
   graph (:func:`is_quantized`).
3. :func:`ort_optimize` saves ONNX Runtime's own optimised graph
   (``SessionOptions.optimized_model_filepath``). ``basic`` only uses standard ONNX operators
   and runs anywhere; ``extended`` adds ORT contrib operators (FusedConv, FusedGemm, QDQ
   fusions) that only ONNX Runtime runs, tuned to the execution provider it was made with, so an
   ``extended`` file belongs to the ORT version and provider it was saved by (the ORT docs say an
   optimised model should be run where it was optimised). ORT's ``layout`` level
   (NCHWc, hardware-specific) is never saved.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compression.errors import CompressionError

OrtLevel = Literal["basic", "extended"]
# Operators only a quantized graph has.
QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)


class FusionError(CompressionError):
    """A fusion pass cannot run on this model."""


@dataclass(frozen=True)
class FusedPair:
    """One Conv+BatchNorm pair folded into the conv."""

    conv: str
    bn: str


# --- torch: Conv+BN ------------------------------------------------------------------------


def find_conv_bn_pairs(module: nn.Module) -> list[FusedPair]:
    """Every (conv, BatchNorm) pair where the BN reads the conv's output and nothing else does.

    The graph comes from ``torch.fx`` tracing; a model that cannot be traced falls back to
    adjacent ``Conv2d, BatchNorm2d`` children of ``nn.Sequential`` containers, which covers
    the zoo's and torchvision's CNNs.
    """
    modules = dict(module.named_modules())
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:
        return _sequential_pairs(module)
    pairs: list[FusedPair] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append(FusedPair(conv=str(src.target), bn=str(node.target)))
    # A conv or BN called twice (shared weights) cannot be folded once for all its uses.
    convs = [p.conv for p in pairs]
    bns = [p.bn for p in pairs]
    return [p for p in pairs if convs.count(p.conv) == 1 and bns.count(p.bn) == 1]


def _sequential_pairs(module: nn.Module) -> list[FusedPair]:
    pairs = []
    for name, m in module.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        children = list(m.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append(FusedPair(conv=prefix + a_name, bn=prefix + b_name))
    return pairs


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fold_conv_bn(module: nn.Module, pairs: Iterable[FusedPair] | None = None) -> list[FusedPair]:
    """Fold BatchNorm into the preceding conv, in place; the BN becomes ``nn.Identity``.

    The module must be in eval mode (the BN's running statistics are what gets folded).
    Returns the pairs folded.
    """
    if module.training:
        raise FusionError("Conv+BN folding needs the model in eval mode")
    todo = list(pairs) if pairs is not None else find_conv_bn_pairs(module)
    for pair in todo:
        conv = module.get_submodule(pair.conv)
        bn = module.get_submodule(pair.bn)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fused = torch.nn.utils.fuse_conv_bn_eval(conv, bn)
        _set_submodule(module, pair.conv, fused)
        _set_submodule(module, pair.bn, nn.Identity())
    return todo


def folded_copy(module: nn.Module) -> tuple[nn.Module, list[FusedPair]]:
    """An eval-mode CPU copy of ``module`` with every Conv+BN pair folded."""
    copy_ = copy.deepcopy(module).to("cpu").eval()
    return copy_, fold_conv_bn(copy_)


# --- ONNX: simplification and ORT's offline optimisation ------------------------------------


def onnx_ops(path: Path | str) -> list[str]:
    """The operator type of every node, in graph order (top-level graph)."""
    import onnx

    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def node_count(path: Path | str) -> int:
    return len(onnx_ops(path))


def is_quantized(path: Path | str) -> bool:
    """Whether the graph holds quantization operators (QDQ pairs or QLinear/integer ops)."""
    return any(op in QUANT_OPS for op in onnx_ops(path))


def simplify_onnx(src: Path | str, dst: Path | str) -> Path:
    """Simplify a float ONNX graph with onnxslim and write it to ``dst``.

    Raises:
        FusionError: the graph is quantized (simplification would strip its Q/DQ nodes).
    """
    import onnx
    import onnxslim

    if is_quantized(src):
        raise FusionError(
            "graph simplification runs before quantization, never after: this model is "
            "already quantized and simplifying it would fold its Q/DQ nodes back to float"
        )
    dst = Path(dst)
    model = onnxslim.slim(str(src))
    if model is None:  # pragma: no cover - onnxslim returns the model when no output is given
        raise FusionError("onnxslim returned no model")
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def ort_optimize(src: Path | str, dst: Path | str, level: OrtLevel = "basic") -> Path:
    """Save ONNX Runtime's optimised graph of ``src`` (CPU provider) to ``dst``."""
    import onnxruntime as ort

    dst = Path(dst)
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if level == "basic"
        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    if not dst.exists():  # pragma: no cover - ORT writes it while creating the session
        raise FusionError(f"ONNX Runtime did not write the optimised model to {dst}")
    return dst
