"""Layer sensitivity (compression.sensitivity) and channel_pruning's per-layer ratios."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError
from compression.evaluation import accuracy_torch
from compression.recipe import check_recipe_for_state, parse_recipe
from compression.sensitivity import (
    SensitivityResult,
    check_ratios,
    layer_sensitivity,
    ratios_within,
)
from compression.stage import ModelState, StageContext
from compression.training import train
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=384, val=192, test=192, seed=0)


def _ctx(module: nn.Module, data: DatasetBundle, work: Path) -> StageContext:
    return StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=data.num_classes, module=module),
        data=data,
        device=CPU,
        work_dir=work,
        seed=0,
        report=lambda *_a: None,
        check_cancel=lambda: None,
    )


@pytest.fixture(scope="module")
def lenet(digits: DatasetBundle, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    train(model, digits, _ctx(model, digits, tmp_path_factory.mktemp("t")), epochs=4, lr=0.05,
          batch_size=16)  # fmt: skip
    return model


class _Loader:
    """A loader that records that it was read (the val split must be the one measured)."""

    def __init__(self, data: DatasetBundle, split: str) -> None:
        self.inner = data.eval_loader(split)
        self.reads = 0

    def __iter__(self) -> Any:
        self.reads += 1
        return iter(self.inner)


def test_sensitivity_prunes_each_layer_alone_in_module_order_on_val(
    digits: DatasetBundle, lenet: nn.Module
) -> None:
    before = copy.deepcopy(lenet.state_dict())
    val = _Loader(digits, "val")
    calls: list[float] = []
    result = layer_sensitivity(
        lenet, val, [0.75, 0.25, 0.5], input_shape=digits.input_shape, num_classes=10,
        progress=lambda f, _m: calls.append(f),
    )  # fmt: skip
    # Layers in module order, the classifier (10 logits) never among them; ratios sorted.
    assert [layer.name for layer in result.layers] == [
        "features.0", "features.3", "classifier.1", "classifier.3",
    ]  # fmt: skip
    assert result.ratios == (0.25, 0.5, 0.75)
    assert result.split == "val" and result.samples == len(digits.val)
    assert val.reads == 1  # batches read once, then reused for every cell
    assert result.baseline_val_acc == pytest.approx(accuracy_torch(lenet, digits.val_loader()))
    # The cells really prune: channels left shrink with the ratio, and accuracy moves.
    conv2 = result.layers[1]
    assert conv2.channels == 16 and conv2.kept == (12, 8, 4)
    assert conv2.val_acc[2] < result.baseline_val_acc - 3.0
    assert len({a for layer in result.layers for a in layer.val_acc}) > 3
    assert calls[-1] == pytest.approx(1.0) and len(calls) == 12
    # The model handed in is untouched.
    for k, v in lenet.state_dict().items():
        assert torch.equal(v, before[k])
    assert SensitivityResult.from_dict(result.to_dict()) == result


def test_ratios_within_picks_the_largest_ratio_inside_the_tolerance() -> None:
    result = SensitivityResult.from_dict(
        {
            "ratios": [0.25, 0.5, 0.75],
            "baseline_val_acc": 90.0,
            "importance": "l1",
            "round_to": 1,
            "samples": 100,
            "layers": [
                {"name": "a", "kind": "conv", "channels": 8, "kept": [6, 4, 2],
                 "val_acc": [89.8, 89.2, 80.0]},
                {"name": "b", "kind": "conv", "channels": 8, "kept": [6, 4, 2],
                 "val_acc": [85.0, 84.0, 70.0]},
                {"name": "c", "kind": "linear", "channels": 8, "kept": [6, 4, 2],
                 "val_acc": [90.5, 90.0, 89.9]},
                {"name": "d", "kind": "conv", "channels": 4, "kept": [4, 4, 4],
                 "val_acc": [90.0, 90.0, 90.0]},
            ],
        }
    )  # fmt: skip
    assert ratios_within(result, 1.0) == {"a": 0.5, "c": 0.75}
    assert list(ratios_within(result, 10.0)) == ["a", "b", "c"]  # d: no channel would go
    with pytest.raises(ConfigError):
        ratios_within(result, -1.0)


@pytest.mark.parametrize(
    "bad", [[], [0.0], [1.0], [0.5, "x"], [float("nan")], [i / 100 for i in range(1, 13)]]
)
def test_bad_ratios_are_refused(bad: list[Any]) -> None:
    with pytest.raises(ConfigError):
        check_ratios(bad)


def _run_pruning(model: nn.Module, data: DatasetBundle, work: Path, **config: Any) -> Any:
    spec = registry.get_method("channel_pruning")
    cfg = registry.config_from_dict(spec.config_cls, config)
    return spec.run(_ctx(model, data, work), cfg)


def test_channel_pruning_honours_per_layer_ratios(
    digits: DatasetBundle, lenet: nn.Module, tmp_path: Path
) -> None:
    result = _run_pruning(
        copy.deepcopy(lenet), digits, tmp_path, importance="l1", round_to=1, finetune_epochs=1,
        layer_ratios={"features.3": 0.5, "classifier.1": 0.75}, iterative_steps=2,
    )  # fmt: skip
    after = {layer.name: layer.channels_after for layer in result.layers}
    assert after == {
        "features.0": 6, "features.3": 8, "classifier.1": 30, "classifier.3": 84,
        "classifier.5": 10,
    }  # fmt: skip
    module = result.model.module
    assert module.features[3].out_channels == 8 and module.classifier[3].in_features == 30
    assert "channel_ratio" not in result.metrics


def test_per_layer_ratios_naming_unknown_layers_are_refused(
    digits: DatasetBundle, lenet: nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        _run_pruning(copy.deepcopy(lenet), digits, tmp_path, importance="l1",
                     layer_ratios={"features.3": 0.5, "classifier.5": 0.5, "nope": 0.2})  # fmt: skip
    assert info.value.field == "config.layer_ratios.classifier.5"
    assert "nope" in str(info.value) and "features.0, features.3" in str(info.value)
    # Before a job is queued: the recipe check knows the model's layers.
    state = ModelState(input_shape=digits.input_shape, num_classes=10, module=lenet)
    recipe = parse_recipe(
        {"stages": [{"method": "channel_pruning",
                     "config": {"importance": "l1", "layer_ratios": {"conv9": 0.5}}}]}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no conv or linear layer named 'conv9'"):
        check_recipe_for_state(recipe, state)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"layer_ratios": {"a": 1.0}}, "config.layer_ratios.a"),
        ({"layer_ratios": {"a": -0.1}}, "config.layer_ratios.a"),
        ({"layer_ratios": {"a": "half"}}, "config.layer_ratios.a"),
        ({"layer_ratios": {"a": None}}, "config.layer_ratios.a"),
        ({"layer_ratios": {"": 0.5}}, "config.layer_ratios"),
        ({"layer_ratios": [0.5]}, "config.layer_ratios"),
        ({"layer_ratios": {}}, "config.layer_ratios"),
        ({"layer_ratios": {"a": 0.95}}, "config.layer_ratios.a"),  # above max_layer_ratio 0.9
        ({"layer_ratios": {"a": 0.5}, "target_mac_reduction": 2.0}, "config.layer_ratios"),
    ],
)
def test_bad_per_layer_ratios_are_refused_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    spec = registry.get_method("channel_pruning")
    with pytest.raises(ConfigError) as info:
        registry.config_from_dict(spec.config_cls, config)
    assert info.value.field == field


def test_the_registry_describes_the_mapping_for_forms_api_and_docs() -> None:
    spec = registry.get_method("channel_pruning")
    p = next(p for p in spec.params() if p.name == "layer_ratios")
    assert p.type == registry.MAPPING_TYPE and p.optional
    schema = registry.config_json_schema(spec.config_cls)["properties"]["layer_ratios"]
    assert schema["type"] == ["object", "null"]
    assert schema["additionalProperties"] == {
        "type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0,
    }  # fmt: skip
