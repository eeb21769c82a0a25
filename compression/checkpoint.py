"""Stage checkpoints without pickle: safetensors weights plus a JSON sidecar, or the ONNX file.

A pruned model has physically fewer channels than its zoo architecture, so the sidecar keeps the
architecture and loading resizes the rebuilt module's layers to the saved tensor shapes before a
strict ``load_state_dict``. A decomposed model has other layers altogether (one conv became
three): the sidecar's ``structure`` (see :mod:`compression.structure`) describes the replaced
subtrees as JSON and loading rebuilds them first. Plain models have no ``structure`` key, so
older checkpoints load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.errors import CompressionError, InvalidModelError
from compression.stage import ArchSpec, ModelState
from compression.structure import StructureError, apply_structure, structure_spec

FORMAT_VERSION = 1


class CheckpointError(CompressionError):
    """A checkpoint is missing, damaged, or does not fit its architecture."""


def sha256_file(path: Path | str, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies: safetensors refuses tensors that share storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def resize_to_shapes(module: nn.Module, shapes: Mapping[str, tuple[int, ...] | list[int]]) -> None:
    """Resize ``module``'s parameters and buffers in place to ``shapes`` (state-dict keys).

    Tensors are replaced by uninitialised ones of the saved shape (``load_state_dict`` fills
    them), and the size attributes of Conv, Linear and normalisation layers are updated so the
    module still computes correctly. Depthwise convolutions keep ``groups == channels``.
    """
    for mod_name, mod in module.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        changed = False
        for pname, p in list(mod.named_parameters(recurse=False)):
            want = shapes.get(prefix + pname)
            if want is not None and tuple(p.shape) != tuple(want):
                setattr(
                    mod,
                    pname,
                    nn.Parameter(
                        torch.empty(tuple(want), dtype=p.dtype, device=p.device),
                        requires_grad=p.requires_grad,
                    ),
                )
                changed = True
        for bname, b in list(mod.named_buffers(recurse=False)):
            want = shapes.get(prefix + bname)
            if b is not None and want is not None and tuple(b.shape) != tuple(want):
                mod.register_buffer(bname, torch.empty(tuple(want), dtype=b.dtype, device=b.device))
                changed = True
        if changed:
            _fix_size_attributes(mod)


def _fix_size_attributes(mod: nn.Module) -> None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        w = mod.weight
        transposed = bool(mod.transposed)
        out_ch = w.shape[1] * mod.groups if transposed else w.shape[0]
        in_per_group = w.shape[0] // mod.groups if transposed else w.shape[1]
        was_depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        if was_depthwise and in_per_group == 1 and not transposed:
            mod.groups = out_ch
        mod.out_channels = out_ch
        mod.in_channels = in_per_group * mod.groups if not transposed else w.shape[0]
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = int(mod.weight.shape[0]), int(mod.weight.shape[1])
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        ref = mod.weight if mod.weight is not None else mod.running_mean
        assert ref is not None
        mod.num_features = int(ref.shape[0])
    elif isinstance(mod, nn.GroupNorm) and mod.weight is not None:
        mod.num_channels = int(mod.weight.shape[0])
    elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
        mod.normalized_shape = tuple(mod.weight.shape)


def load_state_dict_resized(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Resize ``module`` to ``state``'s shapes, then load it strictly.

    Raises:
        InvalidModelError: keys are missing or unexpected (names them).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InvalidModelError(describe_key_mismatch(missing, unexpected, []))
    resize_to_shapes(module, {k: tuple(v.shape) for k, v in state.items()})
    module.load_state_dict(dict(state), strict=True)


def describe_key_mismatch(
    missing: list[str],
    unexpected: list[str],
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    """One readable line about state-dict keys that do not fit an architecture."""

    def few(items: list[str]) -> str:
        shown = ", ".join(items[:8])
        return shown + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(
            "shape mismatch: "
            + few([f"{k} file {list(got)} vs model {list(want)}" for k, got, want in shapes])
        )
    return "the state dict does not fit the architecture; " + "; ".join(parts)


def save_checkpoint(model: ModelState, stem: Path | str) -> Path:
    """Write ``stem.safetensors`` (torch) or ``stem.onnx`` (ONNX), plus ``stem.json``.

    Returns:
        The path of the weights file.
    """
    from safetensors.torch import save_file

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "format": model.format,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "task": model.task,
        "arch": None,
    }
    if model.arch is not None:
        meta["arch"] = {
            "name": model.arch.name,
            "num_classes": model.arch.num_classes,
            "in_channels": model.arch.in_channels,
        }
        if model.arch.options:
            meta["arch"]["options"] = dict(model.arch.options)
    if model.module is not None:
        if model.arch is None:
            raise CheckpointError("a torch model without a zoo architecture cannot be checkpointed")
        try:
            structure = structure_spec(model.module)
        except StructureError as exc:
            raise CheckpointError(f"the model cannot be checkpointed: {exc}") from exc
        if structure:
            meta["structure"] = structure
        weights = stem.with_suffix(".safetensors")
        state = plain_state_dict(model.module)
        meta["shapes"] = {k: list(v.shape) for k, v in state.items()}
        tmp = weights.with_name(weights.name + ".tmp")
        save_file(state, str(tmp), metadata={"edgeslim": "checkpoint"})
        os.replace(tmp, weights)
    else:
        if model.onnx_path is None:
            raise CheckpointError("the model state holds neither a module nor an ONNX file")
        weights = stem.with_suffix(".onnx")
        if Path(model.onnx_path).resolve() != weights.resolve():
            tmp = weights.with_name(weights.name + ".tmp")
            shutil.copyfile(model.onnx_path, tmp)
            os.replace(tmp, weights)
    meta["weights_file"] = weights.name
    meta["sha256"] = sha256_file(weights)
    _atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, indent=2))
    return weights


def _arch_spec(raw: dict[str, Any]) -> ArchSpec:
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise CheckpointError("checkpoint metadata: arch.options must be an object")
    return ArchSpec(
        name=str(raw["name"]),
        num_classes=int(raw["num_classes"]),
        in_channels=int(raw["in_channels"]),
        options=tuple(sorted(options.items())),
    )


def load_checkpoint(path: Path | str, *, verify: bool = True) -> ModelState:
    """Load a checkpoint written by :func:`save_checkpoint` (give the weights or the JSON path).

    Raises:
        CheckpointError: the sidecar or the weights are missing, damaged or do not fit.
    """
    from safetensors.torch import load_file

    from compression.zoo import create_model

    path = Path(path)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path.name} is unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {meta_path.name} has an unknown format version")
    weights = meta_path.with_name(meta["weights_file"])
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights.name} are missing")
    if verify and sha256_file(weights) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint weights {weights.name} do not match their sha256")
    arch = _arch_spec(meta["arch"]) if meta.get("arch") else None
    input_shape = tuple(int(v) for v in meta["input_shape"])
    assert len(input_shape) == 3
    base = {
        "input_shape": (input_shape[0], input_shape[1], input_shape[2]),
        "num_classes": int(meta["num_classes"]),
        "task": meta.get("task", "classification"),
        "arch": arch,
    }
    if meta["format"] == "onnx":
        return ModelState(onnx_path=weights, **base)
    if arch is None:
        raise CheckpointError("torch checkpoint without an architecture")
    module = create_model(arch.name, **arch.build_kwargs())
    try:
        apply_structure(module, meta.get("structure") or [])
    except StructureError as exc:
        raise CheckpointError(f"checkpoint {meta_path.name} does not rebuild: {exc}") from exc
    try:
        state = load_file(str(weights))
        load_state_dict_resized(module, state)
    except (InvalidModelError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {weights.name} does not load: {exc}") from exc
    module.eval()
    return ModelState(module=module, **base)
