"""``resume_files`` names what a resume reads: a run crashed after stage 0 in one folder, those
files and ``state.json`` copied into an empty folder, resume there without running stage 0
again, and end with the same final files; unsafe paths are never named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from compression.datasets import load_digits
from compression.pipeline import run_recipe
from compression.recipe import parse_recipe
from compression.run_files import STATE_FILE, final_files, resume_files
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model

RECIPE = {
    "name": "run-files",
    "seed": 3,
    "eval": {"latency_runs": 2, "warmup": 1, "threads": 1},
    "stages": [
        {"method": "finetune", "config": {"epochs": 1, "lr": 0.05, "batch_size": 64}},
        {"method": "ptq_int8", "config": {"calibration_samples": 8}},
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lenet() -> ModelState:
    torch.manual_seed(0)
    module = create_model("lenet5", num_classes=10, in_channels=1)
    return ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec("lenet5", 10, 1)
    )


def test_the_named_files_resume_a_run_in_another_folder(tmp_path: Path) -> None:
    data = load_digits(size=32).subset(train=128, val=64, seed=0)
    recipe = parse_recipe(RECIPE)
    first = tmp_path / "a"

    def crash(fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if metrics.get("event") == "stage_end":
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        run_recipe(recipe, _lenet(), data, first, progress=crash)
    state = json.loads((first / STATE_FILE).read_text())
    names = resume_files(state)
    ckpt = state["completed"][0]["checkpoint"]
    assert names[0] == state["baseline_onnx"]
    assert ckpt in names and str(Path(ckpt).with_suffix(".json")) in names
    assert state["completed"][0]["metrics"]["onnx_path"] in names

    second = tmp_path / "b"
    for rel in [*names, STATE_FILE]:
        (second / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first / rel, second / rel)
    started: list[int] = []

    def watch(fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if metrics.get("event") == "stage_start":
            started.append(metrics["stage"])

    report = run_recipe(recipe, _lenet(), data, second, progress=watch)
    assert started == [1] and report.resumed_from_stage == 1
    assert report.stages[0].metrics.accuracy == state["completed"][0]["metrics"]["accuracy"]
    produced = [rel for rel in final_files(report.to_dict()) if (second / rel).is_file()]
    assert {"final.onnx", "final.int8.onnx", ckpt} <= set(produced)


def test_unsafe_or_odd_paths_are_left_out() -> None:
    state = {
        "baseline_onnx": "/etc/passwd",
        "completed": [
            {
                "checkpoint": "../outside.safetensors",
                "metrics": {"onnx_path": "stages/00_x/measure/model.onnx"},
                "artifacts": {"a": "checkpoints\\win.onnx", "b": 3, "c": "ok/x.onnx"},
            },
            "not a record",
        ],
    }
    assert resume_files(state) == ["stages/00_x/measure/model.onnx", "ok/x.onnx"]
    assert final_files({"artifacts": [{"path": "../x"}, {"path": "checkpoints/s.onnx"}]}) == [
        "final.onnx", "final.int8.onnx", "final.compressed.onnx", "final.esdc",
        "checkpoints/s.onnx",
    ]  # fmt: skip
