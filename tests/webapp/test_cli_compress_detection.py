"""``edgeslim compress`` on a zoo detector: mAP in the report and the printed table, the detector
options, the shipped detection recipe, and the task refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compression import detection_data
from compression.detection_data import SceneConfig, load_mnist_scenes
from webapp.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RECIPE = """
name: cli-detection
targets: {max_accuracy_drop: 100}
eval: {latency_runs: 0}
stages:
  - method: finetune
    config: {epochs: 1, lr: 0.001, optimizer: adam, batch_size: 8}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_shipped_recipe(path: Path) -> Path:
    """recipes/yolov3_tiny_prune_int8.yaml as shipped (train -> channel_pruning -> recover ->
    int8), each training stage cut to one epoch, eight calibration images, no timing and no
    mAP limit."""
    import yaml

    recipe = yaml.safe_load((RECIPES / "yolov3_tiny_prune_int8.yaml").read_text())
    recipe["eval"] = {"latency_runs": 0}
    recipe["targets"]["max_accuracy_drop"] = 100  # a one-epoch detector scores near zero
    for stage in recipe["stages"]:
        if stage["method"] == "finetune":
            stage["config"].update(epochs=1, batch_size=8)
        if stage["method"] == "ptq_int8":
            stage["config"]["calibration_samples"] = 8
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_compress_trains_prunes_and_quantizes_a_detector_and_prints_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15's 'the same from edgeslim compress': the shipped chain on the built-in
    mnist_scenes (fewer scenes), the report's mAP on every state."""
    asked: list[tuple[str, int, int | None]] = []

    def few_scenes(name: str, *, seed: int = 0, size: int | None = None) -> Any:
        asked.append((name, seed, size))
        return load_mnist_scenes(SceneConfig(seed=seed, size=64, n_train=8, n_val=4, n_test=4))

    monkeypatch.setattr(detection_data, "load_builtin_detection", few_scenes)
    recipe = tiny_shipped_recipe(tmp_path / "r.yaml")
    out = tmp_path / "out"
    code = main(["compress", "--model", "yolov3_tiny", "--width", "0.25", "--input-size", "64",
                 "--dataset", "mnist_scenes", "--split-seed", "1", "--recipe", str(recipe),
                 "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert asked == [("mnist_scenes", 1, 64)]
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "detection" and report["final"]["metric"] == "mAP@0.5"
    assert report["model"]["input_shape"] == [3, 64, 64]
    assert report["model"]["arch"]["options"] == [["input_size", 64], ["width", 0.25]]
    assert report["dataset"]["totals"] == {"train": 8, "val": 4, "test": 4}
    kinds = {a["kind"] for a in report["artifacts"]}
    assert {"onnx_fp32", "onnx_int8", "onnx_e2e", "detections_grid"} <= kinds
    methods = [s["method"] for s in report["stages"]]
    assert methods == ["finetune", "channel_pruning", "finetune", "ptq_int8"]
    for m in [report["baseline"], *(s["metrics"] for s in report["stages"]), report["final"]]:
        assert m["metric"] == "mAP@0.5" and 0 <= m["detection"]["map50"] <= 1
        assert m["accuracy"] == pytest.approx(100 * m["detection"]["map50"], abs=1e-6)
    # channel_pruning met the recipe's 2x MAC target on the detector (heads kept)
    pruned, trained = report["stages"][1]["metrics"]["macs"], report["stages"][0]["metrics"]["macs"]
    assert pruned <= trained / 1.9
    printed = capsys.readouterr().out
    assert "mAP50 %" in printed and "mAP50-95" in printed and "e2e ms" in printed
    assert "mAP@0.5 drop" in printed
    assert "test acc." not in printed


def test_a_detector_with_a_classification_set_and_the_reverse_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    code = main(["compress", "--model", "yolov3_tiny", "--dataset", "digits", "--recipe",
                 str(recipe), "--out", str(tmp_path / "a"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'yolov3_tiny' is a detection architecture but 'digits' is a classification" in err
    code = main(["compress", "--model", "lenet5", "--dataset", "mnist_scenes", "--recipe",
                 str(recipe), "--out", str(tmp_path / "b"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "'lenet5' is a classification architecture but 'mnist_scenes' is a detection" in err
    code = main(["compress", "--model", "lenet5", "--width", "0.5", "--dataset", "digits",
                 "--recipe", str(recipe), "--out", str(tmp_path / "c"), "--quiet"])  # fmt: skip
    assert code == 2 and "--width" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_the_shipped_detection_recipe_fits_yolov3_tiny() -> None:
    from compression.model_facts import ModelFacts
    from compression.recipe import check_recipe_for_model, load_recipe_file

    recipe = load_recipe_file(RECIPES / "yolov3_tiny_prune_int8.yaml")
    assert [s.method for s in recipe.stages] == [
        "finetune",
        "channel_pruning",
        "finetune",
        "ptq_int8",
    ]
    facts = ModelFacts.from_info(None, format="torch", task="detection", arch="yolov3_tiny")
    check_recipe_for_model(recipe, facts)  # raises when a stage refuses a detector
