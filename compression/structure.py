"""Models whose structure a method changed: record it, describe it as JSON, rebuild it.

A checkpoint keeps weights (safetensors) and the zoo architecture they fit. Pruning only changes
channel counts, which the saved tensor shapes say; a decomposition replaces a layer by a different
subtree (one conv becomes three), which no shape can say. So a method that swaps a submodule calls
:func:`replace_module`, the root remembers the dotted path, :func:`structure_spec` describes every
replaced subtree from a whitelist of standard layers (plus classes registered with
:func:`structural`), and :func:`apply_structure` rebuilds them on a fresh zoo model before the
weights load. Nothing is pickled and nothing named by a file is imported: a spec can only build
the whitelisted types and the registered classes.

The record is a plain list attribute on the root module, so ``copy.deepcopy`` (the pipeline copies
models between stages) keeps it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from torch import nn

from compression.errors import CompressionError

REPLACED_ATTR = "_edgeslim_replaced"
SPEC_VERSION = 1

# Modules imported (once) when a spec names a registered class that is not known yet: importing
# the method package registers every method's layer classes. Fixed here, never read from a file.
_PROVIDERS = ("compression.methods",)


class StructureError(CompressionError):
    """A structure cannot be described or rebuilt (an unknown layer type, a bad path)."""


class StructuralModule(Protocol):
    def to_spec(self) -> dict[str, Any]: ...


_M = TypeVar("_M", bound=type[nn.Module])
_REGISTERED: dict[str, type[nn.Module]] = {}


def structural(name: str) -> Callable[[_M], _M]:
    """Register a custom layer class that checkpoints can rebuild.

    The class gives ``to_spec(self) -> dict`` (JSON-able constructor arguments) and a classmethod
    ``from_spec(spec) -> module`` that builds it with parameters of the right shapes (their values
    come from the checkpoint's weights afterwards). Use it for layers that reshape or contract in
    ``forward`` (a tensor-train layer, squeeze-excitation) and so are no Sequential of standard
    layers.
    """

    def deco(cls: _M) -> _M:
        if not callable(getattr(cls, "to_spec", None)) or not callable(
            getattr(cls, "from_spec", None)
        ):
            raise TypeError(f"{cls.__name__} needs to_spec() and from_spec() to be structural")
        other = _REGISTERED.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"structural name {name!r} is taken by {other.__qualname__}")
        _REGISTERED[name] = cls
        cls._edgeslim_structural_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def registered_structural(name: str) -> type[nn.Module] | None:
    """The class registered under ``name``, importing the method package once if needed."""
    if name not in _REGISTERED:
        for provider in _PROVIDERS:
            importlib.import_module(provider)
    return _REGISTERED.get(name)


# --- recording ---------------------------------------------------------------------------------


def _split(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise StructureError(f"{path!r} is not a dotted submodule path")
    return parts


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at the dotted ``path`` (``layer1.0.conv1``; Sequential indices included)."""
    mod = root
    for part in _split(path):
        child = mod._modules.get(part)
        if child is None:
            raise StructureError(f"the model has no submodule {path!r} (no {part!r})")
        mod = child
    return mod


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``path`` under ``root`` and record the path on ``root``.

    ``root`` must be the model that gets checkpointed (the paths are relative to it). A path under
    an already replaced one needs no record of its own (the outer subtree is described whole); a
    path above replaced ones supersedes them.
    """
    parts = _split(path)
    parent = get_module(root, ".".join(parts[:-1])) if len(parts) > 1 else root
    if parts[-1] not in parent._modules:
        raise StructureError(f"the model has no submodule {path!r}")
    parent._modules[parts[-1]] = new
    recorded = list(getattr(root, REPLACED_ATTR, []))
    if any(path == r or path.startswith(r + ".") for r in recorded):
        return
    recorded = [r for r in recorded if not r.startswith(path + ".")]
    recorded.append(path)
    object.__setattr__(root, REPLACED_ATTR, recorded)


def replaced_paths(root: nn.Module) -> list[str]:
    """The recorded paths, outermost only, in recording order."""
    recorded = list(getattr(root, REPLACED_ATTR, []))
    out = []
    for path in recorded:
        if any(path.startswith(r + ".") for r in recorded if r != path):
            continue
        out.append(path)
    return out


# --- describing ---------------------------------------------------------------------------------


def _pair(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _conv_args(m: nn.Conv2d | nn.Conv1d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": _pair(m.kernel_size),
        "stride": _pair(m.stride),
        "padding": _pair(m.padding),
        "dilation": _pair(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn_args(m: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _inplace(m: nn.Module) -> dict[str, Any]:
    return {"inplace": bool(getattr(m, "inplace", False))}


def _pool_args(m: nn.MaxPool2d | nn.AvgPool2d) -> dict[str, Any]:
    args: dict[str, Any] = {
        "kernel_size": _pair(m.kernel_size),
        "stride": _pair(m.stride),
        "padding": _pair(m.padding),
        "ceil_mode": m.ceil_mode,
    }
    if isinstance(m, nn.MaxPool2d):
        args["dilation"] = _pair(m.dilation)
    else:
        args["count_include_pad"] = m.count_include_pad
    return args


def _tuple_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


# type name -> (class, arguments of an instance). Exact types only: a subclass may compute
# something else, so it must register itself.
_STANDARD: dict[str, tuple[type[nn.Module], Callable[[Any], dict[str, Any]]]] = {
    "Conv2d": (nn.Conv2d, _conv_args),
    "Conv1d": (nn.Conv1d, _conv_args),
    "Linear": (
        nn.Linear,
        lambda m: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        },
    ),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_args),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_args),
    "ReLU": (nn.ReLU, _inplace),
    "ReLU6": (nn.ReLU6, _inplace),
    "Hardswish": (nn.Hardswish, _inplace),
    "Hardsigmoid": (nn.Hardsigmoid, _inplace),
    "SiLU": (nn.SiLU, _inplace),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "LeakyReLU": (
        nn.LeakyReLU,
        lambda m: {"negative_slope": m.negative_slope, "inplace": m.inplace},
    ),
    "Identity": (nn.Identity, lambda m: {}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p, "inplace": m.inplace}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": _pair(m.output_size)}),
    "MaxPool2d": (nn.MaxPool2d, _pool_args),
    "AvgPool2d": (nn.AvgPool2d, _pool_args),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
}
_BY_CLASS = {cls: name for name, (cls, _) in _STANDARD.items()}


def describe_module(module: nn.Module, *, where: str = "") -> dict[str, Any]:
    """A JSON-able description of ``module`` (recursively for Sequential).

    Raises:
        StructureError: a layer type is neither standard nor registered (named with its path).
    """
    name = getattr(type(module), "_edgeslim_structural_name", None)
    if name is not None and _REGISTERED.get(name) is type(module):
        spec = cast(StructuralModule, module).to_spec()
        return {"type": "registered", "name": name, "spec": spec}
    if type(module) is nn.Sequential:
        return {
            "type": "Sequential",
            "children": [
                [child, describe_module(sub, where=f"{where}.{child}" if where else child)]
                for child, sub in module._modules.items()
                if sub is not None
            ],
        }
    std = _BY_CLASS.get(type(module))
    if std is None:
        raise StructureError(
            f"cannot describe the layer at {where or 'the root'!r}: {type(module).__qualname__} "
            "is neither a standard layer nor registered with @structural"
        )
    if module._modules:
        raise StructureError(f"the {std} at {where!r} has unexpected child modules")
    return {"type": std, "args": _STANDARD[std][1](module)}


def build_module(node: dict[str, Any], *, where: str = "") -> nn.Module:
    """Build a module from :func:`describe_module`'s description (weights uninitialised/random).

    Raises:
        StructureError: an unknown type or bad arguments (named with its path).
    """
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise StructureError(f"the structure entry at {where!r} is malformed")
    kind = node["type"]
    try:
        if kind == "Sequential":
            seq = nn.Sequential()
            for child, sub in node.get("children", []):
                seq.add_module(str(child), build_module(sub, where=f"{where}.{child}"))
            return seq
        if kind == "registered":
            cls = registered_structural(str(node.get("name")))
            if cls is None:
                raise StructureError(
                    f"the layer at {where!r} is a {node.get('name')!r}, which no installed "
                    "method registers"
                )
            return cast(nn.Module, cls.from_spec(dict(node.get("spec") or {})))  # type: ignore[attr-defined]
        if kind not in _STANDARD:
            raise StructureError(f"the layer at {where!r} has an unknown type {kind!r}")
        cls, _ = _STANDARD[kind]
        return cls(**_tuple_args(dict(node.get("args") or {})))
    except StructureError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise StructureError(f"the {kind} at {where!r} cannot be built: {exc}") from exc


def structure_spec(root: nn.Module) -> list[dict[str, Any]]:
    """Every replaced subtree of ``root`` as ``[{"path": ..., "module": {...}}]`` (JSON-able).

    Empty for a model no method restructured.
    """
    out = []
    for path in replaced_paths(root):
        out.append({"path": path, "module": describe_module(get_module(root, path), where=path)})
    return out


def apply_structure(root: nn.Module, spec: list[dict[str, Any]]) -> None:
    """Rebuild the replaced subtrees of ``spec`` on ``root`` (a fresh zoo model), in order."""
    if not isinstance(spec, list):
        raise StructureError("the structure is not a list of replaced subtrees")
    for entry in spec:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise StructureError("a structure entry has no path")
        path = entry["path"]
        replace_module(root, path, build_module(entry.get("module", {}), where=path))
