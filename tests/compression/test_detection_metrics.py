"""mAP@0.5 and mAP@0.5:0.95 on hand-made cases whose answers are known, per-class names, and
evaluate_detector mapping a detector's boxes from its letterboxed input back to the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compression.detection_data import DetectionSample
from compression.detection_metrics import (
    MapAccumulator,
    evaluate_detector,
    mean_average_precision,
)

CLASSES = ["cat", "dog", "owl"]


def _gt(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32), "labels": np.asarray(labels, np.int64)}


def _det(boxes, scores, labels):
    d = _gt(boxes, labels)
    d["scores"] = np.asarray(scores, np.float32)
    return d


def test_perfect_detections_score_one() -> None:
    targets = [
        _gt([[10, 10, 40, 40], [50, 50, 90, 80]], [0, 1]),
        _gt([[5, 20, 25, 60]], [2]),
    ]
    preds = [
        _det(t["boxes"], np.linspace(0.9, 0.8, len(t["labels"])), t["labels"]) for t in targets
    ]
    m = mean_average_precision(preds, targets, CLASSES)
    assert m.map50 == pytest.approx(1.0)
    assert m.map50_95 == pytest.approx(1.0)
    assert list(m.per_class) == CLASSES
    assert all(c.map50 == pytest.approx(1.0) for c in m.per_class.values())
    assert (m.images, m.detections, m.ground_truths) == (2, 3, 3)
    d = m.to_dict()
    assert d["per_class"]["owl"]["ground_truths"] == 1 and d["map50"] == pytest.approx(1.0)


def test_a_wrong_class_scores_that_class_zero() -> None:
    # The dog is found in the right place but called an owl; the owl has no ground truth.
    targets = [_gt([[10, 10, 40, 40], [50, 50, 90, 80]], [0, 1])]
    preds = [_det([[10, 10, 40, 40], [50, 50, 90, 80]], [0.9, 0.8], [0, 2])]
    m = mean_average_precision(preds, targets, CLASSES)
    assert m.per_class["cat"].map50 == pytest.approx(1.0)
    assert m.per_class["dog"].map50 == pytest.approx(0.0)
    assert m.per_class["dog"].map50_95 == pytest.approx(0.0)
    # no ground truth of owls: not averaged in (COCO), reported as None with its detection
    assert m.per_class["owl"].map50 is None and m.per_class["owl"].detections == 1
    assert m.map50 == pytest.approx(0.5)


def test_half_the_boxes_missed() -> None:
    # Four cats, two found exactly and nothing else: precision 1 up to recall 0.5, and COCO's
    # 101-point interpolation gives 51 of 101 recall points precision 1.
    targets = [
        _gt([[0, 0, 20, 20], [30, 30, 60, 60]], [0, 0]),
        _gt([[5, 5, 25, 25], [40, 0, 70, 30]], [0, 0]),
    ]
    preds = [_det([[0, 0, 20, 20]], [0.9], [0]), _det([[40, 0, 70, 30]], [0.7], [0])]
    m = mean_average_precision(preds, targets, CLASSES)
    assert m.map50 == pytest.approx(51 / 101, abs=1e-4)
    assert m.per_class["cat"].map50 == pytest.approx(51 / 101, abs=1e-4)
    assert m.per_class["dog"].map50 is None


def test_loose_box_counts_at_low_iou_thresholds_only() -> None:
    # IoU 0.625 (a 40x40 box against a 40x25 one inside it): matched at 0.50, 0.55 and 0.60
    # of the ten thresholds 0.50:0.05:0.95.
    targets = [_gt([[0, 0, 40, 25]], [1])]
    preds = [_det([[0, 0, 40, 40]], [0.9], [1])]
    m = mean_average_precision(preds, targets, CLASSES)
    assert m.map50 == pytest.approx(1.0)
    assert m.map50_95 == pytest.approx(0.3, abs=1e-4)
    assert m.per_class["dog"].map50_95 == pytest.approx(0.3, abs=1e-4)


def test_no_detections_score_zero_and_no_ground_truth_is_refused() -> None:
    targets = [_gt([[0, 0, 10, 10]], [0])]
    m = mean_average_precision([_det(np.zeros((0, 4)), [], [])], targets, CLASSES)
    assert (m.map50, m.map50_95) == (0.0, 0.0)
    acc = MapAccumulator(CLASSES)
    acc.add(np.zeros((0, 4)), [], [], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="no ground-truth box"):
        acc.compute()
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        acc.add([[0, 0, 1, 1]], [0.5], [3], [[0, 0, 1, 1]], [0])


class _FixedTorchvisionDetector(nn.Module):
    """A stand-in for torchvision's eval output: fixed boxes in its 64x64 input, labels 1..C."""

    family = "ssd"
    task = "detection"
    input_size = 64

    def __init__(self, boxes: list[list[float]], labels: list[int]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.boxes, self.labels = boxes, labels
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen.extend(tuple(im.shape) for im in images)
        return [
            {
                "boxes": torch.tensor(self.boxes, dtype=torch.float32),
                "scores": torch.full((len(self.labels),), 0.9),
                "labels": torch.tensor(self.labels),
            }
            for _ in images
        ]


def test_evaluate_detector_maps_boxes_back_and_shifts_labels() -> None:
    # A 96x48 image letterboxed to 64: scale 2/3, 16 px of padding above and below.
    image = np.zeros((48, 96, 3), np.uint8)
    sample = DetectionSample("a.png", image, np.array([[30, 12, 60, 36]]), np.array([1]))
    good = _FixedTorchvisionDetector([[20, 24, 40, 40]], [2])  # the dog, in input pixels
    m = evaluate_detector(good, [sample, sample], CLASSES)
    assert good.seen == [(3, 64, 64), (3, 64, 64)]
    assert m.map50 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)
    assert m.images == 2 and m.per_class["dog"].detections == 2
    # the same box taken as if it were in image pixels misses
    unmapped = _FixedTorchvisionDetector([[30, 12, 60, 36]], [2])
    assert evaluate_detector(unmapped, [sample], CLASSES).map50 == pytest.approx(0.0)


def test_evaluate_detector_refuses_a_classifier() -> None:
    sample = DetectionSample("a.png", np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="family 'yolo', 'ssd' or 'fasterrcnn'"):
        evaluate_detector(nn.Linear(2, 2), [sample], CLASSES, input_size=8)
