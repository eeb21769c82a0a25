"""Detectors on the agent: numpy mAP against torchmetrics, the detection evaluation set and its
caps, FPS with and without post-processing, and the protocol's checks of a detector's results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detector_onnx import oracle_detector, tiny_scenes, tiny_yolo_onnx, wide_sample
from device_onnx import write_eval_set, write_linear_model

from device_registry.eval_sets import write_detection_eval_set
from edgeslim_agent.bench import accuracy_check, latency_runs, model_facts
from edgeslim_agent.detect_eval import EvalCaps, EvalSetError, coco_map, load_detection_eval_set
from edgeslim_agent.detect_post import DetectionError
from edgeslim_agent.protocol import (
    BenchSettings,
    ProtocolError,
    detection_accuracy_figures,
    detection_latency_figures,
)


def _random_case(seed: int, classes: int = 4, images: int = 30):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(images):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (g, 2))
        gb = np.concatenate([xy, xy + rng.uniform(5, 30, (g, 2))], 1).astype(np.float32)
        gl = rng.integers(0, classes, g)
        k = int(rng.integers(0, 40))
        src = rng.integers(0, max(g, 1), k)
        if g:
            pb = gb[src] + rng.normal(0, 4, (k, 4)).astype(np.float32)
            pl = np.where(rng.random(k) < 0.7, gl[src], rng.integers(0, classes, k))
        else:
            pb = rng.uniform(0, 80, (k, 4)).astype(np.float32)
            pl = rng.integers(0, classes, k)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        scores = rng.random(k).astype(np.float32)
        if seed % 2 == 0:
            scores = np.round(scores, 1)  # ties in score, broken the same (stable) way
        preds.append({"boxes": pb, "scores": scores, "labels": pl})
        targets.append({"boxes": gb, "labels": gl})
    return preds, targets


@pytest.mark.parametrize("seed", range(4))
def test_numpy_map_matches_torchmetrics_faster_coco_eval(seed):
    from compression.detection_metrics import mean_average_precision

    classes = 4
    preds, targets = _random_case(seed, classes)
    ref = mean_average_precision(preds, targets, [str(c) for c in range(classes)])
    mine = coco_map(
        [(p["boxes"], p["scores"], p["labels"]) for p in preds],
        [(t["boxes"], t["labels"]) for t in targets],
        classes,
    )
    assert 0.05 < ref.map50 < 0.95  # a real mix of hits and misses, not a trivial 0 or 1
    assert mine.map50 == pytest.approx(ref.map50, abs=1e-3)
    assert mine.map50_95 == pytest.approx(ref.map50_95, abs=1e-3)
    # COCOeval itself (faster_coco_eval, what torchmetrics wraps) agrees to rounding, per class
    # and threshold; torchmetrics' wrapper moves a class's AP by up to ~1e-3 (its float32
    # recall and IoU thresholds among other things).
    precision = _coco_eval_precision(preds, targets, classes)  # (T, R, K)
    for c in range(classes):
        assert mine.per_class_ap50[c] == pytest.approx(precision[0, :, c].mean(), abs=1e-9)
        assert mine.per_class_ap50_95[c] == pytest.approx(precision[:, :, c].mean(), abs=1e-9)
    assert mine.map50_95 == pytest.approx(precision.mean(), abs=1e-9)


def _coco_eval_precision(preds, targets, classes: int) -> np.ndarray:
    """faster_coco_eval's COCOeval precision array (IoU x recall x class; area all, 100 dets)."""
    from faster_coco_eval import COCO, COCOeval_faster

    def xywh(box) -> list[float]:
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i + 1, "width": 200, "height": 200} for i in range(len(targets))]
    boxes = [
        (i + 1, box, label)
        for i, t in enumerate(targets)
        for box, label in zip(t["boxes"], t["labels"], strict=True)
    ]
    anns = [
        {"id": k + 1, "image_id": image, "category_id": int(label) + 1, "bbox": xywh(box),
         "area": xywh(box)[2] * xywh(box)[3], "iscrowd": 0}
        for k, (image, box, label) in enumerate(boxes)
    ]  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(classes)]
    }  # fmt: skip
    gt.createIndex()
    dets = [
        {"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh(box), "score": float(score)}
        for i, p in enumerate(preds)
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"], strict=True)
    ]
    evaluation = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a: None)
    evaluation.evaluate()
    evaluation.accumulate()
    return np.asarray(evaluation.eval["precision"])[:, :, :, 0, -1]


def test_numpy_map_edge_cases():
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0, 1]))]
    perfect = [(gt[0][0], np.array([0.9, 0.8]), np.array([0, 1]))]
    assert coco_map(perfect, gt, 3).map50 == 1.0 and coco_map(perfect, gt, 3).map50_95 == 1.0
    nothing = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))]
    assert coco_map(nothing, gt, 3).map50 == 0.0
    # a class with no ground truth is not averaged in (its detections count against nothing)
    extra = [
        (
            np.concatenate([gt[0][0], [[50, 50, 60, 60]]]),
            np.array([0.9, 0.8, 0.99]),
            np.array([0, 1, 2]),
        )
    ]
    result = coco_map(extra, gt, 3)
    assert result.map50 == 1.0 and result.per_class_ap50[2] is None
    # half the boxes found: AP of that class 0, the other 1 -> 0.5
    half = [(gt[0][0][:1], np.array([0.9]), np.array([0]))]
    assert coco_map(half, gt, 3).map50 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no box"):
        coco_map(nothing, [(np.zeros((0, 4)), np.zeros(0, np.int64))], 3)
    with pytest.raises(ValueError, match="outside"):
        coco_map([(gt[0][0], np.array([0.9, 0.8]), np.array([0, 5]))], gt, 3)


def _eval_npz(path: Path, samples, classes, size: int) -> Path:
    write_detection_eval_set(list(samples), list(classes), size=size, path=path)
    return path


@pytest.fixture(scope="module")
def scenes():
    return tiny_scenes(n_test=16)


def test_an_oracle_detector_scores_one_only_when_boxes_map_back_through_the_letterbox(
    tmp_path, scenes
):
    sample = wide_sample(next(s for s in scenes.test if len(s.labels) >= 2))
    model = oracle_detector(tmp_path / "oracle.onnx", sample, num_classes=len(scenes.classes))
    npz = _eval_npz(tmp_path / "one.npz", [sample], scenes.classes, 64)
    data = accuracy_check(model, npz, BenchSettings(accuracy=True))
    assert data["task"] == "detection" and data["samples"] == 1
    assert data["boxes"] == len(sample.labels)
    assert data["map50"] == pytest.approx(1.0) and data["map50_95"] == pytest.approx(1.0, abs=1e-6)
    detection_accuracy_figures(data, eval_count=1)  # what the server checks
    # The same image un-padded (different placement): the oracle's boxes no longer fit it.
    plain = scenes.test[scenes.test.index(next(s for s in scenes.test if len(s.labels) >= 2))]
    npz2 = _eval_npz(tmp_path / "plain.npz", [plain], scenes.classes, 64)
    assert accuracy_check(model, npz2, BenchSettings(accuracy=True))["map50_95"] < 0.9


def test_a_tiny_yolo_on_device_matches_the_studios_map_and_reports_fps(tmp_path, scenes):
    from compression.detection_metrics import evaluate_detector
    from compression.zoo import create_model

    model = tiny_yolo_onnx(tmp_path / "yolo.onnx", num_classes=len(scenes.classes))
    npz = _eval_npz(tmp_path / "test.npz", scenes.test, scenes.classes, 64)
    settings = BenchSettings(warmup=1, runs=5, batch_sizes=[1, 2], accuracy=True)
    declared, meta = model_facts(model, settings.providers)
    assert declared[1:] == [3, 64, 64]
    assert meta is not None and meta.family == "yolo" and meta.input_size == 64

    on_device = accuracy_check(model, npz, settings)
    import torch

    torch.manual_seed(0)  # the same weights tiny_yolo_onnx exported
    torch_model = create_model("yolov3_tiny", num_classes=10, width=0.25, input_size=64).eval()
    studio = evaluate_detector(torch_model, scenes.test, scenes.classes, input_size=64)
    assert studio.map50 > 0  # untrained, but its random boxes hit a few: not a trivial 0 = 0
    assert on_device["samples"] == len(scenes.test) and on_device["detections"] > 0
    assert on_device["map50"] == pytest.approx(studio.map50, abs=1e-3)
    assert on_device["map50_95"] == pytest.approx(studio.map50_95, abs=1e-3)

    results = dict(latency_runs(model, settings, eval_set=npz))
    for index, batch in enumerate(settings.batch_sizes):
        data = results[index]
        assert data["task"] == "detection" and data["batch_size"] == batch
        assert data["e2e_images"] == "evaluation set"
        checked = detection_latency_figures(data)
        assert checked["fps"] > 0 and checked["fps_e2e"] > 0
        assert data["e2e_p50_ms"] >= data["postprocess_p50_ms"] > 0
        assert data["e2e_p99_ms"] is None  # 5 timed runs: too few for a p99
        assert data["p50_ms"] > 0  # the network alone, from the shared harness


def test_a_detector_on_a_classification_set_and_a_classifier_on_a_detection_set_are_refused(
    tmp_path, scenes
):
    yolo = tiny_yolo_onnx(tmp_path / "yolo.onnx", num_classes=10)
    with pytest.raises(DetectionError, match="classification set"):
        accuracy_check(yolo, write_eval_set(tmp_path / "cls.npz"), BenchSettings())
    det = _eval_npz(tmp_path / "det.npz", scenes.test[:2], scenes.classes, 64)
    with pytest.raises(DetectionError, match="no detection metadata"):
        accuracy_check(write_linear_model(tmp_path / "lin.onnx"), det, BenchSettings())


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_the_detection_eval_set_is_checked_with_caps(tmp_path, scenes):
    good = _eval_npz(tmp_path / "good.npz", scenes.test[:4], scenes.classes, 64)
    data = load_detection_eval_set(good)
    assert len(data) == 4 and data.x.shape == (4, 3, 64, 64) and data.x.dtype == np.uint8
    assert data.total_boxes == sum(len(s.labels) for s in scenes.test[:4])
    # letterboxed on grey 114, as the studio's evaluate_detector places images
    assert (data.x[:, :, 0, 0] == 114).all() or (data.x[:, :, 0, :] == 114).any()
    with pytest.raises(EvalSetError, match="4 images; 1 to 2"):
        load_detection_eval_set(good, EvalCaps(max_images=2))
    with pytest.raises(EvalSetError, match="uncompressed, over the cap"):
        load_detection_eval_set(good, EvalCaps(max_array_bytes=1000))

    def broken(name: str, **change) -> Path:
        arrays = {**_arrays(good), **change}
        for key in [k for k, v in change.items() if v is None]:
            del arrays[key]
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    labels = _arrays(good)["labels"]
    cases = {
        "lacks the arrays placement": broken("missing", placement=None),
        "a label is outside": broken("label", labels=labels + 100),
        r"boxes must be float": broken("count", box_counts=_arrays(good)["box_counts"] + 1),
        "x must be uint8": broken("dtype", x=_arrays(good)["x"].astype(np.float32)),
        "no ground-truth box": broken(
            "empty", boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
            box_counts=np.zeros(4, np.int64),
        ),
    }  # fmt: skip
    for message, path in cases.items():
        with pytest.raises(EvalSetError, match=message):
            load_detection_eval_set(path)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**_arrays(good), "class_names": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(EvalSetError, match="could not be read"):
        load_detection_eval_set(pickled)


GOOD_ACCURACY = {"task": "detection", "map50": 0.6, "map50_95": 0.3, "samples": 10, "boxes": 25}
GOOD_LATENCY = {
    "fps": 120.0, "fps_e2e": 100.0, "net_p50_ms": 8.3, "e2e_p50_ms": 10.0, "e2e_p90_ms": 11.0,
    "e2e_p99_ms": None, "e2e_mean_ms": 10.2, "postprocess_p50_ms": 1.7,
    "detections_per_image": 3.5, "e2e_score_threshold": 0.25,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"map50": "0.6"}, "needs a number 'map50'"),
        ({"map50": 1.5}, r"map50=1.5 is outside \[0.0, 1.0\]"),
        ({"map50_95": 0.7}, "map50_95=0.7 is above map50=0.6"),
        ({"map50": True}, "needs a number 'map50'"),
        ({"samples": 2.0}, "needs an integer 'samples'"),
        ({"samples": 11}, "the evaluation set holds 10"),
        ({"task": "classification"}, "needs task 'detection'"),
        ({"top1_pct": 60.0}, "carries mAP, not top-1"),
        ({"per_class": [{"class": "0", "ap50": 2.0}]}, r"ap50=2.0 is outside"),
        ({"per_class": "x"}, "per_class must be a list"),
    ],
)
def test_the_protocol_refuses_a_malformed_detector_accuracy(change, message):
    with pytest.raises(ProtocolError, match=message):
        detection_accuracy_figures({**GOOD_ACCURACY, **change}, eval_count=10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fps": None}, "needs a number 'fps'"),
        ({"fps_e2e": 0.0}, r"fps_e2e=0.0 is outside"),
        ({"fps_e2e": 200.0}, "is above fps"),
        ({"e2e_p50_ms": -1}, "e2e_p50_ms=-1.0 is outside"),
        ({"e2e_p99_ms": "fast"}, "needs a number 'e2e_p99_ms'"),
        ({"e2e_score_threshold": 3}, "e2e_score_threshold=3.0 is outside"),
    ],
)
def test_the_protocol_refuses_malformed_detector_latency_figures(change, message):
    assert detection_latency_figures(GOOD_LATENCY)["fps_e2e"] == 100.0
    with pytest.raises(ProtocolError, match=message):
        detection_latency_figures({**GOOD_LATENCY, **change})
