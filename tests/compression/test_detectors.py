"""Detectors in the zoo: the Darknet cfg reader (YOLOv3, YOLOv3-tiny) and its output contract,
and torchvision's SSDlite-MobileNetV2 and Faster R-CNN built offline. Tiny inputs and widths."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression.darknet import (
    DarknetDetector,
    build_darknet,
    load_cfg_text,
    parse_cfg,
    scale_channels,
)
from compression.errors import ConfigError, InvalidModelError
from compression.zoo import (
    create_model,
    default_input_size,
    list_models,
    model_options,
    model_task,
)

DETECTORS = {"yolov3", "yolov3_tiny", "ssdlite_mobilenetv2", "fasterrcnn_mobilenetv3_fpn"}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convs(model: DarknetDetector) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# --- the cfg files and the contract ---------------------------------------------------------


def test_the_shipped_cfgs_parse_into_their_published_layer_counts() -> None:
    full = parse_cfg(load_cfg_text("yolov3"))
    tiny = parse_cfg(load_cfg_text("yolov3-tiny"))
    assert full[0].kind == tiny[0].kind == "net"
    assert len(full) - 1 == 107 and len(tiny) - 1 == 24  # layers after [net]
    assert [s.kind for s in full].count("yolo") == 3
    assert [s.kind for s in full].count("shortcut") == 23  # 1 + 2 + 8 + 8 + 4 residuals
    assert [s.kind for s in tiny].count("yolo") == 2
    assert [s.kind for s in tiny].count("maxpool") == 6


def test_at_full_width_the_parameter_counts_are_the_published_ones() -> None:
    # Built without a forward pass (a full-size forward would take seconds).
    assert _params(build_darknet("yolov3-tiny")) == 8_852_366
    assert _params(build_darknet("yolov3")) == 61_949_149


@pytest.mark.parametrize(
    ("cfg", "grids", "strides"),
    [("yolov3", (2, 4, 8), (32, 16, 8)), ("yolov3-tiny", (2, 4), (32, 16))],
)
def test_levels_come_coarsest_first_with_raw_anchor_major_channels(
    cfg: str, grids: tuple[int, ...], strides: tuple[int, ...]
) -> None:
    model = build_darknet(cfg, num_classes=3, width=0.125, input_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, list)
    assert [tuple(o.shape) for o in out] == [(2, 3 * (5 + 3), g, g) for g in grids]
    assert model.strides == strides
    assert (model.task, model.family, model.num_classes, model.input_size) == (
        "detection",
        "yolo",
        3,
        64,
    )
    assert [len(level) for level in model.anchors] == [3] * len(grids)


def test_outputs_are_the_head_convs_raw_values_in_tx_ty_tw_th_obj_classes_order() -> None:
    model = build_darknet("yolov3-tiny", num_classes=2, width=0.125, input_size=64).eval()
    for conv in model.head_convs():
        nn.init.zeros_(conv.weight)
        assert conv.bias is not None
        conv.bias.data = torch.arange(conv.out_channels, dtype=torch.float32) - 10.0
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    for level in out:
        per_anchor = level[0, :, 0, 0].view(3, 7)  # 3 anchors x [tx ty tw th obj c0 c1]
        assert per_anchor[0, 4].item() == -6.0  # anchor 0's objectness logit, not sigmoid'ed
        assert per_anchor[2, 6].item() == 10.0  # anchor 2's last class logit


def test_anchors_are_scaled_from_416_to_the_input_size_in_mask_order() -> None:
    model = build_darknet("yolov3-tiny", width=0.125, input_size=96)
    s = 96 / 416
    assert model.anchors[0] == ((81 * s, 82 * s), (135 * s, 169 * s), (344 * s, 319 * s))
    assert model.anchors[1][0] == (10 * s, 14 * s)
    full = build_darknet("yolov3", width=0.125, input_size=416)
    assert full.anchors[0] == ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0))
    assert full.anchors[2] == ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0))


def test_the_width_multiplier_shrinks_every_conv_but_the_heads() -> None:
    assert [scale_channels(f, 0.25) for f in (16, 32, 100, 1024)] == [8, 8, 24, 256]
    quarter = build_darknet("yolov3-tiny", num_classes=10, width=0.25, input_size=64)
    half = build_darknet("yolov3-tiny", num_classes=10, width=0.5, input_size=64)
    assert 3 * _params(quarter) < _params(half)
    heads = {id(c) for c in quarter.head_convs()}
    body = [c for c in _convs(quarter) if id(c) not in heads]
    assert [c.out_channels for c in body][:3] == [8, 8, 16]  # 16, 32, 64 filters at 0.25
    assert all(c.out_channels % 8 == 0 for c in body)
    assert [c.out_channels for c in quarter.head_convs()] == [45, 45]


def test_num_classes_overrides_the_cfgs_classes_and_sets_the_head_width() -> None:
    assert [c.out_channels for c in build_darknet("yolov3", width=0.125).head_convs()] == [255] * 3
    model = build_darknet("yolov3", num_classes=1, width=0.125, input_size=64)
    assert [c.out_channels for c in model.head_convs()] == [18, 18, 18]
    assert model.num_classes == 1


# --- the parser refuses what it cannot build, naming the line -------------------------------

_GOOD = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def test_a_small_handwritten_cfg_builds_and_the_stride_one_maxpool_keeps_the_grid() -> None:
    model = build_darknet(_GOOD, input_size=64).eval()
    with torch.no_grad():
        (out,) = model(torch.rand(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 21, 32, 32) and model.strides == (2,)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[maxpool]", "[dropout]"), r"line 14, section 2: unknown section \[dropout\]"),
        (("activation=leaky", "activation=mish"), r"line 12, section 1 \[convolutional\].*mish"),
        (("filters=16", "filters=sixteen"), r"line 8, .*filters must be an integer"),
        (("stride=1\n\n[conv", "stride=1\nfoo=2\n\n[conv"), r"line 17, .*unknown key 'foo'"),
        (("filters=21", "filters=24"), r"line 19, .*next \[yolo\] needs 3 anchors x \(5 \+ 2"),
        (("mask=0,1,2", "mask=0,1,5"), r"line 26, .*mask must pick distinct anchors 0..2"),
        (("num=3", "num=4"), r"line 29, .*num=4 but anchors lists 3 pairs"),
        (("width=64\n", "width=64\nwidth=32\n"), r"line 3, .*width is set twice"),
        (("[net]\n", "filters=3\n[net]\n"), r"line 1: 'filters=3' comes before"),
    ],
)
def test_the_parser_refuses_bad_cfgs_naming_line_and_section(
    edit: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_darknet(_GOOD.replace(*edit, 1), input_size=64)


def test_routes_and_shortcuts_must_point_back_at_fitting_layers() -> None:
    route_ahead = _GOOD.replace("[maxpool]\nsize=2\nstride=1", "[route]\nlayers=3")
    with pytest.raises(ConfigError, match=r"line 15, section 2 \[route\], layer 1: layers refers"):
        build_darknet(route_ahead)
    mismatch = _GOOD.replace(
        "[maxpool]\nsize=2\nstride=1",
        "[convolutional]\nfilters=32\nsize=1\nactivation=leaky\n\n[shortcut]\nfrom=-2",
    )
    with pytest.raises(ConfigError, match=r"adds layer 0 \(16 channels.* shapes differ"):
        build_darknet(mismatch)
    with pytest.raises(ConfigError, match="must start with a \\[net\\] section"):
        build_darknet(_GOOD.replace("[net]\nwidth=64\nheight=64\nchannels=3\n", ""))
    with pytest.raises(ConfigError, match="input_size: must be a positive multiple of 32"):
        build_darknet("yolov3-tiny", width=0.125, input_size=100)
    with pytest.raises(ConfigError, match="width"):
        build_darknet("yolov3-tiny", width=0)


# --- the zoo ----------------------------------------------------------------------------------


def test_the_zoo_knows_each_models_task_and_lists_by_task() -> None:
    assert set(list_models(task="detection")) == DETECTORS
    assert not DETECTORS & set(list_models(task="classification"))
    assert set(list_models()) == set(list_models(task="classification")) | DETECTORS
    assert model_task("yolov3_tiny") == "detection" and model_task("lenet5") == "classification"
    assert model_options("yolov3") == ("width", "input_size") and model_options("lenet5") == ()
    assert default_input_size("yolov3_tiny") == 96
    with pytest.raises(ConfigError, match="task: must be one of"):
        list_models(task="segmentation")
    with pytest.raises(ConfigError, match="width: is not an option of 'lenet5'"):
        create_model("lenet5", width=0.5)


def test_zoo_yolos_default_to_the_cpu_sizes_of_the_builtin_scenes() -> None:
    tiny = create_model("yolov3_tiny", num_classes=10)
    assert isinstance(tiny, DarknetDetector)
    assert (tiny.input_size, tiny.width, tiny.num_classes) == (96, 0.25, 10)
    small = create_model("yolov3_tiny", num_classes=10, width=0.125, input_size=64)
    assert _params(small) < _params(tiny)


def test_detector_weights_files_are_refused_with_their_task(tmp_path: Path) -> None:
    from compression.model_io import load_model_file, save_model_safetensors

    path = save_model_safetensors(
        create_model("yolov3_tiny", width=0.125, input_size=64), tmp_path / "y.safetensors"
    )
    with pytest.raises(InvalidModelError, match="'yolov3_tiny' is a detection architecture"):
        load_model_file(path, arch="yolov3_tiny")


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 4.0, 60.0, 30.0]]), "labels": torch.tensor([3])},
    ]


def test_faster_rcnn_reads_strides_8_16_and_32_so_small_inputs_get_a_usable_grid() -> None:
    """torchvision's builder reads two stride-32 stages: a 3x3 grid at 96 px, where no anchor
    lands near a small object (test mAP 0.000 after 12 epochs). The zoo's FPN reads finer ones,
    and its anchors cover every level, so the RPN head still fits."""
    model = create_model("fasterrcnn_mobilenetv3_fpn", num_classes=3, input_size=96).eval()
    with torch.no_grad():
        levels = model.backbone(torch.zeros(1, 3, 96, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in levels.items()} == {
        "0": (12, 12),
        "1": (6, 6),
        "2": (3, 3),
        "pool": (2, 2),
    }
    assert len(model.rpn.anchor_generator.sizes) == len(levels)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15] * len(levels)
    # Trainable BatchNorm, as the builder uses without weights (not its frozen one).
    assert not [m for m in model.backbone.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())  # no weights: train it all


@pytest.mark.parametrize(
    ("name", "options", "family", "losses"),
    [
        ("ssdlite_mobilenetv2", {"width": 0.25, "input_size": 64}, "ssd", 2),
        ("fasterrcnn_mobilenetv3_fpn", {"input_size": 64}, "fasterrcnn", 4),
    ],
)
def test_torchvision_detectors_build_offline_and_detect_and_train(
    name: str, options: dict[str, Any], family: str, losses: int
) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **options)
    facts = [getattr(model, key) for key in ("task", "family", "num_classes", "label_offset")]
    assert facts == ["detection", family, 3, 1]
    images = list(torch.rand(2, 3, 64, 64))
    model.train()
    loss = model(images, _targets())
    assert isinstance(loss, dict) and len(loss) == losses
    assert all(torch.isfinite(v) for v in loss.values())
    torch.autograd.backward(torch.stack(list(loss.values())).sum())
    model.eval()
    with torch.no_grad():
        (found, _) = model(images)
    assert set(found) == {"boxes", "labels", "scores"}
    assert found["boxes"].shape[1:] == (4,) and len(found["labels"]) == len(found["scores"])
    if len(found["labels"]):
        assert int(found["labels"].min()) >= 1 and int(found["labels"].max()) <= 3


def test_yolov3_tiny_raw_heads_export_to_onnx_and_onnxruntime_agrees(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = create_model("yolov3_tiny", num_classes=4, width=0.125, input_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["level0", "level1"],
            dynamic_axes={"input": {0: "batch"}, "level0": {0: "batch"}, "level1": {0: "batch"}},
        )
        expected = [o.numpy() for o in model(x)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    assert [g.shape for g in got] == [(2, 27, 2, 2), (2, 27, 4, 4)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def test_a_checkpoint_rebuilds_a_detector_with_its_zoo_options(tmp_path: Path) -> None:
    from compression.checkpoint import load_checkpoint, save_checkpoint
    from compression.stage import ArchSpec, ModelState

    options: dict[str, Any] = {"width": 0.125, "input_size": 64}
    module = create_model("yolov3_tiny", num_classes=2, **options).eval()
    arch = ArchSpec("yolov3_tiny", 2, 3, options=tuple(sorted(options.items())))
    state = ModelState(
        input_shape=(3, 64, 64), num_classes=2, task="detection", module=module, arch=arch
    )
    back = load_checkpoint(save_checkpoint(state, tmp_path / "tiny"))
    assert back.arch == arch and back.task == "detection"
    assert isinstance(back.module, DarknetDetector) and back.module.input_size == 64
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(back.module.eval()(x), module(x), strict=True):
            torch.testing.assert_close(got, want)
