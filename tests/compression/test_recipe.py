"""Recipes: parsing, registry validation with field paths, and scope checks stage by stage."""

from __future__ import annotations

import pytest

from compression.errors import ConfigError, StageScopeError
from compression.recipe import (
    parse_recipe,
    recipe_hash,
    recipe_to_dict,
    recipe_to_yaml,
    validate_recipe_for_model,
)

YAML = """
name: vgg-slim
seed: 3
targets: {max_accuracy_drop: 0.5}
eval: {latency_runs: 20, threads: 1}
stages:
  - method: channel_pruning
    config: {importance: bn_scale, ratio: 0.5}
  - method: ptq_int8
"""


def test_it_parses_the_documented_yaml_shape() -> None:
    r = parse_recipe(YAML)
    assert r.name == "vgg-slim" and r.seed == 3
    assert r.targets.max_accuracy_drop == 0.5
    assert (r.eval.latency_runs, r.eval.threads, r.eval.warmup) == (20, 1, 10)
    assert [s.method for s in r.stages] == ["channel_pruning", "ptq_int8"]
    assert r.stages[0].config.ratio == 0.5


def test_json_text_and_dicts_parse_the_same() -> None:
    r = parse_recipe(YAML)
    assert parse_recipe(recipe_to_dict(r)) == r
    import json

    assert parse_recipe(json.dumps(recipe_to_dict(r))) == r
    assert parse_recipe(recipe_to_yaml(r)) == r


def test_an_unknown_method_is_named_with_its_field_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_recipe({"stages": [{"method": "finetune"}, {"method": "magic"}]})
    assert info.value.field == "stages[1].method" and "finetune" in str(info.value)


def test_an_unknown_parameter_is_named_with_its_field_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_recipe({"stages": [{"method": "channel_pruning", "config": {"ratoi": 0.5}}]})
    assert info.value.field == "stages[0].config.ratoi"


def test_an_out_of_range_value_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_recipe({"stages": [{"method": "channel_pruning", "config": {"ratio": 1.5}}]})
    assert info.value.field == "stages[0].config.ratio" and "< 1" in info.value.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"stages": []}, "stages"),
        ({"stages": [{"method": "finetune"}], "stagse": []}, "stagse"),
        ({"stages": [{"method": "finetune", "cfg": {}}]}, "stages[0].cfg"),
        ({"stages": [{"method": "finetune"}], "eval": {"threads": 0}}, "eval.threads"),
        (
            {"stages": [{"method": "finetune"}], "targets": {"max_accuracy_drop": -1}},
            "targets.max_accuracy_drop",
        ),
        ({"stages": [{"method": "finetune"}], "seed": "x"}, "seed"),
    ],
)
def test_malformed_recipes_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_recipe(data)
    assert info.value.field == field


def test_broken_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_recipe("stages: [unclosed")


def test_a_torch_method_after_quantization_is_a_scope_error() -> None:
    r = parse_recipe({"stages": ["ptq_int8", {"method": "channel_pruning"}]})
    with pytest.raises(StageScopeError) as info:
        validate_recipe_for_model(r, "torch", "classification")
    assert str(info.value) == (
        "stages[1] (channel_pruning): needs a torch model but the model is ONNX at that point"
    )


def test_an_onnx_model_cannot_start_with_training() -> None:
    r = parse_recipe({"stages": ["finetune"]})
    with pytest.raises(StageScopeError, match=r"stages\[0\] \(finetune\)"):
        validate_recipe_for_model(r, "onnx", "classification")
    validate_recipe_for_model(parse_recipe({"stages": ["ptq_int8"]}), "onnx", "classification")


def test_the_hash_ignores_measurement_settings_but_not_stages() -> None:
    base = parse_recipe(YAML)
    other_eval = parse_recipe(YAML.replace("latency_runs: 20", "latency_runs: 5"))
    other_ratio = parse_recipe(YAML.replace("ratio: 0.5", "ratio: 0.4"))
    assert recipe_hash(base) == recipe_hash(other_eval)
    assert recipe_hash(base) != recipe_hash(other_ratio)


def test_the_target_reference_must_name_an_earlier_stage() -> None:
    stages = [{"method": "finetune"}, {"method": "ptq_int8"}]
    ok = parse_recipe({"stages": stages, "targets": {"reference": "stage:0"}})
    assert ok.targets.reference == "stage:0"
    for bad in ("stage:1", "stage:x", "first"):
        with pytest.raises(ConfigError) as info:
            parse_recipe({"stages": stages, "targets": {"reference": bad}})
        assert info.value.field == "targets.reference"
