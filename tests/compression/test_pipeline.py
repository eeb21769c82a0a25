"""The pipeline: a real two-stage run, resume after a crash, cancel, determinism, containment."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from compression.datasets import DatasetBundle, load_digits
from compression.errors import Cancelled, ConfigError, StageScopeError
from compression.pipeline import SCHEMA_VERSION, RunStateError, run_recipe
from compression.recipe import Recipe, parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Stage 0 trains the untrained LeNet-5 (chance is 10%) to about 84% on the digits' test split,
# so int8 quantization in stage 1 has something to lose; the allowance is measured against it.
RECIPE = {
    "name": "test-two-stage",
    "seed": 7,
    "targets": {"max_accuracy_drop": 1.0, "reference": "stage:0"},
    "eval": {"latency_runs": 3, "warmup": 1, "threads": 1},
    "stages": [
        {
            "method": "finetune",
            "config": {"epochs": 4, "lr": 0.005, "optimizer": "adam", "batch_size": 32},
        },
        {"method": "ptq_int8", "config": {"calibration_samples": 8}},
    ],
}


@pytest.fixture(scope="module")
def data() -> DatasetBundle:
    return load_digits(size=32).subset(train=256, val=128, seed=0)


def _lenet(seed: int = 0) -> ModelState:
    torch.manual_seed(seed)
    module = create_model("lenet5", num_classes=10, in_channels=1)
    return ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec("lenet5", 10, 1)
    )


# One quick epoch, for tests about the run's mechanics rather than its numbers.
QUICK_STAGE = {"method": "finetune", "config": {"epochs": 1, "lr": 0.05, "batch_size": 64}}


def _recipe(**changes: Any) -> Recipe:
    if len(changes.get("stages", RECIPE["stages"])) < 2:
        changes.setdefault("targets", {})  # "stage:0" needs a later stage to compare
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
    assert saved["schema_version"] == SCHEMA_VERSION and saved["final"]["format"] == "onnx"
    trained, final = report.stages[0].metrics.accuracy, report.final.accuracy
    assert report.baseline.accuracy < 20 < 70 < trained  # untrained at chance; stage 0 learned
    targets = saved["targets"]
    assert targets["reference"] == "stage:0" and targets["reference_accuracy"] == trained
    assert targets["accuracy_drop"] == pytest.approx(trained - final, abs=1e-9)
    assert abs(targets["accuracy_drop"]) <= 1.0  # int8 keeps a trained LeNet-5 within 1 pt
    assert targets["max_accuracy_drop"] == 1.0 and targets["met"] is True
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


def test_a_drop_over_the_allowance_is_reported_as_missed(
    tmp_path: Path, data: DatasetBundle
) -> None:
    # One-shot 98% sparsity without fine-tuning wrecks the trained model: far over 1 pt.
    wreck = {"method": "magnitude_pruning", "config": {"sparsity": 0.98, "steps": 1,
                                                       "finetune_epochs": 0}}  # fmt: skip
    report = run_recipe(
        _recipe(stages=[RECIPE["stages"][0], wreck]), _lenet(), data, tmp_path / "run"
    )
    trained, final = report.stages[0].metrics.accuracy, report.final.accuracy
    assert report.targets["accuracy_drop"] == pytest.approx(trained - final, abs=1e-9)
    assert report.targets["accuracy_drop"] > 1.0
    assert report.targets["met"] is False


def test_cancel_after_a_completed_stage_keeps_it_and_the_run_resumes_from_it(
    tmp_path: Path, data: DatasetBundle
) -> None:
    out = tmp_path / "run"
    events = _Events()

    def should_cancel() -> bool:  # polled between batches: cancel once stage 1 has begun
        return any(e["stage"] == 1 for e in events.of("stage_start"))

    with pytest.raises(Cancelled):
        run_recipe(_recipe(), _lenet(), data, out, progress=events, should_cancel=should_cancel)
    assert not (out / "report.json").exists()
    [ended] = events.of("stage_end")
    assert ended["stage"] == 0 and ended["method"] == "finetune"
    state = json.loads((out / "state.json").read_text())
    [kept] = state["completed"]
    assert kept["method"] == "finetune" and kept["metrics"]["accuracy"] == ended["accuracy"]
    assert (out / kept["checkpoint"]).is_file()

    again = _Events()
    report = run_recipe(_recipe(), _lenet(), data, out, progress=again)
    assert [e["stage"] for e in again.of("stage_start")] == [1]  # stage 0 did not run again
    assert report.resumed_from_stage == 1
    assert [s.resumed for s in report.stages] == [True, False]
    assert report.stages[0].metrics.accuracy == ended["accuracy"]
    assert (out / "report.json").is_file()


def test_the_same_seed_gives_the_same_accuracy(tmp_path: Path, data: DatasetBundle) -> None:
    recipe = _recipe(stages=[QUICK_STAGE])
    a = run_recipe(recipe, _lenet(), data, tmp_path / "a")
    b = run_recipe(recipe, _lenet(), data, tmp_path / "b")
    assert a.stages[0].metrics.accuracy == b.stages[0].metrics.accuracy
    assert a.stages[0].history == b.stages[0].history


def test_another_recipe_in_the_same_folder_is_refused_unless_restarted(
    tmp_path: Path, data: DatasetBundle
) -> None:
    one = _recipe(stages=[QUICK_STAGE])
    run_recipe(one, _lenet(), data, tmp_path / "run")
    two = _recipe(seed=8, stages=[QUICK_STAGE])
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


def test_bn_scale_pruning_on_a_model_without_batchnorm_is_refused_before_anything_is_written(
    tmp_path: Path, data: DatasetBundle
) -> None:
    bn_scale = _recipe(stages=[{"method": "channel_pruning", "config": {"importance": "bn_scale"}}])
    with pytest.raises(ConfigError, match=r"importance l1 or l2") as refused:
        run_recipe(bn_scale, _lenet(), data, tmp_path / "run")
    assert refused.value.field == "stages[0].config.importance"
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
