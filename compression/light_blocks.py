"""Lightweight stand-ins for a standard ``k x k`` convolution (seed 003's lightweight backbone).

Each block takes the place of one ``nn.Conv2d`` (groups 1) and keeps its contract: the same
input and output channels, and the same stride, padding and dilation, so the output has the
same shape and whatever followed the convolution (its BatchNorm, its ReLU, a residual add)
still fits. The convolution's own normalisation and activation stay where they were and act on
the block's output; the blocks only add the normalisation and activation *inside* themselves.

- :class:`DepthwiseSeparableConv` (MobileNetV1, Howard et al. 2017): a depthwise ``k x k``
  convolution, BN, activation, then a pointwise ``1 x 1`` convolution. A ``k x k`` conv from
  ``C_in`` to ``C_out`` channels costs ``k^2 C_in C_out`` MACs per output pixel, this block
  ``k^2 C_in + C_in C_out``: about ``k^2`` (9) times fewer for wide layers.
- :class:`InvertedResidual` (MobileNetV2, Sandler et al. 2018): a pointwise expansion to
  ``t C_in`` channels, BN, activation, a depthwise ``k x k``, BN, activation, then a linear
  pointwise projection to ``C_out``, with an identity shortcut when the shapes match. It costs
  ``t C_in (C_in + k^2 + C_out)`` MACs per pixel (the expansion at the input resolution), so it
  is only cheaper than the convolution for small ``t``: ``t < k^2 C_out / (C_in + k^2 + C_out)``,
  about 4.4 for equal widths at ``k = 3``.
- :class:`SqueezeExcite` (Hu et al. 2018), optional in both: channel attention from globally
  pooled features, applied after the depthwise convolution as in MobileNetV3.

The classes are built from standard layers only, and each can describe itself with
``to_spec()`` and be rebuilt with ``from_spec()``, so a checkpoint of a swapped model rebuilds
it without pickle.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from compression.structure import structural

Activation = Literal["relu", "relu6"]


def make_divisible(value: float, divisor: int = 8, minimum: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10 % down.

    MobileNet's rule: fast kernels like channel counts that are multiples of 8.
    """
    minimum = divisor if minimum is None else minimum
    out = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    raise ValueError(f"unknown activation {name!r}")


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[-1])


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@structural("squeeze_excite")
class SqueezeExcite(nn.Module):
    """Channel attention: ``x * sigmoid(W2 relu(W1 avgpool(x)))`` with a ``reduction`` bottleneck."""

    def __init__(self, channels: int, reduction: int = 4, hidden: int | None = None) -> None:
        super().__init__()
        self.reduction = reduction
        hidden = make_divisible(channels / reduction, 8) if hidden is None else hidden
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    def to_spec(self) -> dict[str, Any]:
        # Widths from the live layers: channel pruning may have narrowed them since __init__.
        return {
            "channels": self.fc1.in_channels,
            "reduction": self.reduction,
            "hidden": self.fc1.out_channels,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SqueezeExcite:
        return cls(int(spec["channels"]), int(spec["reduction"]), int(spec["hidden"]))


class _ConvGeometry(nn.Module):
    """The replaced convolution's contract (kernel, stride, padding, dilation, bias), kept so
    the block is rebuilt exactly. Channel counts are read off the live layers instead: channel
    pruning may narrow a block after it was built, and its spec must describe it as it is."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    bias: bool

    def _set_geometry(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...],
        padding: int | tuple[int, ...],
        dilation: int | tuple[int, ...],
        bias: bool,
    ) -> None:
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.bias = bool(bias)

    def _geometry_spec(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "bias": self.bias,
        }

    def _depthwise(self, channels: int) -> nn.Conv2d:
        return nn.Conv2d(
            channels,
            channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=channels,
            bias=False,
        )


def _geometry_args(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "in_channels": int(spec["in_channels"]),
        "out_channels": int(spec["out_channels"]),
        "kernel_size": tuple(int(v) for v in spec["kernel_size"]),
        "stride": tuple(int(v) for v in spec["stride"]),
        "padding": tuple(int(v) for v in spec["padding"]),
        "dilation": tuple(int(v) for v in spec["dilation"]),
        "bias": bool(spec["bias"]),
    }


def _se_spec(se: nn.Module) -> dict[str, Any]:
    if isinstance(se, SqueezeExcite):
        return {"se": True, "se_reduction": se.reduction, "se_hidden": se.fc1.out_channels}
    return {"se": False}


def _se_args(spec: dict[str, Any]) -> dict[str, Any]:
    if not spec.get("se"):
        return {"se": False}
    return {
        "se": True,
        "se_reduction": int(spec["se_reduction"]),
        "se_hidden": int(spec["se_hidden"]),
    }


@structural("depthwise_separable_conv")
class DepthwiseSeparableConv(_ConvGeometry):
    """Depthwise ``k x k`` (the conv's stride, padding, dilation), BN, activation, [SE],
    pointwise ``1 x 1`` to the conv's output channels (with a bias when the conv had one)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 1,
        dilation: int | tuple[int, ...] = 1,
        bias: bool = False,
        *,
        se: bool = False,
        se_reduction: int = 4,
        se_hidden: int | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self._set_geometry(kernel_size, stride, padding, dilation, bias)
        self.activation = activation
        self.depthwise = self._depthwise(in_channels)
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = _activation(activation)
        self.se: nn.Module = (
            SqueezeExcite(in_channels, se_reduction, se_hidden) if se else nn.Identity()
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=self.bias)
        _init(self)

    @property
    def in_channels(self) -> int:
        return int(self.depthwise.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.pointwise.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.se(self.act(self.bn(self.depthwise(x)))))

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            **self._geometry_spec(),
            **_se_spec(self.se),
            "activation": self.activation,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DepthwiseSeparableConv:
        return cls(**_geometry_args(spec), **_se_args(spec), activation=spec["activation"])


@structural("inverted_residual")
class InvertedResidual(_ConvGeometry):
    """Pointwise expansion (BN, activation), depthwise ``k x k`` (BN, activation), [SE], linear
    pointwise projection; ``x +`` the result when input and output shapes are equal.

    The projection has no BatchNorm of its own: the replaced convolution's BatchNorm, which
    follows the block, normalises it (in MobileNetV2 the projection's BN sits before the add;
    here it sits after, which keeps the network around the block unchanged).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 1,
        dilation: int | tuple[int, ...] = 1,
        bias: bool = False,
        *,
        expansion: float = 2.0,
        hidden_channels: int | None = None,
        se: bool = False,
        se_reduction: int = 4,
        se_hidden: int | None = None,
        activation: Activation = "relu6",
    ) -> None:
        super().__init__()
        self._set_geometry(kernel_size, stride, padding, dilation, bias)
        self.activation = activation
        if hidden_channels is None:
            hidden_channels = (
                in_channels if expansion == 1.0 else make_divisible(in_channels * expansion)
            )
        hidden = int(hidden_channels)
        # Expansion 1 has no expanding layer (MobileNetV2's first block): the depthwise conv
        # works on the input itself.
        self.expand: nn.Module = nn.Identity()
        if expansion != 1.0:
            self.expand = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                _activation(activation),
            )
        elif hidden != in_channels:
            raise ValueError("expansion 1 keeps the input width; hidden_channels must equal it")
        self.expansion = float(expansion)
        self.depthwise = nn.Sequential(
            self._depthwise(hidden), nn.BatchNorm2d(hidden), _activation(activation)
        )
        self.se: nn.Module = SqueezeExcite(hidden, se_reduction, se_hidden) if se else nn.Identity()
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=self.bias)
        # Same shape out as in: stride 1 and a padding that keeps the spatial size.
        k, d, p = self.kernel_size, self.dilation, self.padding
        keeps_size = all(2 * p[i] == d[i] * (k[i] - 1) for i in range(2))
        self.use_residual = self.stride == (1, 1) and in_channels == out_channels and keeps_size
        _init(self)

    @property
    def in_channels(self) -> int:
        first = self.expand[0] if isinstance(self.expand, nn.Sequential) else self.depthwise[0]
        assert isinstance(first, nn.Conv2d)
        return int(first.in_channels)

    @property
    def hidden_channels(self) -> int:
        depthwise = self.depthwise[0]
        assert isinstance(depthwise, nn.Conv2d)
        return int(depthwise.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.project.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            **self._geometry_spec(),
            "expansion": self.expansion,
            "hidden_channels": self.hidden_channels,
            **_se_spec(self.se),
            "activation": self.activation,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> InvertedResidual:
        return cls(
            **_geometry_args(spec),
            expansion=float(spec["expansion"]),
            hidden_channels=int(spec["hidden_channels"]),
            **_se_args(spec),
            activation=spec["activation"],
        )


BlockType = Literal["depthwise_separable", "inverted_residual"]


def light_block_for(
    conv: nn.Conv2d,
    block: BlockType,
    *,
    expansion: float = 2.0,
    se: bool = False,
    se_reduction: int = 4,
    activation: Activation | None = None,
) -> nn.Module:
    """The lightweight block of type ``block`` that can take ``conv``'s place.

    ``activation`` defaults to ReLU for the depthwise separable block (MobileNetV1) and ReLU6
    for the inverted residual (MobileNetV2).
    """
    if conv.groups != 1 or isinstance(conv.padding, str):
        raise ValueError("only ungrouped convolutions with numeric padding can be replaced")
    geometry: dict[str, Any] = {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "bias": conv.bias is not None,
    }
    new: nn.Module
    if block == "depthwise_separable":
        new = DepthwiseSeparableConv(
            **geometry, se=se, se_reduction=se_reduction, activation=activation or "relu"
        )
    elif block == "inverted_residual":
        new = InvertedResidual(
            **geometry,
            expansion=expansion,
            se=se,
            se_reduction=se_reduction,
            activation=activation or "relu6",
        )
    else:
        raise ValueError(f"unknown block type {block!r}")
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)
