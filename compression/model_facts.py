"""What is known about a model without running it: the facts a method's ``check_model`` hook
reads to refuse a recipe before it is queued (BN-scale pruning on a model without BatchNorm).

Facts come from a live :class:`~compression.stage.ModelState`, or from a stored inspection
(``ModelInfo.to_dict()``, as the catalog keeps it), falling back to building the zoo
architecture when the inspection has no layer table yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compression.registry import ModelFormat, TaskType

if TYPE_CHECKING:
    from torch import nn

    from compression.stage import ModelState

# Layer kinds, as compression.inspection names them.
CONV_KINDS = frozenset({"conv", "depthwise_conv"})
LINEAR_KIND = "linear"
BATCHNORM_KIND = "batchnorm"


@dataclass(frozen=True)
class LayerFact:
    """One layer with weights: its qualified module name (or ONNX node name) and kind."""

    name: str
    kind: str  # "conv", "depthwise_conv", "linear", "batchnorm", "norm"
    in_channels: int | None = None
    out_channels: int | None = None


@dataclass(frozen=True)
class ModelFacts:
    """A model as a recipe check sees it, before anything runs."""

    format: ModelFormat
    task: TaskType = "classification"
    arch: str | None = None  # the zoo architecture, when there is one
    input_shape: tuple[int, int, int] | None = None  # C, H, W
    num_classes: int | None = None
    # None: not known (an ONNX file that was not inspected, a torch file with no layer table).
    has_batchnorm: bool | None = None
    # Conv, linear and normalisation layers in module order; empty when not known.
    layers: tuple[LayerFact, ...] = ()

    @property
    def label(self) -> str:
        """How messages name the model: its architecture, or its format."""
        if self.arch:
            return self.arch
        return "this ONNX model" if self.format == "onnx" else "this model"

    def layer_names(self, *kinds: str) -> list[str]:
        """Qualified names of the layers of ``kinds`` (all layers when none are given)."""
        return [layer.name for layer in self.layers if not kinds or layer.kind in kinds]

    def has_conv(self) -> bool | None:
        """Whether the model has convolutions (feature maps); None when the layers are unknown."""
        if not self.layers:
            return None
        return any(layer.kind in CONV_KINDS for layer in self.layers)

    def has_classifier(self) -> bool | None:
        """Whether a linear or conv layer outputs the class logits; None when not known."""
        if not self.layers or self.num_classes is None:
            return None
        return any(
            layer.kind in CONV_KINDS | {LINEAR_KIND} and layer.out_channels == self.num_classes
            for layer in self.layers
        )

    def converted_to(self, fmt: ModelFormat) -> ModelFacts:
        """The facts after a stage turns the model into ``fmt``.

        Exporting to ONNX folds BatchNorm into the convolutions and renames every layer, so the
        torch layer table no longer describes it.
        """
        if fmt == self.format:
            return self
        if fmt == "onnx":
            return dataclasses.replace(self, format="onnx", has_batchnorm=False, layers=())
        return dataclasses.replace(self, format=fmt, has_batchnorm=None, layers=())

    # --- builders -------------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        task: TaskType = "classification",
        arch: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
    ) -> ModelFacts:
        """Read the layer table off a torch module (no forward pass)."""
        layers = tuple(
            LayerFact(name, kind, *_channels(m))
            for name, m in module.named_modules()
            if (kind := _module_kind(m)) is not None
        )
        return cls(
            format="torch",
            task=task,
            arch=arch,
            input_shape=input_shape,
            num_classes=num_classes,
            has_batchnorm=any(layer.kind == BATCHNORM_KIND for layer in layers),
            layers=layers,
        )

    @classmethod
    def from_state(cls, state: ModelState) -> ModelFacts:
        """The facts of a model between stages (a torch module, or an ONNX file)."""
        arch = state.arch.name if state.arch is not None else None
        if state.module is not None:
            return cls.from_module(
                state.module,
                task=state.task,
                arch=arch,
                input_shape=state.input_shape,
                num_classes=state.num_classes,
            )
        info: Mapping[str, Any] = {}
        if state.onnx_path is not None:
            from compression.inspection import inspect_onnx

            info = inspect_onnx(state.onnx_path).to_dict()
        return cls.from_info(
            info,
            format="onnx",
            task=state.task,
            arch=arch,
            input_shape=state.input_shape,
            num_classes=state.num_classes,
        )

    @classmethod
    def from_info(
        cls,
        info: Mapping[str, Any] | None,
        *,
        format: ModelFormat,
        task: TaskType = "classification",
        arch: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
    ) -> ModelFacts:
        """The facts of a stored inspection (``ModelInfo.to_dict()``).

        A torch model of a zoo architecture whose inspection has no layer table yet (a built-in
        sample still training) gets it from building the architecture, which is cheap.
        """
        info = info or {}
        raw_layers = info.get("layers") or []
        layers = tuple(
            LayerFact(
                name=str(row.get("name", "")),
                kind=str(row.get("kind", "")),
                in_channels=_int_or_none(row.get("in_channels")),
                out_channels=_int_or_none(row.get("out_channels")),
            )
            for row in raw_layers
            if isinstance(row, Mapping)
        )
        if num_classes is None:
            num_classes = _int_or_none(info.get("num_classes"))
        if input_shape is None:
            shape = info.get("input_shape")
            if isinstance(shape, (list, tuple)) and len(shape) == 3:
                input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        arch = arch or (str(info["arch"]) if info.get("arch") else None)
        if format == "torch" and not layers and arch:
            from compression.zoo import create_model, has_model

            if has_model(arch):
                module = create_model(
                    arch,
                    num_classes=num_classes or 10,
                    in_channels=input_shape[0] if input_shape else 3,
                )
                return cls.from_module(
                    module, task=task, arch=arch, input_shape=input_shape, num_classes=num_classes
                )
        has_bn: bool | None
        if format == "onnx":
            ops = (info.get("extra") or {}).get("ops")
            has_bn = "BatchNormalization" in ops if isinstance(ops, list) else None
        else:
            has_bn = any(layer.kind == BATCHNORM_KIND for layer in layers) if layers else None
        return cls(
            format=format,
            task=task,
            arch=arch,
            input_shape=input_shape,
            num_classes=num_classes,
            has_batchnorm=has_bn,
            layers=layers,
        )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _module_kind(m: nn.Module) -> str | None:
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
    from torch.nn.modules.conv import _ConvNd

    if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
        return "depthwise_conv"
    if isinstance(m, _ConvNd):
        return "conv"
    if isinstance(m, nn.Linear):
        return LINEAR_KIND
    if isinstance(m, _BatchNorm):  # the layers whose scales BN-scale importance ranks
        return BATCHNORM_KIND
    if isinstance(m, (_NormBase, nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return None


def _channels(m: nn.Module) -> tuple[int | None, int | None]:
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    if isinstance(m, _ConvNd):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, _NormBase):
        return m.num_features, m.num_features
    return None, None
