"""The model zoo: small CNN architectures by name, so state dicts and checkpoints can be rebuilt.

Every architecture takes ``num_classes`` and ``in_channels``; weights are never downloaded.
Each one has a task: ``classification`` (logits ``(N, num_classes)``) or ``detection`` (the
YOLO family returns raw per-level maps, see :mod:`compression.darknet`; the torchvision SSD and
Faster R-CNN models return boxes in eval mode and a loss dict in train mode). Detectors also
take ``width`` and ``input_size`` options. Places that expect a classifier list
``list_models(task="classification")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from compression.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

TASKS = ("classification", "detection")

_MODELS: dict[str, ModelFactory] = {}
_INPUT_SIZES: dict[str, int] = {}
_TASKS: dict[str, str] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_model(
    name: str,
    *,
    input_size: int = 32,
    task: str = "classification",
    options: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Register ``factory(*, num_classes, in_channels, **options) -> nn.Module`` under ``name``.

    ``options`` names the extra keyword arguments the factory accepts (e.g. ``width``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorator(fn: F) -> F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _INPUT_SIZES[name] = input_size
        _TASKS[name] = task
        _OPTIONS[name] = options
        return fn

    return decorator


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered architectures (of one task, if given), sorted."""
    if task is not None and task not in TASKS:
        raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    return sorted(name for name in _MODELS if task is None or _TASKS[name] == task)


def has_model(name: str) -> bool:
    return name in _MODELS


def _unknown(name: str) -> ConfigError:
    return ConfigError("arch", f"unknown architecture {name!r}; known: {', '.join(list_models())}")


def model_task(name: str) -> str:
    """``classification`` or ``detection``."""
    if name not in _TASKS:
        raise _unknown(name)
    return _TASKS[name]


def model_options(name: str) -> tuple[str, ...]:
    """The extra keyword options ``create_model`` accepts for this architecture."""
    if name not in _OPTIONS:
        raise _unknown(name)
    return _OPTIONS[name]


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> nn.Module:
    """Build a freshly initialised architecture.

    ``options`` are architecture-specific (detectors: ``width``, ``input_size``).

    Raises:
        ConfigError: the name is not registered, an option is unknown, or a value is out of range.
    """
    if name not in _MODELS:
        raise _unknown(name)
    if num_classes < 1:
        raise ConfigError("num_classes", f"must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError("in_channels", f"must be >= 1, got {in_channels}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        known = ", ".join(_OPTIONS[name]) or "none"
        raise ConfigError(unknown[0], f"is not an option of {name!r} (options: {known})")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)


def default_input_size(name: str) -> int:
    """Square input side the architecture is meant for (digits are upscaled to 32; detectors
    default to the built-in ``mnist_scenes`` images, 96 px)."""
    if name not in _INPUT_SIZES:
        raise _unknown(name)
    return _INPUT_SIZES[name]


# --- LeNets --------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5 for 32x32 inputs (the classic layout, ReLU and max-pooling)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected net over the flattened 32x32 image."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, size: int = 32) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * size * size, 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


@register_model("lenet5")
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register_model("lenet300_100")
def lenet300_100(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet300100(num_classes=num_classes, in_channels=in_channels)


# --- CIFAR-style VGG -----------------------------------------------------------------------

# fmt: off
_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv-BN-ReLU stacks and a small classifier."""

    def __init__(self, cfg: list[int | str], *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v)]
                layers.append(nn.ReLU(inplace=True))
                channels = v
        self.features = nn.Sequential(*layers)
        # Adaptive pooling keeps the classifier valid for other input sizes, too.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _vgg_factory(name: str) -> ModelFactory:
    def factory(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarVGG(_VGG_CFGS[name], num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = name
    return factory


for _name in _VGG_CFGS:
    register_model(_name)(_vgg_factory(_name))


# --- CIFAR-style ResNet --------------------------------------------------------------------


class BasicBlock(nn.Module):
    """A CIFAR ResNet basic block with an option-B (1x1 conv + BN) projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Option B (a real layer) rather than option A (zero padding) so that
            # Torch-Pruning can trace and prune the residual coupling.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for 32x32 inputs: three stages of 16/32/64 channels."""

    def __init__(self, depth: int, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes_in = 16
        stages: list[nn.Module] = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks: list[nn.Module] = []
            for i in range(n):
                blocks.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("resnet20")
def resnet20(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet56")
def resnet56(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


# --- torchvision ---------------------------------------------------------------------------


@register_model("resnet18")
def resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


@register_model("mobilenet_v2")
def mobilenet_v2(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    model = tv_mobilenet_v2(weights=None, num_classes=num_classes)
    if in_channels != 3:
        first = model.features[0][0]
        assert isinstance(first, nn.Conv2d)
        model.features[0][0] = nn.Conv2d(
            in_channels, first.out_channels, 3, stride=2, padding=1, bias=False
        )
    return model


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- detectors -----------------------------------------------------------------------------
#
# Defaults are sized for CPU training on the built-in ``mnist_scenes`` set (96x96 images,
# 10 digit classes): input 96, and a width multiplier that keeps a training step well under a
# second on two cores. Pass ``width=1.0, input_size=416`` for the published sizes.

DETECTION_INPUT_SIZE = 96
YOLO_OPTIONS = ("width", "input_size")


def _yolo(
    cfg: str,
    *,
    num_classes: int,
    in_channels: int,
    width: float,
    input_size: int | None,
) -> nn.Module:
    from compression.darknet import build_darknet

    return build_darknet(
        cfg,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        input_size=DETECTION_INPUT_SIZE if input_size is None else input_size,
    )


@register_model(
    "yolov3_tiny", input_size=DETECTION_INPUT_SIZE, task="detection", options=YOLO_OPTIONS
)
def yolov3_tiny(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 0.25,
    input_size: int | None = None,
) -> nn.Module:
    """YOLOv3-tiny from compression/cfg/yolov3-tiny.cfg: two levels (strides 32, 16).

    Default width 0.25 (16..1024 filters become 8..256), input 96.
    """
    return _yolo(
        "yolov3-tiny",
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        input_size=input_size,
    )


@register_model("yolov3", input_size=DETECTION_INPUT_SIZE, task="detection", options=YOLO_OPTIONS)
def yolov3(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 0.25,
    input_size: int | None = None,
) -> nn.Module:
    """YOLOv3 (Darknet-53) from compression/cfg/yolov3.cfg: three levels (strides 32, 16, 8).

    Default width 0.25 (about 3.9 M parameters instead of 62 M), input 96.
    """
    return _yolo(
        "yolov3",
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        input_size=input_size,
    )
