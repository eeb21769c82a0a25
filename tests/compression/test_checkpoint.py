"""Checkpoints: pickle-free, and a Torch-Pruning-pruned model comes back with identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compression.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from compression.onnx_export import export_onnx
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model


def _pruned(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=3).eval()
    example = torch.randn(1, 3, 32, 32)
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=head,
    )
    pruner.step()
    for m in model.modules():  # non-trivial running statistics must survive too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet20"])
def test_a_pruned_model_round_trips_with_identical_outputs(tmp_path: Path, arch: str) -> None:
    model = _pruned(arch)
    original_params = sum(p.numel() for p in model.parameters())
    assert original_params < sum(p.numel() for p in create_model(arch).parameters())
    state = ModelState(
        input_shape=(3, 32, 32), num_classes=10, module=model, arch=ArchSpec(arch, 10, 3)
    )
    weights = save_checkpoint(state, tmp_path / "ckpt")
    assert weights.suffix == ".safetensors"
    loaded = load_checkpoint(weights)
    assert loaded.module is not None
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    assert sum(p.numel() for p in loaded.module.parameters()) == original_params


def test_the_sidecar_is_plain_json_with_the_architecture(tmp_path: Path) -> None:
    model = create_model("lenet5", in_channels=1)
    state = ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=model, arch=ArchSpec("lenet5", 10, 1)
    )
    save_checkpoint(state, tmp_path / "c")
    meta = json.loads((tmp_path / "c.json").read_text())
    assert meta["arch"] == {"name": "lenet5", "num_classes": 10, "in_channels": 1}
    assert meta["shapes"]["features.0.weight"] == [6, 1, 5, 5]


def test_an_onnx_state_is_checkpointed_as_the_onnx_file(tmp_path: Path) -> None:
    onnx_path = export_onnx(create_model("lenet5", in_channels=1), (1, 32, 32), tmp_path / "m.onnx")
    state = ModelState(input_shape=(1, 32, 32), num_classes=10, onnx_path=onnx_path)
    weights = save_checkpoint(state, tmp_path / "ck" / "stage")
    assert weights.read_bytes() == onnx_path.read_bytes()
    loaded = load_checkpoint(weights)
    assert loaded.format == "onnx" and loaded.onnx_path == weights


def test_tampered_weights_are_detected(tmp_path: Path) -> None:
    model = create_model("lenet5", in_channels=1)
    state = ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=model, arch=ArchSpec("lenet5", 10, 1)
    )
    weights = save_checkpoint(state, tmp_path / "c")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(weights)


def test_a_missing_sidecar_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "nothing.safetensors")
