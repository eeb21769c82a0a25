"""Detection recipes through the pipeline on a tiny YOLOv3-tiny (width 0.25, 64 px) and a few
images of the built-in ``mnist_scenes``: the report's detection fields, the end-to-end ONNX and
the grid of drawn boxes, resuming after a stage, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from compression.datasets import load_digits
from compression.detection_data import DetectionBundle, SceneConfig, load_mnist_scenes
from compression.detection_export import E2E_OUTPUTS, read_detector_meta
from compression.errors import ConfigError, DatasetError
from compression.metrics import ModelMetrics
from compression.pipeline import RunReport, run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model

SIZE = 64

RECIPE: dict[str, Any] = {
    "name": "test-detection",
    "seed": 3,
    "targets": {"max_accuracy_drop": 100.0, "reference": "baseline"},
    "eval": {"latency_runs": 2, "warmup": 1, "threads": 1, "rounds": 2},
    "stages": [
        {
            "method": "finetune",
            "config": {"epochs": 1, "lr": 0.001, "optimizer": "adam", "batch_size": 8},
        },
        {"method": "channel_pruning", "config": {"importance": "bn_scale", "ratio": 0.5}},
        {"method": "ptq_int8", "config": {"calibration_samples": 4}},
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes() -> DetectionBundle:
    return load_mnist_scenes(SceneConfig(seed=0, size=SIZE, n_train=16, n_val=6, n_test=6))


def _yolo(classes: int = 10, seed: int = 0) -> ModelState:
    torch.manual_seed(seed)
    module = create_model("yolov3_tiny", num_classes=classes, width=0.25, input_size=SIZE)
    return ModelState(
        input_shape=(3, SIZE, SIZE),
        num_classes=classes,
        task="detection",
        module=module,
        arch=ArchSpec("yolov3_tiny", classes, 3, (("input_size", SIZE), ("width", 0.25))),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, scenes: DetectionBundle) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("det-run")
    events: list[dict[str, Any]] = []
    report = run_recipe(
        parse_recipe(RECIPE), _yolo(), scenes, out, progress=lambda f, m, d: events.append(d)
    )
    return out, (report, events)


def _check_metrics(m: dict[str, Any], images: int, boxes: int) -> None:
    assert m["task"] == "detection" and m["metric"] == "mAP@0.5"
    det = m["detection"]
    assert 0.0 <= det["map50"] <= 1.0 and 0.0 <= det["map50_95"] <= det["map50"] + 1e-9
    assert m["accuracy"] == pytest.approx(100.0 * det["map50"])
    assert m["val_accuracy"] == pytest.approx(100.0 * det["val_map50"])
    assert det["images"] == images and det["boxes"] == boxes
    assert [c["class"] for c in det["per_class"]] == [str(d) for d in range(10)]
    for c in det["per_class"]:
        assert c["ap50"] is None or 0.0 <= c["ap50"] <= 1.0
    assert m["latency"]["p50_ms"] > 0
    e2e = m["latency_e2e"]
    assert e2e["p50_ms"] > 0 and e2e["rounds"] == 2 and e2e["isolated"] is True
    assert set(e2e) == set(m["latency"])


def test_a_detection_recipe_runs_end_to_end(run: tuple[Path, Any], scenes: DetectionBundle) -> None:
    out, (report, events) = run
    data = json.loads((out / "report.json").read_text())
    assert data["task"] == "detection" and data["model"]["task"] == "detection"
    test_boxes = sum(len(s.boxes) for s in scenes.test)
    for m in [data["baseline"], *(s["metrics"] for s in data["stages"]), data["final"]]:
        _check_metrics(m, len(scenes.test), test_boxes)
    assert data["final"]["format"] == "onnx"
    # the torch states were exported with their metadata and checked against torch
    assert data["baseline"]["parity_max_abs_diff"] < 1e-3
    assert data["stages"][1]["metrics"]["macs"] < data["baseline"]["macs"]
    # the fine-tuning history has the validation mAP of its epoch
    (row,) = data["stages"][0]["history"]
    assert 0.0 <= row["val_map50"] <= 1.0 and row["val_acc"] == pytest.approx(
        100 * row["val_map50"]
    )
    ds = data["dataset"]
    assert ds["task"] == "detection" and ds["name"] == "mnist_scenes"
    assert ds["totals"] == {"train": 16, "val": 6, "test": 6}
    assert ds["boxes"]["test"] == test_boxes and ds["reported_split"] == "test"
    assert ds["input_shape"] == [3, SIZE, SIZE] and ds["fingerprint"].startswith("det-")
    # the round trip of the dataclasses
    assert ModelMetrics.from_dict(data["final"]).to_dict() == data["final"]
    assert isinstance(report, RunReport) and report.to_dict()["task"] == "detection"
    kinds = {a["kind"]: a for a in data["artifacts"]}
    assert {"onnx_fp32", "onnx_int8", "onnx_e2e", "detections_grid"} <= set(kinds)
    # the int8 file keeps the post-processing's metadata
    int8 = out / kinds["onnx_int8"]["path"]
    assert read_detector_meta(int8) is not None
    # the end-to-end graph: NonMaxSuppression with a score threshold and a box limit
    e2e = onnx.load(str(out / kinds["onnx_e2e"]["path"]))
    assert any(n.op_type == "NonMaxSuppression" for n in e2e.graph.node)
    meta = read_detector_meta(out / kinds["onnx_e2e"]["path"])
    assert meta is not None and meta.score_threshold == 0.25 and meta.max_detections == 100
    session = ort.InferenceSession(str(out / kinds["onnx_e2e"]["path"]))
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    got = session.run(list(E2E_OUTPUTS), {session.get_inputs()[0].name: x})
    assert got[0].shape[1:] == (4,) and len(got[0]) <= 100
    assert (np.asarray(got[1]) > 0.25).all()
    # the grid: two rows (baseline, final) of the six test images
    grid = Image.open(out / kinds["detections_grid"]["path"])
    assert grid.format == "PNG" and grid.width > 6 * 192 and 2 * 192 < grid.height < 3 * 192
    done = [e for e in events if e.get("event") == "done"]
    assert done and done[0]["metric"] == "mAP@0.5"


def test_resume_after_a_stage_keeps_the_completed_ones(
    run: tuple[Path, Any], scenes: DetectionBundle, tmp_path: Path
) -> None:
    out, _ = run
    # A run that stopped after stage 1 resumes at stage 2 from its checkpoint.
    state = json.loads((out / "state.json").read_text())
    state["completed"] = state["completed"][:2]
    state["status"] = "running"
    (out / "state.json").write_text(json.dumps(state))
    report = run_recipe(parse_recipe(RECIPE), _yolo(), scenes, out)
    assert [s.resumed for s in report.stages] == [True, True, False]
    assert report.resumed_from_stage == 2
    assert report.final.task == "detection" and report.final.detection is not None


def test_mismatched_classes_and_tasks_are_refused(scenes: DetectionBundle, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"has 10 classes but the detection model detects 3"):
        run_recipe(parse_recipe(RECIPE), _yolo(classes=3), scenes, tmp_path / "a")
    digits = load_digits(size=SIZE)
    with pytest.raises(DatasetError, match=r"detection model but the data set .* classification"):
        run_recipe(parse_recipe(RECIPE), _yolo(), digits, tmp_path / "b")
    lenet = ModelState(
        input_shape=(1, 32, 32),
        num_classes=10,
        module=create_model("lenet5", num_classes=10, in_channels=1),
        arch=ArchSpec("lenet5", 10, 1),
    )
    recipe = parse_recipe({"stages": [{"method": "finetune", "config": {"epochs": 1}}]})
    with pytest.raises(DatasetError, match=r"detection data set but the model is a classification"):
        run_recipe(recipe, lenet, scenes, tmp_path / "c")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_an_old_report_without_task_loads_as_classification() -> None:
    old = {
        "accuracy": 91.0,
        "params": 10,
        "nonzero_params": 10,
        "macs": 100,
        "onnx_bytes": 1000,
        "onnx_zip_bytes": 900,
        "latency": None,
        "peak_mem_mb": None,
        "parity_max_abs_diff": 0.0,
    }
    m = ModelMetrics.from_dict(old)
    assert (m.task, m.metric, m.detection, m.latency_e2e) == ("classification", "top-1", None, None)
    d = m.to_dict()
    assert d["task"] == "classification" and d["metric"] == "top-1" and d["detection"] is None
    assert ModelMetrics.from_dict(d) == m


def test_a_classification_report_keeps_its_shape(tmp_path: Path) -> None:
    data = load_digits(size=32).subset(train=64, val=32, seed=0)
    torch.manual_seed(0)
    lenet = ModelState(
        input_shape=(1, 32, 32),
        num_classes=10,
        module=create_model("lenet5", num_classes=10, in_channels=1),
        arch=ArchSpec("lenet5", 10, 1),
    )
    recipe = parse_recipe(
        {"eval": {"latency_runs": 0}, "stages": [{"method": "finetune", "config": {"epochs": 1}}]}
    )
    run_recipe(recipe, lenet, data, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "classification"
    assert report["dataset"]["fingerprint"] == data.fingerprint()
    assert "boxes" not in report["dataset"] and report["preprocessing"]["class_names"]
    for m in (report["baseline"], report["stages"][0]["metrics"], report["final"]):
        assert (m["task"], m["metric"], m["detection"], m["latency_e2e"]) == (
            "classification",
            "top-1",
            None,
            None,
        )
    kinds = {a["kind"] for a in report["artifacts"]}
    assert kinds == {"onnx_fp32", "checkpoint"}
    assert not (tmp_path / "detections_grid.png").exists()


def test_a_shared_detection_baseline_is_measured_once(
    scenes: DetectionBundle, tmp_path: Path
) -> None:
    from compression.pipeline import measure_baseline

    recipe = parse_recipe(
        {**RECIPE, "eval": {"latency_runs": 1, "warmup": 0, "threads": 1, "rounds": 1}}
    )
    shared = measure_baseline(recipe, _yolo(), scenes, tmp_path)
    m = shared.metrics
    assert m.task == "detection" and m.detection is not None
    assert m.latency is not None and m.latency_e2e is not None
    assert read_detector_meta(shared.onnx_path) is not None
    again = measure_baseline(recipe, _yolo(), scenes, tmp_path)
    assert again.metrics.to_dict() == m.to_dict()


def test_a_detector_without_a_raw_export_is_refused_before_anything_is_written(
    scenes: DetectionBundle, tmp_path: Path
) -> None:
    module = create_model("fasterrcnn_mobilenetv3_fpn", num_classes=10, input_size=SIZE)
    model = ModelState(
        input_shape=(3, SIZE, SIZE),
        num_classes=10,
        task="detection",
        module=module,
        arch=ArchSpec("fasterrcnn_mobilenetv3_fpn", 10, 3, (("input_size", SIZE),)),
    )
    recipe = parse_recipe({"stages": [{"method": "finetune", "config": {"epochs": 1}}]})
    with pytest.raises(ConfigError, match=r"fasterrcnn detector has no raw-output ONNX export"):
        run_recipe(recipe, model, scenes, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_measure_model_alone_times_a_detector_and_a_classifier(
    scenes: DetectionBundle, tmp_path: Path
) -> None:
    """measure_model with latency on (the pipeline itself times all states interleaved): a
    detector gets the network-alone and end-to-end latency, a classifier the network's."""
    from compression.metrics import measure_model

    timing = {"latency_runs": 3, "warmup": 1, "threads": 1, "rounds": 1}
    det = measure_model(_yolo(), scenes, tmp_path / "det", **timing)  # type: ignore[arg-type]
    assert det.task == "detection" and det.latency is not None and det.latency_e2e is not None
    assert det.latency.p50_ms > 0 and det.latency_e2e.p50_ms > 0
    digits = load_digits(size=8)
    torch.manual_seed(0)
    lenet = ModelState(
        module=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        input_shape=(1, 8, 8),
        num_classes=10,
    )
    cls = measure_model(lenet, digits, tmp_path / "cls", **timing)  # type: ignore[arg-type]
    assert cls.task == "classification" and cls.latency is not None and cls.latency.p50_ms > 0
    assert cls.latency_e2e is None
