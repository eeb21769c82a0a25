"""Sweep grids: checked against the registry's config dataclasses and expanded before anything
runs; the shared baseline is measured once and reused by each run without measuring again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError
from compression.pipeline import measure_baseline, run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.sweep import MAX_SWEEP_POINTS, parse_grid
from compression.zoo import create_model

PRUNE = {
    "name": "prune",
    "stages": [{"method": "channel_pruning", "config": {"finetune_epochs": 1}}],
}


def test_a_two_parameter_grid_expands_to_every_combination_in_order():
    grid = parse_grid(PRUNE, {"target_mac_reduction": [2, 4], "importance": ["l1", "bn_scale"]})
    assert [p.values for p in grid.points] == [
        {"target_mac_reduction": 2, "importance": "l1"},
        {"target_mac_reduction": 2, "importance": "bn_scale"},
        {"target_mac_reduction": 4, "importance": "l1"},
        {"target_mac_reduction": 4, "importance": "bn_scale"},
    ]
    config = grid.points[3].recipe["stages"][0]["config"]
    assert config["target_mac_reduction"] == 4.0 and config["importance"] == "bn_scale"
    assert config["finetune_epochs"] == 1  # the rest of the recipe is kept
    assert grid.points[3].recipe["name"] == "prune [target_mac_reduction=4, importance=bn_scale]"
    assert [a.param for a in grid.axes] == ["target_mac_reduction", "importance"]


def test_the_list_form_names_a_stage_and_resolves_the_same_way():
    recipe = {"stages": [{"method": "finetune"}, {"method": "channel_pruning"}]}
    grid = parse_grid(recipe, [{"stage": 1, "param": "ratio", "values": [0.25, 0.5]}])
    assert [p.recipe["stages"][1]["config"]["ratio"] for p in grid.points] == [0.25, 0.5]


def test_exactly_64_points_are_allowed_and_65_are_refused():
    ok = parse_grid(
        PRUNE, {"ratio": [i / 100 for i in range(1, 9)], "lr": [0.001 * i for i in range(1, 9)]}
    )
    assert len(ok.points) == MAX_SWEEP_POINTS == 64
    with pytest.raises(ConfigError) as exc:
        parse_grid(
            PRUNE, {"ratio": [i / 100 for i in range(1, 14)], "lr": [0.01 * i for i in range(1, 6)]}
        )
    assert "13 x 5 = 65 points" in str(exc.value) and "at most 64" in str(exc.value)


def test_a_parameter_the_method_does_not_have_is_refused_with_its_real_parameters():
    with pytest.raises(ConfigError) as exc:
        parse_grid(PRUNE, {"sparsity": [0.5, 0.9]})
    assert exc.value.field == "grid.sparsity"
    assert "channel_pruning has no parameter 'sparsity'" in exc.value.message
    assert "target_mac_reduction" in exc.value.message


@pytest.mark.parametrize(
    ("grid", "says"),
    [
        ({}, "at least one parameter"),
        ({"ratio": [0.1], "lr": [0.1], "batch_size": [8]}, "at most 2 parameters"),
        ({"ratio": []}, "at least one value"),
        ({"ratio": "0.5"}, "a list of values"),
        ({"ratio": [0.5, 0.5]}, "listed twice"),
        ({"importance": ["l1", "l7"]}, "importance=l7"),
        ({"ratio": [1.5]}, "ratio=1.5"),
        ({"3.ratio": [0.1]}, "no stage 3"),
        ("ratio", "must map a stage parameter"),
    ],
)
def test_bad_grids_are_refused_clearly(grid, says):
    with pytest.raises(ConfigError) as exc:
        parse_grid(PRUNE, grid)
    assert says in str(exc.value)


def test_a_parameter_two_stages_have_must_name_its_stage():
    recipe = {"stages": [{"method": "finetune"}, {"method": "channel_pruning"}]}
    with pytest.raises(ConfigError) as exc:
        parse_grid(recipe, {"lr": [0.1, 0.01]})
    assert "'0.lr'" in str(exc.value)
    assert len(parse_grid(recipe, {"1.lr": [0.1, 0.01]}).points) == 2


# --- the shared baseline -----------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> DatasetBundle:
    return load_digits(size=32).subset(train=128, val=64, seed=0)


def _lenet() -> ModelState:
    torch.manual_seed(0)
    return ModelState(
        input_shape=(1, 32, 32),
        num_classes=10,
        module=create_model("lenet5", num_classes=10, in_channels=1),
        arch=ArchSpec("lenet5", 10, 1),
    )


TINY = {
    "seed": 0,
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1, "rounds": 2},
    "stages": [{"method": "finetune", "config": {"epochs": 1, "batch_size": 64}}],
}


def test_runs_given_a_shared_baseline_reuse_its_numbers_and_time_only_their_own_models(
    tmp_path: Path, data: DatasetBundle, monkeypatch: pytest.MonkeyPatch
):
    import compression.pipeline as pipeline

    recipe = parse_recipe(TINY)
    model = _lenet()
    shared = measure_baseline(recipe, model, data, tmp_path / "base")
    assert shared.metrics.latency is not None and shared.onnx_path.is_file()
    assert measure_baseline(recipe, model, data, tmp_path / "base") == shared  # stored: no rerun

    measured: list[Path] = []
    timed: list[list[Path]] = []
    real_measure, real_time = pipeline._measure, pipeline.measure_latency_isolated
    monkeypatch.setattr(
        pipeline,
        "_measure",
        lambda r, m, d, w, *a, **k: measured.append(w) or real_measure(r, m, d, w, *a, **k),
    )
    monkeypatch.setattr(
        pipeline,
        "measure_latency_isolated",
        lambda paths, **k: timed.append(list(paths)) or real_time(paths, **k),
    )
    for ratio_seed in (1, 2):
        child = parse_recipe({**TINY, "seed": ratio_seed})
        report = run_recipe(
            child, model, data, tmp_path / f"child{ratio_seed}", shared_baseline=shared
        )
        assert report.baseline.to_dict() == {
            **shared.metrics.to_dict(),
            "onnx_path": "baseline/model.onnx",
        }
        assert (tmp_path / f"child{ratio_seed}" / "baseline" / "model.onnx").is_file()
        assert (
            json.loads((tmp_path / f"child{ratio_seed}" / "report.json").read_text())["baseline"][
                "latency"
            ]
            == shared.metrics.latency.to_dict()
        )
    # Each child measured its own stage only, and timed its own model only.
    assert all("baseline" not in str(w) for w in measured) and len(measured) == 2
    assert [len(t) for t in timed] == [1, 1]


def test_a_shared_baseline_of_other_eval_settings_is_refused(tmp_path: Path, data: DatasetBundle):
    shared = measure_baseline(parse_recipe(TINY), _lenet(), data, tmp_path / "base")
    other = parse_recipe({**TINY, "eval": {**TINY["eval"], "latency_runs": 4}})
    with pytest.raises(ConfigError) as exc:
        run_recipe(other, _lenet(), data, tmp_path / "child", shared_baseline=shared)
    assert "shared baseline was measured with another eval" in str(exc.value)
