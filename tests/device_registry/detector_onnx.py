"""Detectors and detection evaluation sets made on the spot for the device tests: a tiny
``yolov3_tiny`` export, a few built-in scenes, and an "oracle" ONNX whose constant YOLO maps
decode to one image's ground truth (so its on-device mAP is exactly known)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from compression.detection_data import DetectionBundle, DetectionSample

ORACLE_SIZE = 64
SIZE = 64  # the tiny detector's input size in the device tests
ORACLE_STRIDE = 8
ORACLE_ANCHOR = 16.0


def tiny_scenes(*, n_test: int = 24, size: int = 80, seed: int = 0) -> DetectionBundle:
    """A few ``mnist_scenes`` images (the built-in detection set, generated smaller)."""
    from compression.detection_data import SceneConfig, load_mnist_scenes

    return load_mnist_scenes(SceneConfig(seed=seed, size=size, n_train=4, n_val=2, n_test=n_test))


def tiny_yolo_onnx(path: Path, *, num_classes: int = 10, input_size: int = 64) -> Path:
    """An untrained ``yolov3_tiny`` (width 0.25) exported with its detection metadata."""
    import torch

    from compression.detection_export import export_detector
    from compression.zoo import create_model

    torch.manual_seed(0)
    model = create_model(
        "yolov3_tiny", num_classes=num_classes, width=0.25, input_size=input_size
    ).eval()
    export_detector(model, path)
    return path


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def oracle_detector(
    path: Path, sample: DetectionSample, *, num_classes: int, size: int = ORACLE_SIZE
) -> Path:
    """An ONNX YOLO (one level, stride 8, three anchors) whose outputs ignore the input and
    decode to ``sample``'s boxes letterboxed to ``size`` (score ~1), nothing else above 0.001."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compression.detection_transforms import letterbox
    from edgeslim_agent.detect_post import META_KEY, DetectorMeta

    _, where = letterbox(sample.image, size)
    boxes = where.boxes_to_input(sample.boxes)
    grid, anchors, ch = size // ORACLE_STRIDE, 3, 5 + num_classes
    maps = np.zeros((anchors, ch, grid, grid), dtype=np.float32)
    maps[:, 4] = -14.0  # no object anywhere ...
    maps[:, 5:] = -14.0
    used: set[tuple[int, int, int]] = set()
    for (x1, y1, x2, y2), label in zip(boxes.tolist(), sample.labels.tolist(), strict=True):
        cx, cy = (x1 + x2) / 2 / ORACLE_STRIDE, (y1 + y2) / 2 / ORACLE_STRIDE
        gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
        a = next(a for a in range(anchors) if (a, gy, gx) not in used)
        used.add((a, gy, gx))
        maps[a, 0, gy, gx] = _logit(cx - gx)
        maps[a, 1, gy, gx] = _logit(cy - gy)
        maps[a, 2, gy, gx] = math.log((x2 - x1) / ORACLE_ANCHOR)
        maps[a, 3, gy, gx] = math.log((y2 - y1) / ORACLE_ANCHOR)
        maps[a, 4, gy, gx] = 14.0  # ... but at each ground-truth box
        maps[a, 5 + int(label), gy, gx] = 14.0
    const = maps.reshape(1, anchors * ch, grid, grid)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),  # (N, 1, 1, 1)
            helper.make_node("Mul", ["s", "zero"], ["z"]),
            helper.make_node("Add", ["z", "maps"], ["level0"]),
        ],
        "oracle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info(
                "level0", TensorProto.FLOAT, ["N", anchors * ch, grid, grid]
            )
        ],
        initializer=[
            numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), name="axes"),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), name="zero"),
            numpy_helper.from_array(const, name="maps"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = DetectorMeta(
        family="yolo",
        num_classes=num_classes,
        input_size=size,
        anchors=(((ORACLE_ANCHOR, ORACLE_ANCHOR),) * anchors,),
        strides=(ORACLE_STRIDE,),
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, meta.to_json()
    onnx.save(model, str(path))
    return path


def wide_sample(sample: DetectionSample) -> DetectionSample:
    """``sample`` on a wider canvas (grey on the right), so letterboxing pads it top and bottom:
    the boxes only land right when the agent maps them back through the placement."""
    h, w = sample.image.shape[:2]
    canvas = np.full((h, w + w // 2, 3), 30, dtype=np.uint8)
    canvas[:, :w] = sample.image
    return DetectionSample(
        name=sample.name + "-wide", image=canvas, boxes=sample.boxes, labels=sample.labels
    )


def detector_job_version(org, tmp_path, monkeypatch):
    """A ready ONNX yolov3_tiny version produced by a (finished) job on a detection data set
    whose loader returns a few built-in scenes."""
    from jobs_factories import make_model_version

    from device_registry import eval_sets
    from webapp.catalog.models import Dataset, DatasetKind, DatasetTask, ItemStatus
    from webapp.catalog.services import model_version_create_from_job
    from webapp.jobs.models import Job, JobStatus

    scenes = tiny_scenes(n_test=12)
    monkeypatch.setattr(eval_sets, "dataset_load", lambda dataset, **kw: scenes)
    dataset = Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES,
        task=DatasetTask.DETECTION, num_classes=10, status=ItemStatus.READY,
    )  # fmt: skip
    parent = make_model_version(org)
    parent.task, parent.input_size, parent.in_channels = "detection", SIZE, 3
    parent.save(update_fields=["task", "input_size", "in_channels"])
    job = Job.objects.create(
        organization=org, name="yolo", model_version=parent, dataset=dataset, recipe={},
        status=JobStatus.SUCCEEDED,
    )  # fmt: skip
    path = tiny_yolo_onnx(tmp_path / "yolo.onnx", num_classes=10, input_size=SIZE)
    version = model_version_create_from_job(
        organization=org, parent=parent, job_id=job.pk, recipe={}, file_path=path,
        format="onnx", label="fp32", info={"params": 1},
    )  # fmt: skip
    return version, scenes
