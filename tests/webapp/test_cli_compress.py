"""``edgeslim compress`` and ``edgeslim methods`` run end to end without Django."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webapp.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RECIPE = """
name: cli-test
targets: {max_accuracy_drop: 100}
eval: {latency_runs: 3, warmup: 1, threads: 1}
stages:
  - method: finetune
    config: {epochs: 1, lr: 0.05}
  - method: ptq_int8
    config: {calibration_samples: 8}
"""


def test_compress_writes_the_report_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    code = main(["compress", "--model", "lenet5", "--dataset", "digits", "--recipe", str(recipe),
                 "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["method"] for s in report["stages"]] == ["finetune", "ptq_int8"]
    assert (out / "final.onnx").is_file() and (out / "final.int8.onnx").is_file()
    printed = capsys.readouterr().out
    assert "baseline" in printed and "final (onnx)" in printed and "p50 ms" in printed


def test_compress_on_mnist_reports_test_accuracy_with_declared_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: mnist\neval: {latency_runs: 0}\nstages:\n  - method: magnitude_pruning\n"
        "    config: {sparsity: 0.5, steps: 1, epochs_per_step: 0, finetune_epochs: 0}\n"
    )
    out = tmp_path / "out"
    code = main(["compress", "--model", "lenet300_100", "--dataset", "mnist", "--split-seed", "2",
                 "--normalization", "unit", "--recipe", str(recipe), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "mnist" and report["dataset"]["split_seed"] == 2
    assert report["dataset"]["totals"] == {"train": 3500, "val": 500, "test": 1000}
    assert report["preprocessing"]["normalization"] == "unit"
    assert report["preprocessing"]["mean"] == [0.0] and report["preprocessing"]["std"] == [1.0]
    assert report["baseline"]["eval_split"] == "test" and report["baseline"]["test_images"] == 1000
    printed = capsys.readouterr().out
    assert "test acc." in printed and "val acc." in printed


def test_imagenet_statistics_on_grayscale_data_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    code = main(["compress", "--model", "lenet5", "--dataset", "mnist", "--normalization",
                 "imagenet", "--recipe", str(recipe), "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--normalization" in err and "3-channel" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_bad_recipe_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - method: channel_pruning\n    config: {ratio: 2}\n")
    code = main(["compress", "--model", "lenet5", "--dataset", "digits", "--recipe", str(recipe),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "stages[0].config.ratio" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unsafe_model_file_is_refused_with_the_export_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    code = main(["compress", "--model", str(tmp_path / "model.pt"), "--arch", "lenet5",
                 "--dataset", "digits", "--recipe", str(recipe), "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "safetensors" in capsys.readouterr().err


def test_a_state_dict_of_the_wrong_architecture_names_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "m.safetensors"))
    code = main(["compress", "--model", str(tmp_path / "m.safetensors"), "--arch", "lenet5",
                 "--dataset", "digits", "--recipe", str(recipe), "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "unexpected keys: weight" in capsys.readouterr().err


def test_methods_lists_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    from compression.registry import list_methods

    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert all(spec.name in printed for spec in list_methods())


def test_methods_markdown_is_the_generated_docs_table(capsys: pytest.CaptureFixture[str]) -> None:
    from compression.methods.docs import methods_markdown

    assert main(["methods", "--markdown"]) == 0
    assert capsys.readouterr().out == methods_markdown()


def test_the_cli_modules_do_not_import_django() -> None:
    import subprocess

    code = (
        "import sys; import webapp.cli.compress, webapp.cli.methods; "
        "assert not any(m.startswith('django') for m in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
