"""The model zoo: small CNN architectures by name, so state dicts and checkpoints can be rebuilt.

Every architecture takes ``num_classes`` and ``in_channels``; weights are never downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from compression.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_MODELS: dict[str, ModelFactory] = {}
_INPUT_SIZES: dict[str, int] = {}


def register_model(name: str, *, input_size: int = 32) -> Callable[[F], F]:
    """Register ``factory(*, num_classes, in_channels) -> nn.Module`` under ``name``."""

    def decorator(fn: F) -> F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _INPUT_SIZES[name] = input_size
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_MODELS)


def has_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised architecture.

    Raises:
        ConfigError: the name is not registered or the sizes are out of range.
    """
    if name not in _MODELS:
        raise ConfigError(
            "arch", f"unknown architecture {name!r}; known: {', '.join(list_models())}"
        )
    if num_classes < 1:
        raise ConfigError("num_classes", f"must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError("in_channels", f"must be >= 1, got {in_channels}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)


def default_input_size(name: str) -> int:
    """Square input side the architecture is meant for (digits are upscaled to 32)."""
    if name not in _INPUT_SIZES:
        raise ConfigError(
            "arch", f"unknown architecture {name!r}; known: {', '.join(list_models())}"
        )
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
