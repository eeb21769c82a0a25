"""``edgeslim compress`` with the shipped Deep Compression recipes: they parse, they run (on a
tiny budget here), and the summary prints the per-layer container table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compression.recipe import load_recipe_file, parse_recipe
from webapp.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["deep_compression_lenet300", "deep_compression_lenet5"])
def test_the_recipes_are_the_papers_four_steps(name: str) -> None:
    recipe = load_recipe_file(RECIPES / f"{name}.yaml")
    assert [s.method for s in recipe.stages] == [
        "finetune", "magnitude_pruning", "weight_sharing", "weight_coding"]  # fmt: skip
    assert recipe.targets.reference == "stage:0"


def test_compress_with_the_lenet300_recipe_prints_the_container_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load((RECIPES / "deep_compression_lenet300.yaml").read_text())
    # The shipped recipe, on a budget a test can afford: one epoch per training phase.
    data["eval"] = {"latency_runs": 0}
    data["stages"][0]["config"]["epochs"] = 1
    data["stages"][1]["config"].update(steps=1, epochs_per_step=0, finetune_epochs=1)
    data["stages"][2]["config"]["finetune_epochs"] = 1
    parse_recipe(data)
    recipe = tmp_path / "dc.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code = main(["compress", "--model", "lenet300_100", "--dataset", "mnist", "--recipe",
                 str(recipe), "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    dc = report["deep_compression"]
    assert [row["weight_bits"] for row in dc["layers"]] == [5, 5, 5]
    assert 0.06 < dc["totals"]["kept"] < 0.09
    assert (out / "final.esdc").stat().st_size == dc["totals"]["container_bytes"]
    printed = capsys.readouterr().out
    assert "Deep Compression: the container, layer by layer" in printed
    assert "classifier.1.weight" in printed
    assert "container verified" in printed and "identical predictions" in printed
    assert "final.esdc" in printed
