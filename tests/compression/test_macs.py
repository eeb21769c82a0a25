"""The one MAC counter: a hand count, every zoo model, the layer table, and MAC targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import CompressionError, MacTargetError
from compression.inspection import inspect_module
from compression.macs import count_macs, count_macs_per_module
from compression.stage import ModelState, StageContext, StageResult
from compression.zoo import create_model, default_input_size, list_models


class HandNet(nn.Module):
    """A conv with bias, a depthwise conv with a residual add, a grouped 1x1 conv, BN, a linear
    layer and a bare matmul in ``forward``: small enough to count by hand at 3x8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 16, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.mix = nn.Parameter(torch.eye(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.dw(x) + x
        x = self.pool(self.relu(self.bn(self.grouped(x))))
        logits: torch.Tensor = self.fc(torch.flatten(x, 1)) @ self.mix
        return logits


# At 3x8x8, per sample (a bias add, BN, ReLU, max-pool and the residual add are not MACs):
CONV = 8 * 8 * 8 * (3 * 3 * 3)  # 512 outputs, each 3 in-channels x 3x3 = 13,824
DW = 8 * 8 * 8 * (1 * 3 * 3)  # depthwise: 512 outputs, each 8/8 = 1 in-channel x 3x3 = 4,608
GROUPED = 16 * 8 * 8 * (4 * 1 * 1)  # 1,024 outputs, each 8/2 = 4 in-channels x 1x1 = 4,096
FC = 10 * 256  # 10 outputs, each 256 inputs = 2,560
MIX = 10 * 10  # (1x10) @ (10x10) in the root's forward = 100
HAND_TOTAL = CONV + DW + GROUPED + FC + MIX  # 25,188


def test_a_small_conv_net_counts_as_by_hand() -> None:
    assert HAND_TOTAL == 25_188
    assert count_macs(HandNet(), (3, 8, 8)) == HAND_TOTAL


def test_per_module_macs_go_to_the_module_that_ran_them() -> None:
    per = count_macs_per_module(HandNet(), (3, 8, 8))
    assert per == {
        "": MIX,
        "conv": CONV,
        "dw": DW,
        "grouped": GROUPED,
        "bn": 0,
        "relu": 0,
        "pool": 0,
        "fc": FC,
    }


def test_counting_restores_every_train_flag_and_leaves_no_hooks() -> None:
    net = HandNet().train()
    net.bn.eval()  # a frozen BN inside a training model must stay frozen
    count_macs(net, (3, 8, 8))
    count_macs_per_module(net, (3, 8, 8))
    assert net.training and net.conv.training and not net.bn.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def _hand_count(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Sum of the conv and linear formulas over every call, read from forward hooks."""
    total = 0

    def hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


@pytest.mark.parametrize("arch", list_models(task="classification"))
def test_every_zoo_model_counts_as_its_conv_and_linear_formulas(arch: str) -> None:
    model = create_model(arch, num_classes=5, in_channels=3)
    size = default_input_size(arch)
    shape = (3, size, size)
    macs = count_macs(model, shape)
    assert macs > 0
    assert macs == _hand_count(model, shape)
    assert sum(count_macs_per_module(model, shape).values()) == macs
    info = inspect_module(model, shape)
    assert info.macs == macs
    assert sum(layer.macs or 0 for layer in info.layers) == macs
    for layer in info.layers:
        if layer.kind == "batchnorm":
            assert layer.macs == 0


# --- channel pruning against a MAC target ---------------------------------------------------


class SmallBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.features(x))
        return logits


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    # No epoch runs in these tests; the bundle only supplies the input shape and classes.
    return load_digits(size=16).subset(train=32, val=16, test=16)


def _prune(
    digits: DatasetBundle, tmp_path: Path, **overrides: Any
) -> tuple[StageResult, list[dict[str, Any]]]:
    torch.manual_seed(0)
    reports: list[dict[str, Any]] = []
    ctx = StageContext(
        model=ModelState(input_shape=digits.input_shape, num_classes=10, module=SmallBNNet()),
        data=digits,
        device=torch.device("cpu"),
        work_dir=tmp_path,
        seed=0,
        report=lambda _frac, _msg, metrics: reports.append(dict(metrics)),
        check_cancel=lambda: None,
    )
    spec = registry.get_method("channel_pruning")
    cfg = registry.config_from_dict(
        spec.config_cls,
        {"importance": "l1", "sparsity_epochs": 0, "finetune_epochs": 0, "round_to": 1,
         "max_layer_ratio": 0.5, **overrides},
    )  # fmt: skip
    result = spec.run(ctx, cfg)
    assert isinstance(result, StageResult)
    return result, reports


def test_an_unreachable_mac_target_fails_the_stage_with_the_reached_figure(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    with pytest.raises(MacTargetError) as info:
        _prune(digits, tmp_path, target_mac_reduction=20.0)
    err = info.value
    assert isinstance(err, CompressionError)
    # Each conv may lose at most half its outputs: 16 -> 8 channels. At 1x16x16 the first conv
    # halves (36,864 -> 18,432), the second quarters (147,456 -> 36,864), and the classifier
    # halves (160 -> 80): 184,480 -> 55,376 MACs, 3.33x.
    before = 16 * 16 * 16 * 9 + 16 * 8 * 8 * 16 * 9 + 16 * 10
    after = 8 * 16 * 16 * 9 + 8 * 8 * 8 * 8 * 9 + 8 * 10
    assert err.reached == pytest.approx(before / after)
    assert err.target == 20.0
    assert f"reached {before / after:.2f}x fewer MACs, target 20.00x" in str(err)
    assert "allow_mac_shortfall: true" in str(err)


def test_allow_mac_shortfall_accepts_it_and_reports_the_reached_figure(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    result, reports = _prune(digits, tmp_path, target_mac_reduction=20.0, allow_mac_shortfall=True)
    module = result.model.module
    assert module is not None
    reached = result.metrics["mac_reduction"]
    assert 2.0 < reached < 20.0
    assert result.metrics["target_mac_reduction"] == 20.0
    assert result.metrics["macs_after"] == count_macs(module, digits.input_shape)
    # The search ran until every layer sat at its floor, not short of it.
    for layer in result.layers:
        if layer.kind == "conv":
            assert layer.channels_after == 8
    assert any(r.get("mac_reduction") == pytest.approx(reached) for r in reports)


def test_a_reachable_mac_target_is_met(digits: DatasetBundle, tmp_path: Path) -> None:
    result, _ = _prune(digits, tmp_path, target_mac_reduction=2.0)
    assert result.metrics["mac_reduction"] >= 2.0
