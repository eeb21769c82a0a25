"""How the pipeline measures: the test split, preprocessing, interleaved latency, resume
identity and cancel in every phase."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psutil
import pytest
import torch

from compression.checkpoint import load_checkpoint
from compression.datasets import DatasetBundle, load_digits
from compression.errors import Cancelled
from compression.evaluation import accuracy_onnx, accuracy_torch
from compression.pipeline import RunStateError, run_recipe
from compression.preprocessing import ONNX_METADATA_KEY, Preprocessing, read_onnx
from compression.recipe import Recipe, parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RECIPE: dict[str, Any] = {
    "name": "numbers",
    "seed": 3,
    "eval": {"latency_runs": 4, "warmup": 1, "threads": 1, "rounds": 3},
    "stages": [
        {"method": "finetune", "config": {"epochs": 1, "lr": 0.05, "batch_size": 64}},
        {"method": "ptq_int8", "config": {"calibration_samples": 16}},
    ],
}


@pytest.fixture(scope="module")
def data() -> DatasetBundle:
    return load_digits(size=32).subset(train=256, val=96, test=128, seed=0)


def _lenet(seed: int = 0) -> ModelState:
    torch.manual_seed(seed)
    module = create_model("lenet5", num_classes=10, in_channels=1)
    return ModelState(
        input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec("lenet5", 10, 1)
    )


def _recipe(**changes: Any) -> Recipe:
    return parse_recipe({**RECIPE, **changes})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data: DatasetBundle) -> Path:
    out = tmp_path_factory.mktemp("numbers") / "run"
    run_recipe(_recipe(), _lenet(), data, out)
    return out


def test_reports_test_accuracy_and_val_accuracy_apart(finished: Path, data: DatasetBundle) -> None:
    report = json.loads((finished / "report.json").read_text())
    stage0 = report["stages"][0]["metrics"]
    assert stage0["eval_split"] == "test" and stage0["test_images"] == len(data.test) == 128
    # The reported figure is the test split's, recomputed here from the checkpoint.
    state = load_checkpoint(finished / report["stages"][0]["checkpoint"])
    assert state.module is not None
    assert stage0["accuracy"] == pytest.approx(accuracy_torch(state.module, data.test_loader()))
    assert stage0["val_accuracy"] == pytest.approx(accuracy_torch(state.module, data.val_loader()))
    # The int8 stage's figure is the ONNX file's own, on the test split.
    final = report["final"]
    int8 = finished / "final.int8.onnx"
    assert final["accuracy"] == pytest.approx(accuracy_onnx(int8, data.test_loader()))
    assert report["targets"]["eval_split"] == "test"
    assert report["dataset"]["totals"] == {"train": 256, "val": 96, "test": 128}
    assert report["dataset"]["split_seed"] == 0
    assert report["dataset"]["fingerprint"] == data.fingerprint()


def test_preprocessing_travels_in_the_report_and_the_onnx_files(
    finished: Path, data: DatasetBundle
) -> None:
    report = json.loads((finished / "report.json").read_text())
    pre = Preprocessing.from_dict(report["preprocessing"])
    assert pre == data.preprocessing
    assert pre.input_shape == (1, 32, 32) and pre.class_names == tuple(str(d) for d in range(10))
    for name in ("final.onnx", "final.int8.onnx"):
        assert read_onnx(finished / name) == pre
        # A device reads it through ONNX Runtime alone.
        session = ort.InferenceSession(str(finished / name), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta[ONNX_METADATA_KEY])["mean"] == list(data.mean)
    # The artifacts' recorded hashes are those of the stamped files.
    for art in report["artifacts"]:
        if art["kind"].startswith("onnx"):
            assert art["bytes"] == (finished / art["path"]).stat().st_size


def test_latency_is_interleaved_rounds_with_spread_and_no_p99_below_100_runs(
    finished: Path,
) -> None:
    report = json.loads((finished / "report.json").read_text())
    lats = [report["baseline"]["latency"]] + [s["metrics"]["latency"] for s in report["stages"]]
    for lat in lats:
        assert lat["rounds"] == 3 and len(lat["round_p50_ms"]) == 3
        assert lat["iqr_ms"] >= 0 and lat["p50_ms"] > 0
        assert lat["p99_ms"] is None  # 3 rounds x 4 runs: far below 100
        assert lat["peak_rss_mb"] and lat["peak_rss_mb"] > 0
    # Every state was measured in the same call: the memory is each child's, not the process's.
    assert report["baseline"]["peak_mem_mb"] == report["baseline"]["latency"]["peak_rss_mb"]
    assert report["eval"]["rounds"] == 3


def test_resume_refuses_another_model_or_other_data(tmp_path: Path, data: DatasetBundle) -> None:
    out = tmp_path / "run"
    one_stage = _recipe(stages=RECIPE["stages"][:1], eval={"latency_runs": 0})
    run_recipe(one_stage, _lenet(0), data, out)
    with pytest.raises(RunStateError, match="different starting model"):
        run_recipe(one_stage, _lenet(1), data, out)
    other = load_digits(size=32, split_seed=5).subset(train=256, val=96, test=128, seed=0)
    with pytest.raises(RunStateError, match="different data"):
        run_recipe(one_stage, _lenet(0), other, out)
    # The same model and data resume (nothing to do), and restart discards.
    again = run_recipe(one_stage, _lenet(0), data, out)
    assert again.resumed_from_stage == 1
    fresh = run_recipe(one_stage, _lenet(1), data, out, restart=True)
    assert fresh.resumed_from_stage is None


def test_changed_eval_settings_re_measure_without_retraining(
    tmp_path: Path, data: DatasetBundle
) -> None:
    out = tmp_path / "run"
    one_stage = _recipe(stages=RECIPE["stages"][:1], eval={"latency_runs": 0})
    first = run_recipe(one_stage, _lenet(0), data, out)
    ckpt = out / first.stages[0].checkpoint
    mtime = ckpt.stat().st_mtime_ns
    events: list[dict[str, Any]] = []
    changed = _recipe(
        stages=RECIPE["stages"][:1], eval={"latency_runs": 2, "warmup": 0, "rounds": 2}
    )
    second = run_recipe(changed, _lenet(0), data, out, progress=lambda f, m, d: events.append(d))
    assert ckpt.stat().st_mtime_ns == mtime  # the stage was not trained again
    assert not [e for e in events if e.get("event") == "stage_start"]
    assert [e for e in events if e.get("event") == "remeasure"]
    assert first.baseline.latency is None and first.stages[0].metrics.latency is None
    assert second.baseline.latency is not None and second.stages[0].metrics.latency is not None
    assert second.stages[0].metrics.latency.rounds == 2
    assert second.stages[0].metrics.accuracy == first.stages[0].metrics.accuracy


def _children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize(
    ("phase", "recipe_changes"),
    [
        ("baseline_start", {}),  # measuring (accuracy, export)
        ("latency_start", {"eval": {"latency_runs": 2000, "warmup": 1, "rounds": 5}}),  # timing
        ("stage_start", {"stages": [RECIPE["stages"][1]]}),  # exporting and calibrating
    ],
)
def test_cancel_stops_every_phase_within_seconds(
    tmp_path: Path, data: DatasetBundle, phase: str, recipe_changes: dict[str, Any]
) -> None:
    flag = threading.Event()
    seen_at: list[float] = []

    def progress(fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if metrics.get("event") == phase and not flag.is_set():
            seen_at.append(time.monotonic())
            flag.set()

    before = _children()
    big = load_digits(size=32)  # the whole set, so that each phase takes a while
    recipe = _recipe(**recipe_changes) if recipe_changes else _recipe()
    with pytest.raises(Cancelled):
        run_recipe(
            recipe, _lenet(), big, tmp_path / "run", progress=progress, should_cancel=flag.is_set
        )
    assert seen_at, f"the run never reached {phase}"
    assert time.monotonic() - seen_at[0] < 10.0
    time.sleep(0.2)
    assert _children() <= before  # no latency child left behind
