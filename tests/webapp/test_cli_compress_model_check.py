"""``edgeslim compress`` checks the recipe against the model before anything is loaded or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.errors import ConfigError
from webapp.cli import main

BN_SCALE = "stages:\n  - method: channel_pruning\n    config: {importance: bn_scale}\n"


def test_bn_scale_on_lenet5_exits_2_with_one_line_naming_l1_and_l2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(BN_SCALE)
    out = tmp_path / "out"
    code = main(["compress", "--model", "lenet5", "--dataset", "digits", "--recipe", str(recipe),
                 "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "stages[0].config.importance" in err and "lenet5 has no BatchNorm layers" in err
    assert "use importance l1 or l2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_state_dict_file_is_checked_from_its_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compression.model_io import save_model_safetensors
    from compression.zoo import create_model

    weights = save_model_safetensors(
        create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "lenet.safetensors"
    )
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(BN_SCALE)
    out = tmp_path / "out"
    code = main(["compress", "--model", str(weights), "--arch", "lenet5", "--dataset", "digits",
                 "--recipe", str(recipe), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2
    assert "use importance l1 or l2" in capsys.readouterr().err
    assert not out.exists()


def test_a_zoo_detector_is_refused_naming_its_task_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(BN_SCALE)
    out = tmp_path / "out"
    code = main(["compress", "--model", "yolov3_tiny", "--dataset", "digits", "--recipe",
                 str(recipe), "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "'yolov3_tiny' is a detection architecture" in err and "Traceback" not in err
    assert not out.exists()


def test_the_same_recipe_passes_the_check_on_vgg11_bn(tmp_path: Path) -> None:
    import argparse

    from compression.recipe import parse_recipe
    from webapp.cli.compress import _check_recipe_for_model

    args = argparse.Namespace(model="vgg11_bn", arch=None, num_classes=None, in_channels=None)
    _check_recipe_for_model(args, parse_recipe(BN_SCALE))  # raises when refused
    args.model = "lenet5"
    with pytest.raises(ConfigError, match="use importance l1 or l2"):
        _check_recipe_for_model(args, parse_recipe(BN_SCALE))
