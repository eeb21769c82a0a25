"""Darknet ``.cfg`` files read into PyTorch modules: the YOLOv3 family, written here.

The cfg text is a specification of the network (Redmon & Farhadi, "YOLOv3: An Incremental
Improvement", 2018); this module is our own reader and builder of it, not a port of any other
implementation. Supported sections: ``[net]``, ``[convolutional]``, ``[shortcut]``, ``[route]``,
``[upsample]``, ``[maxpool]`` and ``[yolo]``. Anything else, an unknown key or a bad value is
refused with a :class:`~compression.errors.ConfigError` naming the line and the section.

The built :class:`DarknetDetector` keeps one contract that post-processing, training, metrics
and export rely on: ``model(x)`` for ``x`` of shape ``(N, C, S, S)`` (floats in [0, 1]) returns
a list with one raw tensor per ``[yolo]`` section, in cfg order (coarsest stride first for the
YOLOv3 files), each ``(N, A * (5 + num_classes), H, W)`` with the channels of anchor ``a`` at
``a * (5 + C) + [tx, ty, tw, th, obj, c0 .. cC-1]``. Nothing is activated: decode with
``x = (sigmoid(tx) + cx) * stride``, ``w = anchor_w * exp(tw)``, ``obj = sigmoid(obj)``,
``p(class) = sigmoid(c)``. ``model.anchors`` are in input pixels at ``model.input_size``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from compression.errors import ConfigError

__all__ = [
    "CFG_NAMES",
    "DarknetDetector",
    "Section",
    "build_darknet",
    "load_cfg_text",
    "parse_cfg",
    "scale_channels",
]

# The cfg files shipped in compression/cfg/.
CFG_NAMES = ("yolov3", "yolov3-tiny")

# Keys each section understands. Keys that only steer Darknet's own training (augmentation,
# optimiser, loss thresholds) are accepted and ignored: our training has its own settings.
_NET_IGNORED = {
    "batch",
    "subdivisions",
    "momentum",
    "decay",
    "angle",
    "saturation",
    "exposure",
    "hue",
    "learning_rate",
    "burn_in",
    "max_batches",
    "policy",
    "steps",
    "scales",
}
_KEYS: dict[str, set[str]] = {
    "net": {"width", "height", "channels"} | _NET_IGNORED,
    "convolutional": {
        "batch_normalize",
        "filters",
        "size",
        "stride",
        "pad",
        "padding",
        "activation",
    },
    "shortcut": {"from", "activation"},
    "route": {"layers"},
    "upsample": {"stride"},
    "maxpool": {"size", "stride"},
    "yolo": {
        "mask",
        "anchors",
        "classes",
        "num",
        "jitter",
        "ignore_thresh",
        "truth_thresh",
        "random",
    },
}
_ACTIVATIONS = ("leaky", "linear")
_MAX_CFG_CHARS = 1_000_000
_MAX_SECTIONS = 2000
_MAX_CHANNELS = 65536
_LEAKY_SLOPE = 0.1  # Darknet's leaky activation


@dataclass
class Section:
    """One ``[name]`` block of a cfg: its options with the line each was set on."""

    kind: str
    index: int  # position among all sections, 0 = the first one (usually [net])
    line: int  # 1-based line of the [name] header
    options: dict[str, tuple[str, int]] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        line = self.options[key][1] if key is not None and key in self.options else self.line
        layer = f", layer {self.index - 1}" if self.kind != "net" else ""
        return f"line {line}, section {self.index} [{self.kind}]{layer}"

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError("cfg", f"{self.where(key)}: {message}")

    def raw(self, key: str) -> str | None:
        item = self.options.get(key)
        return item[0] if item is not None else None

    def integer(
        self, key: str, default: int | None = None, *, low: int = 0, high: int = 1 << 20
    ) -> int:
        text = self.raw(key)
        if text is None:
            if default is None:
                raise self.error(f"missing {key}=")
            return default
        try:
            value = int(text)
        except ValueError:
            raise self.error(f"{key} must be an integer, got {text!r}", key) from None
        if not low <= value <= high:
            raise self.error(f"{key} must be between {low} and {high}, got {value}", key)
        return value

    def integers(self, key: str) -> list[int]:
        text = self.raw(key)
        if text is None or not text.strip():
            raise self.error(f"missing {key}=")
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise self.error(f"{key} must be comma-separated integers, got {text!r}", key) from None

    def numbers(self, key: str) -> list[float]:
        text = self.raw(key)
        if text is None or not text.strip():
            raise self.error(f"missing {key}=")
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise self.error(f"{key} must be comma-separated numbers, got {text!r}", key) from None
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise self.error(f"{key} must be positive numbers, got {text!r}", key)
        return values


_HEADER = re.compile(r"^\[([A-Za-z_]+)\]$")


def parse_cfg(text: str) -> list[Section]:
    """Split cfg text into sections. Checks the syntax and the keys; values are checked when built.

    Raises:
        ConfigError: a line that is neither ``[section]`` nor ``key=value``, an unknown section or
            key, a key set twice, or a key before the first section.
    """
    if len(text) > _MAX_CFG_CHARS:
        raise ConfigError("cfg", f"is {len(text)} characters; at most {_MAX_CFG_CHARS}")
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        header = _HEADER.match(line)
        if header:
            kind = header.group(1).lower()
            if kind not in _KEYS:
                raise ConfigError(
                    "cfg",
                    f"line {number}, section {len(sections)}: unknown section [{kind}]; "
                    f"supported: {', '.join(f'[{k}]' for k in _KEYS)}",
                )
            if len(sections) >= _MAX_SECTIONS:
                raise ConfigError("cfg", f"line {number}: more than {_MAX_SECTIONS} sections")
            sections.append(Section(kind=kind, index=len(sections), line=number))
            continue
        if "=" not in line:
            raise ConfigError(
                "cfg", f"line {number}: expected [section] or key=value, got {line!r}"
            )
        if not sections:
            raise ConfigError("cfg", f"line {number}: {line!r} comes before the first [section]")
        key, value = (part.strip() for part in line.split("=", 1))
        section = sections[-1]
        if key not in _KEYS[section.kind]:
            raise ConfigError(
                "cfg",
                f"line {number}, section {section.index} [{section.kind}]: unknown key {key!r}; "
                f"known: {', '.join(sorted(_KEYS[section.kind]))}",
            )
        if key in section.options:
            raise ConfigError(
                "cfg",
                f"line {number}, section {section.index} [{section.kind}]: {key} is set twice "
                f"(first on line {section.options[key][1]})",
            )
        section.options[key] = (value, number)
    if not sections or sections[0].kind != "net":
        raise ConfigError("cfg", "must start with a [net] section")
    for extra in sections[1:]:
        if extra.kind == "net":
            raise extra.error("[net] may appear only once, first")
    return sections


def load_cfg_text(name: str) -> str:
    """The text of a cfg shipped with the library (``yolov3`` or ``yolov3-tiny``)."""
    if name not in CFG_NAMES:
        raise ConfigError("cfg", f"unknown cfg {name!r}; shipped: {', '.join(CFG_NAMES)}")
    return resources.files("compression").joinpath("cfg", f"{name}.cfg").read_text("utf-8")


def scale_channels(filters: int, width: float) -> int:
    """``filters * width`` rounded to a multiple of 8, at least 8."""
    return max(8, round(filters * width / 8) * 8)


# --- layers ---------------------------------------------------------------------------------


class ConvBlock(nn.Sequential):
    """``[convolutional]``: conv, then BatchNorm (with ``batch_normalize=1``) and leaky ReLU."""


class Shortcut(nn.Module):
    """``[shortcut]``: adds the output of an earlier layer to the previous one."""

    def __init__(self, source: int) -> None:
        super().__init__()
        self.source = source  # absolute layer index

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return x + other


class Route(nn.Module):
    """``[route]``: the output of one earlier layer, or several concatenated on channels."""

    def __init__(self, sources: tuple[int, ...]) -> None:
        super().__init__()
        self.sources = sources  # absolute layer indices

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class MaxPoolSame(nn.Module):
    """``[maxpool]`` with Darknet's sizes: the output is ``ceil(input / stride)``.

    Darknet pads by ``size - 1`` (right and bottom for even sizes) and ignores the cells outside
    the image; repeating the edge row and column gives the same maximum. YOLOv3-tiny's ``size=2
    stride=1`` pool keeps 13x13 at 416 this way.
    """

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        extra = max(0, size - stride)
        before = extra // 2
        self.pad: nn.Module = (
            nn.ReplicationPad2d((before, extra - before, before, extra - before))
            if extra
            else nn.Identity()
        )
        self.pool = nn.MaxPool2d(size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pad(x))


class YoloLevel(nn.Module):
    """``[yolo]``: passes the raw head output through; carries the level's anchors and stride."""

    def __init__(self, anchors: tuple[tuple[float, float], ...], stride: int) -> None:
        super().__init__()
        self.anchors = anchors
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# --- the detector ---------------------------------------------------------------------------


@dataclass
class _Shape:
    channels: int
    stride: int


class DarknetDetector(nn.Module):
    """A network built from Darknet cfg sections; see the module docstring for its outputs."""

    task = "detection"
    family = "yolo"

    def __init__(
        self,
        sections: list[Section],
        *,
        num_classes: int | None = None,
        width: float = 1.0,
        input_size: int | None = None,
        in_channels: int | None = None,
        name: str = "darknet",
    ) -> None:
        super().__init__()
        if not (isinstance(width, int | float) and math.isfinite(width) and 0 < width <= 4):
            raise ConfigError("width", f"must be a number in (0, 4], got {width!r}")
        if num_classes is not None and not 1 <= num_classes <= 10000:
            raise ConfigError("num_classes", f"must be between 1 and 10000, got {num_classes}")
        net, layers = sections[0], sections[1:]
        if not layers:
            raise net.error("the cfg has no layers after [net]")
        cfg_width = net.integer("width", 416, low=32, high=8192)
        cfg_height = net.integer("height", cfg_width, low=32, high=8192)
        if cfg_height != cfg_width:
            raise net.error(
                f"only square inputs are supported: width={cfg_width}, height={cfg_height}"
            )
        self.name = name
        self.width = float(width)
        self.in_channels = in_channels or net.integer("channels", 3, low=1, high=64)
        self.input_size = input_size if input_size is not None else cfg_width
        if not isinstance(self.input_size, int) or not 32 <= self.input_size <= 8192:
            raise ConfigError(
                "input_size", f"must be a positive multiple of 32, got {self.input_size!r}"
            )
        self.cfg_input_size = cfg_width
        classes = self._classes(layers, num_classes)
        self.num_classes = classes

        # The conv right before each [yolo] is that level's head: A * (5 + C) filters.
        heads = {i - 1: len(self._anchors(s)[1]) for i, s in enumerate(layers) if s.kind == "yolo"}
        self._cfg_classes_kept = num_classes is None
        shapes: list[_Shape] = []
        modules: list[nn.Module] = []
        level_anchors: list[tuple[tuple[float, float], ...]] = []
        level_strides: list[int] = []
        scale = self.input_size / cfg_width
        current = _Shape(self.in_channels, 1)
        for i, sec in enumerate(layers):
            if sec.kind == "convolutional":
                module, current = self._conv(
                    sec, current, width, head_anchors=heads.get(i), classes=classes
                )
            elif sec.kind == "shortcut":
                source = self._resolve(sec, "from", sec.integer("from", low=-i, high=i - 1), i)
                if sec.raw("activation") not in (None, "linear"):
                    raise sec.error("only activation=linear is supported", "activation")
                if (shapes[source].channels, shapes[source].stride) != (
                    current.channels,
                    current.stride,
                ):
                    raise sec.error(
                        f"adds layer {source} ({shapes[source].channels} channels, stride "
                        f"{shapes[source].stride}) to layer {i - 1} ({current.channels} channels, "
                        f"stride {current.stride}): shapes differ",
                        "from",
                    )
                module = Shortcut(source)
            elif sec.kind == "route":
                sources = tuple(self._resolve(sec, "layers", v, i) for v in sec.integers("layers"))
                if not sources:
                    raise sec.error("layers= names no layer", "layers")
                strides = {shapes[s].stride for s in sources}
                if len(strides) != 1:
                    raise sec.error(
                        f"joins layers {', '.join(map(str, sources))} of different strides "
                        f"{sorted(strides)}",
                        "layers",
                    )
                current = _Shape(sum(shapes[s].channels for s in sources), strides.pop())
                module = Route(sources)
            elif sec.kind == "upsample":
                factor = sec.integer("stride", 2, low=1, high=32)
                if current.stride % factor:
                    raise sec.error(
                        f"upsamples stride {current.stride} by {factor}: not a whole stride",
                        "stride",
                    )
                current = _Shape(current.channels, current.stride // factor)
                module = nn.Upsample(scale_factor=factor, mode="nearest")
            elif sec.kind == "maxpool":
                size = sec.integer("size", 2, low=1, high=32)
                stride = sec.integer("stride", size, low=1, high=32)
                current = _Shape(current.channels, current.stride * stride)
                module = MaxPoolSame(size, stride)
            elif sec.kind == "yolo":
                anchors, mask = self._anchors(sec)
                head = layers[i - 1] if i > 0 else None
                if head is None or head.kind != "convolutional":
                    raise sec.error("must follow the [convolutional] layer that is its head")
                picked = tuple((anchors[m][0] * scale, anchors[m][1] * scale) for m in mask)
                level_anchors.append(picked)
                level_strides.append(current.stride)
                module = YoloLevel(picked, current.stride)
            else:  # pragma: no cover - parse_cfg only lets known sections through
                raise sec.error("unsupported section")
            shapes.append(current)
            modules.append(module)
        if not level_anchors:
            raise ConfigError("cfg", "has no [yolo] section: a detector needs at least one level")
        max_stride = max(s.stride for s in shapes)
        if self.input_size < max_stride or self.input_size % 32 or self.input_size % max_stride:
            raise ConfigError(
                "input_size",
                f"must be a positive multiple of 32 (and of the network's stride {max_stride}), "
                f"got {self.input_size}",
            )
        self.layers = nn.ModuleList(modules)
        self.anchors: tuple[tuple[tuple[float, float], ...], ...] = tuple(level_anchors)
        self.strides: tuple[int, ...] = tuple(level_strides)
        # Outputs later layers read back; the rest are dropped as soon as they are used.
        self._kept: set[int] = set()
        for m in modules:
            if isinstance(m, Route):
                self._kept.update(m.sources)
            elif isinstance(m, Shortcut):
                self._kept.add(m.source)
        self._init_heads()

    @staticmethod
    def _classes(layers: list[Section], override: int | None) -> int:
        found: set[int] = set()
        for sec in layers:
            if sec.kind == "yolo":
                found.add(sec.integer("classes", low=1, high=10000))
        if len(found) > 1:
            raise ConfigError("cfg", f"[yolo] sections disagree on classes: {sorted(found)}")
        if override is not None:
            return override
        if not found:
            raise ConfigError("cfg", "has no [yolo] section: a detector needs at least one level")
        return found.pop()

    @staticmethod
    def _resolve(sec: Section, key: str, value: int, i: int) -> int:
        index = i + value if value < 0 else value
        if not 0 <= index < i:
            raise sec.error(
                f"{key} refers to layer {value} ({'absolute' if value >= 0 else 'relative'}), "
                f"which is not an earlier layer (this is layer {i})",
                key,
            )
        return index

    @staticmethod
    def _anchors(sec: Section) -> tuple[list[tuple[float, float]], list[int]]:
        values = sec.numbers("anchors")
        if len(values) % 2:
            raise sec.error(
                f"anchors needs width,height pairs; got {len(values)} numbers", "anchors"
            )
        anchors = [(values[k], values[k + 1]) for k in range(0, len(values), 2)]
        num = sec.integer("num", len(anchors), low=1, high=1000)
        if num != len(anchors):
            raise sec.error(f"num={num} but anchors lists {len(anchors)} pairs", "num")
        mask = sec.integers("mask") if sec.raw("mask") is not None else list(range(num))
        bad = [m for m in mask if not 0 <= m < num]
        if bad or not mask or len(set(mask)) != len(mask):
            raise sec.error(f"mask must pick distinct anchors 0..{num - 1}, got {mask}", "mask")
        return anchors, mask

    def _conv(
        self,
        sec: Section,
        current: _Shape,
        width: float,
        *,
        head_anchors: int | None,
        classes: int,
    ) -> tuple[nn.Module, _Shape]:
        size = sec.integer("size", 1, low=1, high=15)
        stride = sec.integer("stride", 1, low=1, high=8)
        pad = sec.integer("pad", 0, low=0, high=1)
        padding = size // 2 if pad else sec.integer("padding", 0, low=0, high=15)
        bn = sec.integer("batch_normalize", 0, low=0, high=1) == 1
        activation = sec.raw("activation") or "linear"
        if activation not in _ACTIVATIONS:
            raise sec.error(
                f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}",
                "activation",
            )
        filters = sec.integer("filters", low=1, high=_MAX_CHANNELS)
        if head_anchors is not None:
            if bn or activation != "linear":
                raise sec.error(
                    "the conv before [yolo] is its head: it must be activation=linear without "
                    "batch_normalize (raw outputs)"
                )
            if stride != 1:
                raise sec.error("the conv before [yolo] must keep the grid (stride=1)", "stride")
            out = head_anchors * (5 + classes)
            if self._cfg_classes_kept and filters != out:
                raise sec.error(
                    f"filters={filters}, but the next [yolo] needs {head_anchors} anchors x "
                    f"(5 + {classes} classes) = {out}",
                    "filters",
                )
        else:
            out = scale_channels(filters, width)
        if padding * 2 + 1 != size and not (size % 2 == 0 and padding == size // 2):
            raise sec.error(
                f"size={size} with padding {padding} does not keep the grid (use pad=1)", "pad"
            )
        conv = nn.Conv2d(current.channels, out, size, stride, padding, bias=not bn)
        parts: list[nn.Module] = [conv]
        if bn:
            parts.append(nn.BatchNorm2d(out, momentum=0.03, eps=1e-4))
        if activation == "leaky":
            parts.append(nn.LeakyReLU(_LEAKY_SLOPE))
        return ConvBlock(*parts), _Shape(out, current.stride * stride)

    def head_convs(self) -> list[nn.Conv2d]:
        """The conv that feeds each [yolo] level, in level order (their outputs are the raw
        predictions: pruning must keep their output channels)."""
        convs: list[nn.Conv2d] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, YoloLevel):
                block = self.layers[i - 1]
                assert isinstance(block, ConvBlock) and isinstance(block[0], nn.Conv2d)
                convs.append(block[0])
        return convs

    def _init_heads(self) -> None:
        # Small head weights and bias priors, so training starts from "few objects, classes
        # equally likely" instead of a sigmoid of 0.5 everywhere: objectness 1 %, class 1 / C.
        stride_cells = {s: (self.input_size / s) ** 2 for s in self.strides}
        for conv, stride, anchors in zip(
            self.head_convs(), self.strides, self.anchors, strict=True
        ):
            nn.init.normal_(conv.weight, std=0.01)
            assert conv.bias is not None
            bias = conv.bias.data.view(len(anchors), 5 + self.num_classes)
            bias.zero_()
            # about 8 objects per image spread over the level's cells and anchors
            bias[:, 4] = math.log(8 / (stride_cells[stride] * len(anchors)))
            if self.num_classes > 1:
                bias[:, 5:] = -math.log(self.num_classes - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: dict[int, torch.Tensor] = {}
        levels: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Route):
                x = layer([outputs[s] for s in layer.sources])
            elif isinstance(layer, Shortcut):
                x = layer(x, outputs[layer.source])
            else:
                x = layer(x)
            if isinstance(layer, YoloLevel):
                levels.append(x)
            if i in self._kept:
                outputs[i] = x
        return levels

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, width={self.width}, "
            f"num_classes={self.num_classes}, strides={self.strides}"
        )


def build_darknet(
    cfg: str | Path,
    *,
    num_classes: int | None = None,
    width: float = 1.0,
    input_size: int | None = None,
    in_channels: int | None = None,
) -> DarknetDetector:
    """Build a detector from a shipped cfg name (``yolov3``, ``yolov3-tiny``), a path, or cfg text.

    Args:
        num_classes: overrides the cfg's ``classes``; the conv before each ``[yolo]`` gets
            ``A * (5 + num_classes)`` filters.
        width: multiplies every other conv's filters (rounded to a multiple of 8, at least 8).
        input_size: the square input side, a multiple of 32; anchors are scaled from the cfg's
            ``width`` to it. Defaults to the cfg's ``width``.
        in_channels: overrides the cfg's ``channels``.
    """
    if isinstance(cfg, Path):
        text, name = cfg.read_text("utf-8"), cfg.stem
    elif cfg in CFG_NAMES:
        text, name = load_cfg_text(cfg), cfg
    else:
        text, name = cfg, "darknet"
    sections = parse_cfg(text)
    return DarknetDetector(
        sections,
        num_classes=num_classes,
        width=width,
        input_size=input_size,
        in_channels=in_channels,
        name=name,
    )
