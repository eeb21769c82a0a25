"""Checkpoints that hold structure: a decomposed layer comes back as the same subtree."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from compression.onnx_export import export_onnx
from compression.stage import ArchSpec, ModelState
from compression.structure import (
    REPLACED_ATTR,
    StructureError,
    apply_structure,
    replace_module,
    structural,
    structure_spec,
)
from compression.zoo import create_model


def _three_convs() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(16, 5, 1, bias=False),
        nn.Conv2d(5, 7, 3, stride=1, padding=1, bias=False),
        nn.Conv2d(7, 16, 1, bias=True),
    )


def _decomposed_resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3).eval()
    replace_module(model, "layer1.0.conv1", _three_convs())
    for m in model.modules():  # non-default statistics must survive too
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.uniform_(-1, 1)
    return model


def _state(model: nn.Module) -> ModelState:
    return ModelState(
        input_shape=(3, 32, 32), num_classes=10, module=model, arch=ArchSpec("resnet20", 10, 3)
    )


def test_a_replaced_conv_round_trips_with_identical_outputs(tmp_path: Path) -> None:
    model = _decomposed_resnet20()
    weights = save_checkpoint(_state(model), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    (entry,) = meta["structure"]
    assert entry["path"] == "layer1.0.conv1"
    assert [c[1]["args"]["out_channels"] for c in entry["module"]["children"]] == [5, 7, 16]
    assert entry["module"]["children"][2][1]["args"]["bias"] is True
    loaded = load_checkpoint(weights)
    assert loaded.module is not None
    assert isinstance(loaded.module.get_submodule("layer1.0.conv1"), nn.Sequential)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    # ... and it can be saved again (a resumed run checkpoints its next stage).
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "again"))
    assert again.module is not None
    with torch.no_grad():
        assert torch.equal(model(x), again.module(x))


def test_a_plain_model_writes_no_structure(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    save_checkpoint(_state(model), tmp_path / "plain")
    assert "structure" not in json.loads((tmp_path / "plain.json").read_text())


def test_conv_arguments_survive(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3).eval()
    odd = nn.Sequential(
        nn.Conv2d(16, 16, (3, 1), stride=(1, 1), padding=(2, 0), dilation=(2, 1), groups=16),
        nn.BatchNorm2d(16, eps=1e-3, momentum=0.2),
        nn.Hardswish(),
        nn.Conv2d(16, 16, (1, 3), padding=(0, 1), groups=4, bias=False),
    )
    replace_module(model, "layer1.1.conv2", odd)
    spec = structure_spec(model)
    fresh = create_model("resnet20", num_classes=10, in_channels=3)
    apply_structure(fresh, json.loads(json.dumps(spec)))
    rebuilt = fresh.get_submodule("layer1.1.conv2")
    assert str(rebuilt) == str(odd)
    assert rebuilt[0].dilation == (2, 1) and rebuilt[0].groups == 16  # type: ignore[index]


def test_deepcopy_keeps_the_record() -> None:
    model = _decomposed_resnet20()
    twin = copy.deepcopy(model)
    assert getattr(twin, REPLACED_ATTR) == ["layer1.0.conv1"]
    assert structure_spec(twin) == structure_spec(model)


def test_nested_and_enclosing_replacements_keep_one_record_per_subtree() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    replace_module(model, "layer1.0.conv1", _three_convs())
    replace_module(model, "layer1.0.conv1.1", nn.Conv2d(5, 7, 3, padding=1, bias=False))
    assert getattr(model, REPLACED_ATTR) == ["layer1.0.conv1"]
    replace_module(model, "layer1.0", nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()))
    assert getattr(model, REPLACED_ATTR) == ["layer1.0"]


def test_an_unknown_layer_type_is_a_clear_checkpoint_error(tmp_path: Path) -> None:
    class Mystery(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = create_model("resnet20", num_classes=10, in_channels=3)
    replace_module(
        model, "layer1.0.conv1", nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), Mystery())
    )
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.1.*Mystery.*@structural"):
        save_checkpoint(_state(model), tmp_path / "c")


def test_a_sidecar_naming_an_unknown_type_is_refused(tmp_path: Path) -> None:
    weights = save_checkpoint(_state(_decomposed_resnet20()), tmp_path / "c")
    meta_path = tmp_path / "c.json"
    meta = json.loads(meta_path.read_text())
    meta["structure"][0]["module"]["children"][0][1]["type"] = "os.system"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unknown type 'os\.system'"):
        load_checkpoint(weights)
    meta["structure"][0]["module"] = {"type": "registered", "name": "nope", "spec": {}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'nope', which no installed method registers"):
        load_checkpoint(weights)


def test_bad_paths_are_refused() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(StructureError, match="no submodule"):
        replace_module(model, "layer9.conv", nn.Identity())
    with pytest.raises(StructureError, match="not a dotted submodule path"):
        replace_module(model, "", nn.Identity())


@structural("test_scaled_channels")
class _Scaled(nn.Module):
    """A registered layer with a reshape in forward (what a TT layer would look like)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.reshape(1, -1, 1, 1)

    def to_spec(self) -> dict[str, Any]:
        return {"channels": self.channels}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> _Scaled:
        return cls(int(spec["channels"]))


def test_a_registered_layer_round_trips_and_exports_to_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _decomposed_resnet20()
    layer = _Scaled(16)
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)
    replace_module(model, "layer1.1.shortcut", nn.Identity())  # a standard no-op is fine too
    replace_module(model, "layer1.1.bn1", nn.Sequential(layer, nn.BatchNorm2d(16)))
    model.eval()  # the new BatchNorm was built in training mode
    weights = save_checkpoint(_state(model), tmp_path / "c")
    loaded = load_checkpoint(weights)
    assert loaded.module is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(expected, loaded.module(x))
    onnx_path = export_onnx(loaded.module, (3, 32, 32), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
