"""Describe a model for the upload page and reports: counts, MACs and a per-layer table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# torch (and the counters built on it) are imported inside the torch-module functions: the
# upload inspector describes an ONNX file in a fresh process that should not import torch.


@dataclass
class LayerInfo:
    """One layer with weights (convolutions, linear layers, normalisations)."""

    name: str
    kind: str  # "conv", "depthwise_conv", "linear", "batchnorm", ...
    in_channels: int | None
    out_channels: int | None
    kernel: list[int] | None
    params: int
    macs: int | None = None
    output_shape: list[int] | None = None  # one sample, without the batch axis


@dataclass
class ModelInfo:
    """What an inspection found; ``to_dict()`` is JSON-serialisable."""

    format: str  # "torch" | "onnx"
    params: int
    nonzero_params: int
    macs: int | None
    input_shape: list[int]  # C, H, W
    num_classes: int | None
    layers: list[LayerInfo] = field(default_factory=list)
    size_bytes: int | None = None  # the file on disk, when there is one
    arch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kind(m: nn.Module) -> str | None:
    from torch import nn

    if isinstance(m, nn.Conv2d):
        return "depthwise_conv" if m.groups > 1 and m.groups == m.in_channels else "conv"
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return "batchnorm"
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return None


def layer_table(module: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Per-layer facts: output shapes from a forward pass with hooks, MACs from the one counter.

    A layer's MACs are :func:`compression.macs.count_macs_per_module`'s share for it (0 for a
    normalisation, which the counter does not count; ``None`` for a layer the forward skipped).
    """
    import torch
    from torch import nn

    from compression.macs import count_macs_per_module

    per_module = count_macs_per_module(module, input_shape)
    shapes: dict[str, list[int]] = {}
    hooks = []
    for name, m in module.named_modules():
        if _kind(m) is not None:

            def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    shapes[name] = list(out.shape[1:])

            hooks.append(m.register_forward_hook(hook))
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device))
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for name, m in module.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        out_shape = shapes.get(name)
        macs = per_module.get(name)
        in_ch = out_ch = None
        kernel = None
        if isinstance(m, nn.modules.conv._ConvNd):
            in_ch, out_ch = m.in_channels, m.out_channels
            kernel = [int(k) for k in m.kernel_size]
        elif isinstance(m, nn.Linear):
            in_ch, out_ch = m.in_features, m.out_features
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            in_ch = out_ch = m.num_features
        rows.append(
            LayerInfo(
                name=name,
                kind=kind,
                in_channels=in_ch,
                out_channels=out_ch,
                kernel=kernel,
                params=sum(p.numel() for p in m.parameters(recurse=False)),
                macs=macs,
                output_shape=out_shape,
            )
        )
    return rows


def inspect_module(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    num_classes: int | None = None,
    arch: str | None = None,
    path: Path | str | None = None,
) -> ModelInfo:
    """Count params, non-zero params and MACs, and list the layers of a torch module."""
    import torch

    from compression.macs import count_macs
    from compression.metrics import count_nonzero_params, count_params

    if num_classes is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = module.training
        module.eval()
        with torch.no_grad():
            num_classes = int(module(torch.zeros((1, *input_shape), device=device)).shape[-1])
        module.train(was_training)
    return ModelInfo(
        format="torch",
        params=count_params(module),
        nonzero_params=count_nonzero_params(module),
        macs=count_macs(module, input_shape),
        input_shape=list(input_shape),
        num_classes=num_classes,
        layers=layer_table(module, input_shape),
        size_bytes=Path(path).stat().st_size if path is not None else None,
        arch=arch,
    )


def inspect_onnx(path: Path | str, *, allowed_external: frozenset[str] = frozenset()) -> ModelInfo:
    """Describe an ONNX file from its graph: initializer counts and weighted nodes; no MACs.

    External data is refused first (see :func:`compression.model_io.check_onnx_external_data`)
    unless ``allowed_external`` names its file.
    """
    import numpy as np
    from onnx import numpy_helper

    from compression.model_io import check_onnx_external_data

    path = Path(path)
    model = check_onnx_external_data(path, allowed_external=allowed_external)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    params = nonzero = 0
    for t in inits.values():
        arr = numpy_helper.to_array(t, base_dir=str(path.parent))
        params += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    layers = []
    for node in graph.node:
        if node.op_type not in (
            "Conv",
            "ConvInteger",
            "QLinearConv",
            "Gemm",
            "MatMul",
            "MatMulInteger",
            "QLinearMatMul",
        ):
            continue
        weight_idx = 3 if node.op_type.startswith("QLinear") else 1
        if len(node.input) <= weight_idx or node.input[weight_idx] not in inits:
            continue
        dims = list(inits[node.input[weight_idx]].dims)
        node_params = sum(int(np.prod(inits[i].dims)) for i in node.input if i in inits)
        is_conv = "Conv" in node.op_type
        if is_conv:
            out_ch, in_ch, kernel = dims[0], dims[1] if len(dims) > 1 else None, dims[2:]
        else:
            # Gemm in torch exports stores (out, in) with transB=1; MatMul stores (in, out).
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            out_ch, in_ch = (dims[0], dims[1]) if trans_b else (dims[-1], dims[0])
            kernel = None
        layers.append(
            LayerInfo(
                name=node.name or node.output[0],
                kind="conv" if is_conv else "linear",
                in_channels=in_ch,
                out_channels=out_ch,
                kernel=kernel or None,
                params=node_params,
            )
        )

    def dims_of(value_info: Any) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim
        ]

    graph_inputs = [i for i in graph.input if i.name not in inits]
    in_dims = dims_of(graph_inputs[0]) if graph_inputs else []
    out_dims = dims_of(graph.output[0]) if graph.output else []
    input_shape = [int(d) for d in in_dims[1:] if isinstance(d, int)]
    num_classes = out_dims[-1] if out_dims and isinstance(out_dims[-1], int) else None
    extra: dict[str, Any] = {}
    detector = _detector_facts(model)
    if detector is not None:
        # a detector's outputs are head maps, not (batch, classes): the metadata says
        num_classes = detector["num_classes"]
        extra["detection"] = detector
    return ModelInfo(
        format="onnx",
        params=params,
        nonzero_params=nonzero,
        macs=None,
        input_shape=input_shape,
        num_classes=num_classes,
        layers=layers,
        size_bytes=path.stat().st_size,
        extra={
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "producer": model.producer_name,
            "ops": sorted({n.op_type for n in graph.node}),
            **extra,
        },
    )


def _detector_facts(model: Any) -> dict[str, Any] | None:
    """What a detector's stored metadata says (priors left out: thousands of numbers), with
    its outputs' names; None for a model without detection metadata."""
    from compression.detect_post import DetectionError
    from compression.detector_meta import meta_of_proto
    from compression.errors import InvalidModelError

    try:
        meta = meta_of_proto(model)
    except DetectionError as exc:
        raise InvalidModelError(f"the model's detection metadata is refused: {exc}") from exc
    if meta is None:
        return None
    facts = meta.to_dict()
    facts.pop("priors", None)
    facts["priors"] = len(meta.priors) if meta.priors else None
    facts["outputs"] = [o.name for o in model.graph.output]
    return facts
