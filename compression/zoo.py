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


# --- torchvision detectors ------------------------------------------------------------------
#
# Built from torchvision's parts with ``weights=None`` everywhere (its defaults download).
# Inputs are float images in [0, 1]; the model resizes and normalises them itself. In train mode
# ``model(images, targets)`` returns a dict of losses; in eval mode ``model(images)`` returns one
# ``{"boxes", "labels", "scores"}`` dict per image, boxes as x1, y1, x2, y2 in input pixels.
# Label 0 is torchvision's background: dataset class k is label k + 1 (``label_offset = 1``).

SSD_INPUT_SIZE = 96
FASTERRCNN_INPUT_SIZE = 160
FASTERRCNN_BOX_HEAD = 256  # the box head's hidden size (torchvision's default is 1024)
# The MobileNetV3 stages the FPN reads (torchvision's stage numbering: 2, 3, 5 end at strides 8,
# 16 and 32). torchvision's builder reads stages 4 and 5, which are both at stride 32: a 3x3 grid
# at 96 px, where no RPN anchor lands near a small object (test mAP 0.000 after 12 epochs, see
# docs/benchmarks.md); strides 8 and 16 give it 12x12 and 6x6 grids.
FASTERRCNN_FPN_STAGES = [2, 3, 5]


def _check_side(input_size: int) -> int:
    if not isinstance(input_size, int) or input_size < 32 or input_size > 2048 or input_size % 32:
        raise ConfigError("input_size", f"must be a multiple of 32 in 32..2048, got {input_size!r}")
    return input_size


def _check_width(width: float) -> float:
    if not isinstance(width, int | float) or not 0 < width <= 4:
        raise ConfigError("width", f"must be a number in (0, 4], got {width!r}")
    return float(width)


def _tag_detector(
    model: nn.Module, *, family: str, num_classes: int, input_size: int, label_offset: int
) -> nn.Module:
    facts = {
        "task": "detection",
        "family": family,
        "num_classes": num_classes,
        "input_size": input_size,
        "label_offset": label_offset,
    }
    for key, value in facts.items():
        setattr(model, key, value)
    return model


class MobileNetV2Features(nn.Module):
    """MobileNetV2 (torchvision, no weights) as an SSD backbone: feature maps at strides 8, 16
    and 32 (the ends of its 32-, 96- and 320-channel stages, scaled by ``width``) and one extra
    depthwise-separable block at stride 64."""

    def __init__(self, *, width: float, in_channels: int) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
        from torchvision.ops.misc import Conv2dNormActivation

        features = tv_mobilenet_v2(weights=None, width_mult=width).features
        if in_channels != 3:
            first = features[0][0]
            assert isinstance(first, nn.Conv2d)
            features[0][0] = nn.Conv2d(
                in_channels, first.out_channels, 3, stride=2, padding=1, bias=False
            )
        stages = [nn.Sequential(*list(features)[a:b]) for a, b in ((0, 7), (7, 14), (14, 18))]
        channels = [_out_channels(stage) for stage in stages]
        self.stages = nn.ModuleList(stages)
        wide = channels[-1]
        extra = max(8, round(256 * width / 8) * 8)
        self.extra = nn.Sequential(
            Conv2dNormActivation(wide, wide // 2, 1, activation_layer=nn.ReLU6),
            Conv2dNormActivation(
                wide // 2, wide // 2, 3, stride=2, groups=wide // 2, activation_layer=nn.ReLU6
            ),
            Conv2dNormActivation(wide // 2, extra, 1, activation_layer=nn.ReLU6),
        )
        self.out_channels = [*channels, extra]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            maps[str(i)] = x
        maps[str(len(self.stages))] = self.extra(x)
        return maps


def _out_channels(stage: nn.Sequential) -> int:
    from torchvision.models.mobilenetv2 import InvertedResidual

    last = stage[-1]
    assert isinstance(last, InvertedResidual)
    return int(last.out_channels)


@register_model(
    "ssdlite_mobilenetv2",
    input_size=SSD_INPUT_SIZE,
    task="detection",
    options=("width", "input_size"),
)
def ssdlite_mobilenetv2(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 0.5,
    input_size: int | None = None,
) -> nn.Module:
    """SSDlite over MobileNetV2: torchvision's ``SSD`` with an ``SSDLiteHead`` on four levels
    (strides 8, 16, 32, 64), six default boxes per cell from a ``DefaultBoxGenerator``
    (scales 0.1..0.9 of the input side). Default width 0.5, input 96."""
    from functools import partial

    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    side = _check_side(SSD_INPUT_SIZE if input_size is None else input_size)
    backbone = MobileNetV2Features(width=_check_width(width), in_channels=in_channels)
    anchors = DefaultBoxGenerator([[2, 3]] * len(backbone.out_channels), min_ratio=0.1)
    head = SSDLiteHead(
        backbone.out_channels,
        anchors.num_anchors_per_location(),
        num_classes + 1,
        partial(nn.BatchNorm2d, eps=0.001, momentum=0.03),
    )
    model = SSD(
        backbone,
        anchors,
        (side, side),
        num_classes + 1,
        image_mean=[0.5] * in_channels,
        image_std=[0.5] * in_channels,
        head=head,
        score_thresh=0.01,
        nms_thresh=0.45,
        detections_per_img=100,
        topk_candidates=300,
    )
    return _tag_detector(
        model, family="ssd", num_classes=num_classes, input_size=side, label_offset=1
    )


@register_model(
    "fasterrcnn_mobilenetv3_fpn",
    input_size=FASTERRCNN_INPUT_SIZE,
    task="detection",
    options=("input_size",),
)
def fasterrcnn_mobilenetv3_fpn(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int | None = None
) -> nn.Module:
    """Faster R-CNN, MobileNetV3-Large FPN backbone (torchvision's builder, no weights).

    For small inputs: the FPN on the backbone's stride-8, 16 and 32 stages plus a pooled level
    (torchvision's reads two stride-32 stages, ``FASTERRCNN_FPN_STAGES``), images resized to
    ``input_size`` (default 160), RPN anchors of 0.1..0.8 of it (torchvision's are 32..512 px),
    150 proposals at test time (600/300 in training), 64 sampled boxes per image and a 256-wide
    box head (torchvision's is 1024).
    """
    if in_channels != 3:
        raise ConfigError(
            "in_channels", f"fasterrcnn_mobilenetv3_fpn takes RGB images (3), got {in_channels}"
        )
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.models.detection.faster_rcnn import (
        FastRCNNPredictor,
        TwoMLPHead,
        fasterrcnn_mobilenet_v3_large_fpn,
    )

    side = _check_side(FASTERRCNN_INPUT_SIZE if input_size is None else input_size)
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        min_size=side,
        max_size=side,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=64,
        box_detections_per_img=100,
    )
    # The same backbone as the builder's (BatchNorm, every layer trainable: no weights), its FPN
    # on finer stages; the RPN head and the RoI pooling work on any number of levels.
    model.backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=None,
        fpn=True,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=6,
        returned_layers=FASTERRCNN_FPN_STAGES,
    )
    # Anchors for small images: the same count per cell (5 sizes x 3 ratios) on every level, so
    # the RPN head built for torchvision's anchors still fits.
    levels = len(FASTERRCNN_FPN_STAGES) + 1  # and the max-pooled level
    sizes = tuple(max(4, round(side * f)) for f in (0.1, 0.2, 0.4, 0.6, 0.8))
    model.rpn.anchor_generator = AnchorGenerator((sizes,) * levels, ((0.5, 1.0, 2.0),) * levels)
    resolution = model.roi_heads.box_roi_pool.output_size[0]
    channels = model.backbone.out_channels
    model.roi_heads.box_head = TwoMLPHead(channels * resolution**2, FASTERRCNN_BOX_HEAD)
    model.roi_heads.box_predictor = FastRCNNPredictor(FASTERRCNN_BOX_HEAD, num_classes + 1)
    return _tag_detector(
        model, family="fasterrcnn", num_classes=num_classes, input_size=side, label_offset=1
    )
