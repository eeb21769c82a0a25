"""ModelFacts and the check_model hooks: a recipe its model cannot run is refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression.errors import ConfigError, StageScopeError
from compression.inspection import inspect_module
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.recipe import check_recipe_for_model, check_recipe_for_state, parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model, list_models

BN_SCALE = {"stages": [{"method": "channel_pruning", "config": {"importance": "bn_scale"}}]}


def _state(arch: str) -> ModelState:
    module = create_model(arch, num_classes=10, in_channels=1)
    return ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec(arch, 10, 1)
    )


@pytest.mark.parametrize("arch", list_models(task="classification"))
def test_facts_from_a_module_and_from_its_stored_inspection_agree(arch: str) -> None:
    state = _state(arch)
    live = ModelFacts.from_state(state)
    stored = ModelFacts.from_info(
        inspect_module(state.module, (1, 32, 32), num_classes=10).to_dict(),  # type: ignore[arg-type]
        format="torch",
    )
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in state.module.modules())  # type: ignore[union-attr]
    assert live.has_batchnorm is has_bn and stored.has_batchnorm is has_bn
    assert [(x.name, x.kind) for x in live.layers] == [(x.name, x.kind) for x in stored.layers]
    assert live.has_classifier() is True and stored.has_classifier() is True


def test_a_zoo_version_without_a_layer_table_gets_it_from_the_architecture() -> None:
    facts = ModelFacts.from_info({"params": 61706}, format="torch", arch="lenet5", num_classes=10)
    assert facts.has_batchnorm is False
    assert facts.layer_names("conv") == ["features.0", "features.3"]
    unknown = ModelFacts.from_info({}, format="torch")
    assert unknown.has_batchnorm is None and unknown.layers == ()


def test_bn_scale_on_lenet5_is_refused_naming_the_stage_field_and_the_alternatives() -> None:
    facts = ModelFacts.from_state(_state("lenet5"))
    with pytest.raises(ConfigError) as refused:
        check_recipe_for_model(parse_recipe(BN_SCALE), facts)
    assert refused.value.field == "stages[0].config.importance"
    assert refused.value.message.startswith("channel_pruning: importance bn_scale")
    assert "lenet5 has no BatchNorm layers" in refused.value.message
    assert "use importance l1 or l2" in refused.value.message


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_the_alternatives_pass_on_lenet5(importance: str) -> None:
    recipe = parse_recipe(
        {"stages": [{"method": "channel_pruning", "config": {"importance": importance}}]}
    )
    check_recipe_for_model(recipe, ModelFacts.from_state(_state("lenet5")))


def test_the_same_recipe_passes_on_vgg11_bn() -> None:
    check_recipe_for_state(parse_recipe(BN_SCALE), _state("vgg11_bn"))


def test_the_check_follows_the_stages_the_model_passes_through() -> None:
    # The third stage sees an ONNX model: the scope check names it, before any hook runs.
    l1 = {"method": "channel_pruning", "config": {"importance": "l1"}}
    recipe = parse_recipe({"stages": ["finetune", "ptq_int8", l1]})
    with pytest.raises(StageScopeError, match=r"stages\[2\] \(channel_pruning\).*ONNX"):
        check_recipe_for_model(recipe, ModelFacts.from_state(_state("vgg11_bn")))
    onnx = ModelFacts.from_state(_state("vgg11_bn")).converted_to("onnx")
    assert onnx.format == "onnx" and onnx.has_batchnorm is False and onnx.layers == ()


def test_a_later_stage_is_named_when_it_is_the_one_refused() -> None:
    recipe = parse_recipe(
        {
            "stages": [
                "finetune",
                {"method": "channel_pruning", "config": {"importance": "bn_scale"}},
            ]
        }
    )
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.config\.importance: channel_pruning"):
        check_recipe_for_model(recipe, ModelFacts.from_state(_state("lenet5")))


def test_attention_transfer_on_a_model_without_convolutions_is_refused() -> None:
    recipe = parse_recipe(
        {"stages": [{"method": "distillation", "config": {"attention_weight": 1000.0}}]}
    )
    with pytest.raises(ConfigError) as refused:
        check_recipe_for_model(recipe, ModelFacts.from_state(_state("lenet300_100")))
    assert refused.value.field == "stages[0].config.attention_weight"
    assert "lenet300_100 has no convolution layers" in refused.value.message
    assert "classifier.1, classifier.3, classifier.5" in refused.value.message
    check_recipe_for_model(recipe, ModelFacts.from_state(_state("lenet5")))  # it has convs


def test_feature_hints_need_a_classifier_layer() -> None:
    recipe = parse_recipe(
        {"stages": [{"method": "distillation", "config": {"feature_weight": 1.0}}]}
    )
    check_recipe_for_model(recipe, ModelFacts.from_state(_state("lenet5")))
    headless = ModelFacts.from_module(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), num_classes=10)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.config\.feature_weight: .*10 outputs"):
        check_recipe_for_model(recipe, headless)


def test_an_onnx_file_has_its_facts_read_from_the_graph(tmp_path: Path) -> None:
    state = _state("vgg11_bn")
    path = tmp_path / "m.onnx"
    export_onnx(state.module, (1, 32, 32), path)  # type: ignore[arg-type]
    facts = ModelFacts.from_state(ModelState(input_shape=(1, 32, 32), num_classes=10,
                                             onnx_path=path))  # fmt: skip
    assert facts.format == "onnx" and facts.has_batchnorm is False  # folded on export
    assert facts.has_conv() is True and facts.num_classes == 10
