"""Faster R-CNN's whole-model ONNX export (post-processing inside) and its parity with torch,
on the zoo's model at a 64-px input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compression.detect_post import Detections
from compression.detection_export import (
    FRCNN_OUTPUTS,
    FRCNN_PARITY_MAX_BOX_DIFF_PX,
    check_fasterrcnn_parity,
    compare_detections,
    export_fasterrcnn,
    fasterrcnn_torch_detections,
    parity_ok,
    read_detector_meta,
)
from compression.onnx_export import INPUT_NAME, ExportError
from compression.zoo import create_model

SIZE = 64


def _decisive_frcnn() -> torch.nn.Module:
    """A Faster R-CNN whose scores are spread out. A fresh one's BatchNorm statistics shrink
    the pooled RoI features to about 1e-8, so every box gets the score its biases give and
    ties (at the RPN's top-k and the 100-detection cap) could be broken either way by two
    correct implementations; random BatchNorm statistics and affine terms give features of
    about 0.2 and distinct scores, as a trained model has."""
    torch.manual_seed(0)
    model = create_model("fasterrcnn_mobilenetv3_fpn", num_classes=3, input_size=SIZE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=g)
                module.running_var.uniform_(0.5, 2.0, generator=g)
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0, 0.2, generator=g)
        model.rpn.head.cls_logits.weight.mul_(10)
        model.roi_heads.box_predictor.cls_score.weight.mul_(10)
    return model.eval()


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Op types of a graph and of every subgraph (Loop and If bodies)."""
    ops: set[str] = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _op_types(attr.g)
            for sub in attr.graphs:
                ops |= _op_types(sub)
    return ops


def test_export_keeps_torchvisions_post_processing_and_matches_torch(tmp_path: Path) -> None:
    model = _decisive_frcnn()
    rng = np.random.default_rng(0)
    images = rng.random((3, 3, SIZE, SIZE), dtype=np.float32)
    path = export_fasterrcnn(model, tmp_path / "frcnn.onnx", parity_images=images)

    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == list(FRCNN_OUTPUTS)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    # RoI pooling and NMS in the graph (the NMS inside a Loop's body: once per class)
    assert {"NonMaxSuppression", "RoiAlign"} <= _op_types(proto.graph)
    assert read_detector_meta(path) is None  # nothing for the numpy post-processing to do
    assert not list(tmp_path.glob("*.tmp"))

    reference = fasterrcnn_torch_detections(model, images)
    assert sum(len(d) for d in reference) > 0  # the comparison compares boxes
    for d in reference:  # class ids are the data set's, 0..C-1 (torchvision's label - 1)
        assert d.class_ids.min(initial=0) >= 0 and d.class_ids.max(initial=0) < 3
    agreement = check_fasterrcnn_parity(model, path, images)
    assert parity_ok(agreement, FRCNN_PARITY_MAX_BOX_DIFF_PX)
    assert agreement.matched == agreement.reference == agreement.other
    assert agreement.max_box_diff <= FRCNN_PARITY_MAX_BOX_DIFF_PX


def test_parity_sees_a_model_that_is_not_the_exported_one(tmp_path: Path) -> None:
    model = _decisive_frcnn()
    images = np.random.default_rng(1).random((2, 3, SIZE, SIZE), dtype=np.float32)
    path = export_fasterrcnn(model, tmp_path / "frcnn.onnx")
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.bias.add_(3.0)  # every box moves by pixels
    agreement = check_fasterrcnn_parity(model, path, images)
    assert not parity_ok(agreement, FRCNN_PARITY_MAX_BOX_DIFF_PX)


def test_other_detectors_and_old_opsets_are_refused(tmp_path: Path) -> None:
    ssd = create_model("ssdlite_mobilenetv2", num_classes=3, input_size=SIZE, width=0.25)
    with pytest.raises(ExportError, match="takes a Faster R-CNN detector, not a ssd one"):
        export_fasterrcnn(ssd, tmp_path / "ssd.onnx")
    with pytest.raises(ExportError, match="opset >= 11"):
        export_fasterrcnn(_decisive_frcnn(), tmp_path / "old.onnx", opset=10)
    assert not list(tmp_path.iterdir())


def test_comparison_pairs_near_duplicate_boxes_with_their_twins() -> None:
    """Two boxes of one class 0.02 px apart, listed first the one whose twin is 0.038 px off:
    taking each box's closest in turn would give the first one the second's exact twin and
    leave the second a box 0.058 px away; the one-to-one pairing keeps the twins (0.038)."""
    first = [10.0, 10.0, 20.0, 20.0]
    second = [10.02, 10.0, 20.02, 20.0]
    ref = Detections(
        boxes=np.array([first, second], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
        class_ids=np.array([1, 1]),
    )
    other = Detections(
        boxes=np.array([second, [9.962, 10.0, 19.962, 20.0]], np.float32),
        scores=np.array([0.8, 0.9], np.float32),
        class_ids=np.array([1, 1]),
    )
    agreement = compare_detections([ref], [other])
    assert agreement.matched == 2
    assert agreement.max_box_diff == pytest.approx(0.038, abs=1e-4)
    assert agreement.max_score_diff == pytest.approx(0.0)
