"""The pipeline: a real two-stage run, resume after a crash, cancel, determinism, containment."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from compression.datasets import DatasetBundle, load_digits
from compression.errors import Cancelled, StageScopeError
from compression.pipeline import RunStateError, run_recipe
from compression.recipe import Recipe, parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # On a shared 2-core machine OpenMP's spin-waiting makes 2 threads ~10x slower than 1.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


RECIPE = {
    "name": "test-two-stage",
    "seed": 7,
    "targets": {"max_accuracy_drop": 100},
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1},
    "stages": [
        {"method": "finetune", "config": {"epochs": 1, "lr": 0.05, "batch_size": 64}},
        {"method": "ptq_int8", "config": {"calibration_samples": 8}},
    ],
}


@pytest.fixture(scope="module")
def data() -> DatasetBundle:
    return load_digits(size=32, seed=0).subset(train=256, val=128, seed=0)


def _lenet(seed: int = 0) -> ModelState:
    torch.manual_seed(seed)
    module = create_model("lenet5", num_classes=10, in_channels=1)
    return ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec("lenet5", 10, 1)
    )


def _recipe(**changes: Any) -> Recipe:
    return parse_recipe({**RECIPE, **changes})


class _Events:
    def __init__(self, fail_on: tuple[str, int] | None = None) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.fail_on = fail_on

    def __call__(self, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        self.items.append((fraction, message, metrics))
        if self.fail_on and (metrics.get("event"), metrics.get("stage")) == self.fail_on:
            raise RuntimeError("simulated crash")

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for _, _, m in self.items if m.get("event") == event]


def test_a_two_stage_run_writes_the_report_and_final_models(
    tmp_path: Path, data: DatasetBundle
) -> None:
    events = _Events()
    report = run_recipe(_recipe(), _lenet(), data, tmp_path / "run", progress=events)
    out = tmp_path / "run"
    assert [s.method for s in report.stages] == ["finetune", "ptq_int8"]
    assert (out / "final.onnx").is_file() and (out / "final.int8.onnx").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["schema_version"] == 1 and saved["final"]["format"] == "onnx"
    assert saved["targets"]["met"] is True and saved["targets"]["reference"] == "baseline"
    assert saved["stages"][0]["history"][0]["epoch"] == 1
    assert {a["name"] for a in saved["artifacts"]} >= {"final.onnx", "final.int8.onnx"}
    assert all(len(a["sha256"]) == 64 for a in saved["artifacts"])
    assert report.final.onnx_bytes < report.baseline.onnx_bytes  # int8 is smaller
    fractions = [f for f, _, _ in events.items]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [e["stage"] for e in events.of("stage_start")] == [0, 1]
    assert events.of("stage_end")[0]["accuracy"] == report.stages[0].metrics.accuracy


def test_a_crashed_run_resumes_after_the_last_completed_stage(
    tmp_path: Path, data: DatasetBundle
) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(_recipe(), _lenet(), data, out, progress=_Events(fail_on=("stage_end", 0)))
    state = json.loads((out / "state.json").read_text())
    assert [c["method"] for c in state["completed"]] == ["finetune"]
    assert not (out / "report.json").exists()

    events = _Events()
    report = run_recipe(_recipe(), _lenet(), data, out, progress=events)
    assert [e["stage"] for e in events.of("stage_start")] == [1]  # stage 0 did not run again
    assert report.resumed_from_stage == 1
    assert [s.resumed for s in report.stages] == [True, False]
    assert report.stages[0].metrics.accuracy == state["completed"][0]["metrics"]["accuracy"]


def test_cancel_stops_between_batches_and_keeps_completed_stages(
    tmp_path: Path, data: DatasetBundle
) -> None:
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        run_recipe(_recipe(), _lenet(), data, tmp_path / "run", should_cancel=should_cancel)
    assert not (tmp_path / "run" / "report.json").exists()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["completed"] == []


def test_the_same_seed_gives_the_same_accuracy(tmp_path: Path, data: DatasetBundle) -> None:
    recipe = _recipe(stages=RECIPE["stages"][:1])
    a = run_recipe(recipe, _lenet(), data, tmp_path / "a")
    b = run_recipe(recipe, _lenet(), data, tmp_path / "b")
    assert a.stages[0].metrics.accuracy == b.stages[0].metrics.accuracy
    assert a.stages[0].history == b.stages[0].history


def test_another_recipe_in_the_same_folder_is_refused_unless_restarted(
    tmp_path: Path, data: DatasetBundle
) -> None:
    one = _recipe(stages=RECIPE["stages"][:1])
    run_recipe(one, _lenet(), data, tmp_path / "run")
    two = _recipe(seed=8, stages=RECIPE["stages"][:1])
    with pytest.raises(RunStateError, match="different recipe"):
        run_recipe(two, _lenet(), data, tmp_path / "run")
    report = run_recipe(two, _lenet(), data, tmp_path / "run", restart=True)
    assert report.resumed_from_stage is None


def test_scope_errors_are_raised_before_anything_is_written(
    tmp_path: Path, data: DatasetBundle
) -> None:
    bad = _recipe(stages=[{"method": "ptq_int8"}, {"method": "finetune"}])
    with pytest.raises(StageScopeError, match=r"stages\[1\] \(finetune\)"):
        run_recipe(bad, _lenet(), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nothing_is_written_outside_the_output_folder(
    tmp_path: Path, data: DatasetBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = tempfile.tempdir
    run_recipe(_recipe(), _lenet(), data, tmp_path / "run")
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "run"]
    assert tempfile.tempdir == before
    assert not (tmp_path / "run" / "tmp").exists()
