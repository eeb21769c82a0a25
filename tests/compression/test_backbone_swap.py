"""backbone_swap: convs become lightweight blocks with the same shapes, MACs fall, the original
teaches the result, unmappable models are refused up front, and checkpoints rebuild the blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression import registry
from compression.checkpoint import load_checkpoint, save_checkpoint
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError, StageScopeError
from compression.light_blocks import (
    DepthwiseSeparableConv,
    InvertedResidual,
    SqueezeExcite,
    light_block_for,
)
from compression.macs import count_macs
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.stage import ArchSpec, ModelState, StageContext, StageResult
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=128, val=64, seed=0)


def _ctx(module: nn.Module, data: DatasetBundle, tmp: Path, arch: str) -> StageContext:
    state = ModelState(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        module=module,
        arch=ArchSpec(arch, data.num_classes, data.input_shape[0]),
    )
    return StageContext(
        model=state,
        data=data,
        device=CPU,
        work_dir=tmp,
        seed=0,
        report=lambda *_: None,
        check_cancel=lambda: None,
    )


def _run(ctx: StageContext, **config: Any) -> StageResult:
    spec = registry.get_method("backbone_swap")
    result = spec.run(ctx, registry.config_from_dict(spec.config_cls, config))
    assert isinstance(result, StageResult)
    return result


def _outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        out = module(x)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize("block", ["depthwise_separable", "inverted_residual"])
@pytest.mark.parametrize("se", [False, True])
def test_a_block_keeps_the_convs_output_shape_for_every_stride_and_padding(
    block: Any, se: bool
) -> None:
    x = torch.randn(2, 16, 15, 15)
    for conv in (
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(16, 24, 5),  # LeNet-style: no padding
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
    ):
        new = light_block_for(conv, block, se=se).eval()
        assert new(x).shape == conv(x).shape
        assert isinstance(new, DepthwiseSeparableConv | InvertedResidual)
        assert any(isinstance(m, SqueezeExcite) for m in new.modules()) is se
        depthwise = [m for m in new.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels


def test_the_inverted_residual_adds_its_input_only_when_the_shapes_match() -> None:
    same = light_block_for(nn.Conv2d(16, 16, 3, padding=1), "inverted_residual")
    down = light_block_for(nn.Conv2d(16, 16, 3, stride=2, padding=1), "inverted_residual")
    wider = light_block_for(nn.Conv2d(16, 32, 3, padding=1), "inverted_residual")
    assert isinstance(same, InvertedResidual) and same.use_residual
    assert isinstance(down, InvertedResidual) and not down.use_residual
    assert isinstance(wider, InvertedResidual) and not wider.use_residual
    # With the projection zeroed, a residual block is the identity.
    nn.init.zeros_(same.project.weight)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(same.eval()(x), x)


def test_vgg_every_3x3_conv_but_the_first_is_swapped_shapes_kept_macs_down(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = create_model("vgg11_bn", num_classes=10, in_channels=1)
    x = torch.randn(3, 1, 32, 32)
    out_before = _outputs(model, x)
    macs_before = count_macs(model, (1, 32, 32))
    result = _run(_ctx(model, digits, tmp_path, "vgg11_bn"), epochs=0)
    swapped = result.model.module
    assert swapped is not None
    assert _outputs(swapped, x).shape == out_before.shape
    assert isinstance(swapped.get_submodule("features.0"), nn.Conv2d)  # the stem stays standard
    names = [c.name for c in result.layers]
    convs = [n for n, m in create_model("vgg11_bn").named_modules() if isinstance(m, nn.Conv2d)]
    assert names == convs[1:]
    for name in names:
        assert isinstance(swapped.get_submodule(name), DepthwiseSeparableConv)
    macs_after = count_macs(swapped, (1, 32, 32))
    assert result.metrics["macs_before"] == macs_before
    assert result.metrics["macs_after"] == macs_after
    # Depthwise separable 3x3: about 9x fewer MACs in the wide layers; the stem and the
    # classifier are unchanged, so the whole net lands a little lower.
    assert macs_before / macs_after > 6
    saved = sum((c.macs_before or 0) - (c.macs_after or 0) for c in result.layers)
    assert saved == macs_before - macs_after  # the per-layer rows add up to the totals
    assert result.metrics["params_after"] < result.metrics["params_before"] / 5


def test_resnet_basic_blocks_get_inverted_residuals_with_attention(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    result = _run(
        _ctx(model, digits, tmp_path, "resnet20"), block="inverted_residual", se=True, epochs=0
    )
    swapped: Any = result.model.module
    assert swapped is not None
    blocks = [swapped.layer1[0], swapped.layer2[0], swapped.layer3[2]]
    for b in blocks:
        assert isinstance(b.conv1, InvertedResidual) and isinstance(b.conv2, InvertedResidual)
        assert isinstance(b.conv1.se, SqueezeExcite)
    assert not swapped.layer2[0].conv1.use_residual  # stride 2, 16 -> 32 channels
    assert swapped.layer2[0].conv2.use_residual
    assert isinstance(swapped.layer2[0].shortcut[0], nn.Conv2d)  # 1x1 projections stay
    assert len(result.layers) == 18
    assert result.metrics["mac_reduction"] > 1.5
    assert _outputs(swapped, torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_patterns_choose_the_blocks_and_costlier_replacements_are_left_alone(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    result = _run(
        _ctx(model, digits, tmp_path, "resnet20"),
        include="layer3",
        exclude="layer3.0.*",
        epochs=0,
    )
    assert [c.name for c in result.layers] == [
        f"layer3.{i}.conv{j}" for i in (1, 2) for j in (1, 2)
    ]
    # Expansion 5 costs 5 C_in (C_in + 9 + C_out) MACs per pixel against the conv's 9 C_in C_out:
    # more where the width stays (break-even ~4.4), less where the conv doubles it.
    vgg = create_model("vgg11_bn", num_classes=10, in_channels=1)
    result = _run(
        _ctx(vgg, digits, tmp_path, "vgg11_bn"), block="inverted_residual", expansion=5, epochs=0
    )
    assert all((c.macs_after or 0) < (c.macs_before or 0) for c in result.layers)
    assert [c.name for c in result.layers] == ["features.4", "features.8", "features.15"]
    assert result.metrics["kept_convs"] == 5  # the stem and the four width-keeping layers
    with pytest.raises(StageScopeError, match="left every eligible convolution standard"):
        _run(_ctx(create_model("resnet20"), digits, tmp_path, "resnet20"), include="nothing.*")


def test_the_swapped_model_learns_from_the_original(digits: DatasetBundle, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    ctx = _ctx(model, digits, tmp_path, "resnet20")
    result = _run(ctx, include="layer3", epochs=2, lr=0.05, batch_size=32)
    assert len(result.history) == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert "val_acc" in result.metrics
    # The module the stage returns is the trained one, on the CPU, in eval mode.
    swapped = result.model.module
    assert swapped is not None and not swapped.training
    assert next(swapped.parameters()).device.type == "cpu"


def _check(arch: str, config: dict[str, Any] | None = None, fmt: str = "torch") -> None:
    recipe = parse_recipe({"stages": [{"method": "backbone_swap", "config": config or {}}]})
    module = create_model(arch, num_classes=10, in_channels=1)
    facts = ModelFacts.from_module(module, arch=arch, input_shape=(1, 32, 32), num_classes=10)
    if fmt == "onnx":
        facts = facts.converted_to("onnx")
    check_recipe_for_model(recipe, facts)


def test_unmappable_models_are_refused_before_anything_runs() -> None:
    _check("vgg11_bn")
    _check("resnet56")
    _check("lenet5")  # its second 5x5 conv can be swapped
    with pytest.raises(ConfigError, match="has none") as exc:
        _check("lenet300_100")
    assert exc.value.field == "stages[0].method"
    with pytest.raises(ConfigError, match="only standard k x k convolution is the first"):
        _check("mobilenet_v2")  # a stem (skipped) and depthwise/pointwise convs only
    with pytest.raises(ConfigError, match="not matched by include") as exc:
        _check("resnet20", {"include": "layer9.*"})
    assert exc.value.field == "stages[0].config.include"
    with pytest.raises(StageScopeError, match="needs a torch model"):
        _check("vgg11_bn", fmt="onnx")
    with pytest.raises(ConfigError, match="contains a space"):
        registry.config_from_dict(
            registry.get_method("backbone_swap").config_cls, {"include": "layer1 layer2"}
        )


def _swapped_state(
    arch: str, data: DatasetBundle, tmp: Path, **config: Any
) -> tuple[ModelState, StageResult]:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    result = _run(_ctx(model, data, tmp, arch), epochs=0, **config)
    module = result.model.module
    assert module is not None
    for m in module.modules():  # non-trivial statistics and weights must survive the round trip
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
            m.weight.data.uniform_(0.5, 1.5)
    return result.model, result


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("vgg11_bn", {"block": "depthwise_separable", "se": True}),
        ("resnet20", {"block": "inverted_residual", "se": True, "expansion": 3}),
    ],
)
def test_a_checkpoint_rebuilds_the_swapped_model_with_identical_outputs(
    digits: DatasetBundle, tmp_path: Path, arch: str, config: dict[str, Any]
) -> None:
    state, _ = _swapped_state(arch, digits, tmp_path, **config)
    weights = save_checkpoint(state, tmp_path / "ckpt")
    loaded = load_checkpoint(weights)
    assert loaded.module is not None and state.module is not None
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(_outputs(state.module, x), _outputs(loaded.module, x))
    kinds = [type(m).__name__ for m in loaded.module.modules()]
    assert kinds == [type(m).__name__ for m in state.module.modules()]


def test_a_swapped_model_pruned_afterwards_still_round_trips(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    state, _ = _swapped_state("resnet20", digits, tmp_path, block="inverted_residual", se=True)
    module = state.module
    assert module is not None
    params_swapped = sum(p.numel() for p in module.parameters())
    spec = registry.get_method("channel_pruning")
    ctx = _ctx(module, digits, tmp_path, "resnet20")
    ctx.model = state
    cfg = registry.config_from_dict(
        spec.config_cls, {"importance": "l1", "ratio": 0.4, "finetune_epochs": 0, "round_to": 4}
    )
    pruned = spec.run(ctx, cfg).model
    assert pruned.module is not None
    assert sum(p.numel() for p in pruned.module.parameters()) < params_swapped
    loaded = load_checkpoint(save_checkpoint(pruned, tmp_path / "pruned"))
    assert loaded.module is not None
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(_outputs(pruned.module, x), _outputs(loaded.module, x))


def test_a_swapped_model_exports_to_onnx_and_quantizes_to_int8(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    state, _ = _swapped_state("resnet20", digits, tmp_path, block="inverted_residual", se=True)
    assert state.module is not None
    onnx_path = export_onnx(state.module, (1, 32, 32), tmp_path / "swapped.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, _outputs(state.module, x).numpy(), atol=1e-4)
    spec = registry.get_method("ptq_int8")
    ctx = _ctx(state.module, digits, tmp_path, "resnet20")
    ctx.model = state
    cfg = registry.config_from_dict(spec.config_cls, {"calibration_samples": 16})
    result = spec.run(ctx, cfg)
    assert result.model.format == "onnx" and result.model.onnx_path is not None
    int8 = onnx.load(str(result.model.onnx_path))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    session = ort.InferenceSession(str(result.model.onnx_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].shape == (2, 10)
