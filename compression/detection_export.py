"""Export a detector to ONNX: its raw head outputs with the post-processing's metadata, an
optional end-to-end graph with decoding and ``NonMaxSuppression`` in it, and a parity check.

The raw export (:func:`export_detector`) follows :mod:`compression.onnx_export`'s conventions
(an eval-mode CPU copy, input ``input`` with a dynamic batch axis, the TorchScript-based exporter,
a temp file replaced on success) and names the outputs ``level0..`` (YOLO, coarsest stride
first) or ``bbox_regression, cls_logits`` (SSD). The :class:`~compression.detect_post.DetectorMeta`
JSON goes into the file's ``metadata_props`` under ``edgeslim.detection``, so any reader (the
inspection, the host measurement, the agent) knows how to decode the outputs without torch.

The end-to-end graph (:func:`export_end_to_end`) is built with ``onnx.helper`` on top of the raw
graph rather than by exporting a torch wrapper: the network's nodes and weights stay exactly the
raw export's, the decode is a handful of elementwise nodes whose constants (grid, anchors,
priors) come from the same metadata the numpy decoder reads, and the selection semantics are
ours to state: ONNX ``NonMaxSuppression`` per class with the score threshold (strictly above)
and ``max_detections`` per class, then the best ``max_detections`` per image — the same boxes as
:func:`compression.detect_post.postprocess` (a metadata's ``pre_nms_top_k`` is not applied in
the graph). Torch's exporter would trace a per-image Python loop into a fixed batch instead.

Faster R-CNN is a two-stage detector whose second stage reads the first stage's proposals; its
"raw head outputs" are not a fixed tensor layout, so :func:`export_detector` does not take it.
:func:`export_fasterrcnn` exports it whole instead, the way torchvision documents it (the
TorchScript-based exporter, ``dynamo=False``, opset >= 11, an eval-mode model traced on a
fixed-size image): RPN, RoI heads and torchvision's own post-processing (box decoding, score
threshold, per-class NMS, ``detections_per_img``) are inside the graph, which returns
detections (:data:`FRCNN_OUTPUTS`) for a batch of exactly one image. It carries no
:class:`DetectorMeta` (there is nothing for the numpy post-processing to do), so the pipeline's
inspection and the agent, which read that metadata, still refuse it;
:func:`check_fasterrcnn_parity` compares its boxes with torch's.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.detect_post import (
    META_KEY,
    DetectionError,
    Detections,
    DetectorMeta,
    postprocess,
)
from compression.detector_meta import meta_of_proto as meta_of_proto
from compression.detector_meta import read_detector_meta as read_detector_meta
from compression.onnx_export import INPUT_NAME, ExportError, export_onnx

E2E_OUTPUTS = ("det_boxes", "det_scores", "det_classes", "det_batch")
FRCNN_OUTPUTS = ("det_boxes", "det_scores", "det_classes")


# --- metadata -------------------------------------------------------------------------------


def meta_from_model(model: nn.Module, **overrides: Any) -> DetectorMeta:
    """The :class:`DetectorMeta` of a detector that follows the YOLO contract (``family``,
    ``anchors``, ``strides``, ``num_classes``, ``input_size``, optional ``class_names``) or of
    an :class:`SSDRawHead`; ``overrides`` replace fields (thresholds, for one)."""
    family = getattr(model, "family", None)
    if isinstance(model, SSDRawHead):
        return dataclasses.replace(model.meta, **overrides)
    if family != "yolo":
        raise DetectionError(
            f"{type(model).__name__} is not a detector the export knows: it declares family "
            f"{family!r} (expected a YOLO model with anchors and strides, or an SSDRawHead)"
        )
    names = getattr(model, "class_names", None)
    values: dict[str, Any] = {
        "family": "yolo",
        "num_classes": int(model.num_classes),  # type: ignore[arg-type]
        "input_size": int(model.input_size),  # type: ignore[arg-type]
        "anchors": tuple(
            tuple((float(w), float(h)) for w, h in level)
            for level in model.anchors  # type: ignore[union-attr]
        ),
        "strides": tuple(int(s) for s in model.strides),  # type: ignore[union-attr]
        "class_names": tuple(str(n) for n in names) if names else None,
    }
    values.update(overrides)
    return DetectorMeta(**values)


def write_detector_meta(onnx_path: Path | str, meta: DetectorMeta) -> None:
    """Store ``meta`` in the file's ``metadata_props`` (replacing an earlier one)."""
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    _set_meta(model, meta)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def _set_meta(model: Any, meta: DetectorMeta) -> None:
    kept = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    prop = model.metadata_props.add()
    prop.key = META_KEY
    prop.value = meta.to_json()


# --- SSD: torchvision's SSD as raw head outputs ---------------------------------------------


class SSDRawHead(nn.Module):
    """A torchvision SSD / SSDlite as a module returning ``(bbox_regression, cls_logits)``.

    The input is a float ``(N, 3, S, S)`` image in [0, 1] at the model's fixed size: the
    wrapper normalises it as the model's transform does and runs the backbone and the head,
    leaving out the resize (the identity at S) and the post-processing. ``meta`` carries the
    priors of this size (the model's anchor generator, ``xyxy`` in input pixels) and its
    thresholds (score, NMS IoU, detections per image, top-k candidates per class).
    """

    def __init__(self, ssd: nn.Module, input_size: int) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.ssd = ssd
        transform: Any = ssd.transform
        self.register_buffer(
            "mean", torch.tensor(transform.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(transform.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        )
        was_training = ssd.training
        ssd.eval()
        with torch.no_grad():
            x = torch.zeros((1, 3, input_size, input_size))
            features = self._features(x)
            images = ImageList(x, [(input_size, input_size)])
            priors = ssd.anchor_generator(images, features)[0]  # type: ignore[operator]
        ssd.train(was_training)
        head: Any = ssd.head
        num_columns = int(head.classification_head.num_columns)
        self.meta = DetectorMeta(
            family="ssd",
            num_classes=num_columns - 1,
            input_size=input_size,
            priors=tuple((p[0], p[1], p[2], p[3]) for p in priors.tolist()),
            box_weights=tuple(float(w) for w in ssd.box_coder.weights),  # type: ignore[arg-type,union-attr]
            score_threshold=float(ssd.score_thresh),  # type: ignore[arg-type]
            iou_threshold=float(ssd.nms_thresh),  # type: ignore[arg-type]
            max_detections=int(ssd.detections_per_img),  # type: ignore[arg-type]
            pre_nms_top_k=int(ssd.topk_candidates),  # type: ignore[arg-type]
        )

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.ssd.backbone((x - self.mean) / self.std)  # type: ignore[operator]
        if isinstance(features, torch.Tensor):
            return [features]
        return list(features.values())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.ssd.head(self._features(x))  # type: ignore[operator]
        return out["bbox_regression"], out["cls_logits"]


# --- export ---------------------------------------------------------------------------------


def export_detector(
    model: nn.Module,
    path: Path | str,
    *,
    meta: DetectorMeta | None = None,
    opset: int = 17,
) -> Path:
    """Write the detector's raw head outputs as ONNX with its metadata.

    Args:
        model: a YOLO-contract detector or an :class:`SSDRawHead`.
        path: where to write; parent folders are created.
        meta: the metadata to store; by default :func:`meta_from_model`.
        opset: ONNX opset version.

    Raises:
        ExportError: the export failed, or its outputs do not fit the metadata.
    """
    import onnx

    from compression.detect_post import recognise_outputs

    meta = meta or meta_from_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, 3, meta.input_size, meta.input_size), dtype=torch.float32)
    names = meta.output_names()
    tmp = path.with_name(path.name + ".tmp")
    export_onnx(model, (3, meta.input_size, meta.input_size), tmp, opset=opset, output_names=names)
    try:
        # The shapes one run gives (the exporter leaves some spatial dims symbolic, after a
        # padded max-pool for one), checked against the metadata and then declared as such.
        run = _session(tmp).run(None, {INPUT_NAME: example.numpy()})
        recognise_outputs([np.shape(o) for o in run], meta)
        proto = onnx.load(str(tmp))
        for output, shape in zip(proto.graph.output, meta.expected_output_shapes(), strict=True):
            dims = output.type.tensor_type.shape.dim
            for dim, size in zip(dims, shape, strict=True):
                if size is not None:
                    dim.ClearField("dim_param")
                    dim.dim_value = size
        _set_meta(proto, meta)
        onnx.save(proto, str(tmp))
    except DetectionError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"the exported detector does not fit its metadata: {exc}") from exc
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    tmp.replace(path)
    return path


class _Graph:
    """Nodes and constants appended to a graph, with fresh names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def op_n(self, op_type: str, inputs: Sequence[str], n: int, **attrs: Any) -> list[str]:
        from onnx import helper

        outs = [self.name(op_type.lower()) for _ in range(n)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs


def _slice(g: _Graph, x: str, start: int, end: int) -> str:
    return g.op(
        "Slice",
        [
            x,
            g.const([start], "s", np.int64),
            g.const([end], "e", np.int64),
            g.const([-1], "a", np.int64),
        ],
    )


def _decode_yolo_nodes(g: _Graph, outputs: list[str], meta: DetectorMeta) -> tuple[str, str]:
    assert meta.anchors is not None and meta.strides is not None
    c = meta.num_classes
    boxes, scores = [], []
    for out, anchors, stride, side in zip(
        outputs, meta.anchors, meta.strides, meta.grid_sizes(), strict=True
    ):
        a, hw = len(anchors), side * side
        t = g.op("Reshape", [out, g.const([-1, a, 5 + c, hw], "shape", np.int64)])
        t = g.op("Transpose", [t], perm=[0, 1, 3, 2])  # N, A, HW, 5+C
        t = g.op("Reshape", [t, g.const([-1, a * hw, 5 + c], "shape", np.int64)])
        cy, cx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grid = np.tile(np.stack([cx.ravel(), cy.ravel()], axis=-1), (a, 1))[None]
        anchor_wh = np.repeat(np.asarray(anchors, dtype=np.float32), hw, axis=0)[None]
        xy = g.op("Add", [g.op("Sigmoid", [_slice(g, t, 0, 2)]), g.const(grid, "grid")])
        xy = g.op("Mul", [xy, g.const(float(stride), "stride")])
        half = g.op("Mul", [g.op("Exp", [_slice(g, t, 2, 4)]), g.const(anchor_wh / 2, "anchor")])
        boxes.append(g.op("Concat", [g.op("Sub", [xy, half]), g.op("Add", [xy, half])], axis=-1))
        obj = g.op("Sigmoid", [_slice(g, t, 4, 5)])
        scores.append(g.op("Mul", [obj, g.op("Sigmoid", [_slice(g, t, 5, 5 + c)])]))
    return g.op("Concat", boxes, axis=1), g.op("Concat", scores, axis=1)


def _decode_ssd_nodes(g: _Graph, outputs: list[str], meta: DetectorMeta) -> tuple[str, str]:
    from compression.detect_post import BBOX_XFORM_CLIP

    priors = np.asarray(meta.priors, dtype=np.float32)
    wh = priors[:, 2:] - priors[:, :2]
    ctr = priors[:, :2] + 0.5 * wh
    rel = g.op("Div", [outputs[0], g.const(np.asarray(meta.box_weights)[None, None], "w")])
    dxy = _slice(g, rel, 0, 2)
    dwh = g.op("Min", [_slice(g, rel, 2, 4), g.const(BBOX_XFORM_CLIP, "clip")])
    centre = g.op("Add", [g.op("Mul", [dxy, g.const(wh[None], "wh")]), g.const(ctr[None], "ctr")])
    half = g.op("Mul", [g.op("Exp", [dwh]), g.const(0.5 * wh[None], "halfwh")])
    boxes = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], axis=-1)
    probs = g.op("Softmax", [outputs[1]], axis=-1)
    scores = _slice(g, probs, 1, meta.num_classes + 1)
    return boxes, scores


def export_end_to_end(
    raw_onnx_path: Path | str, path: Path | str, *, meta: DetectorMeta | None = None
) -> Path:
    """Write a graph that returns detections: the raw graph, the decode, ONNX
    ``NonMaxSuppression`` (score threshold, ``max_detections`` per class), then the best
    ``max_detections`` per image.

    Outputs (K detections over the whole batch, grouped by image, best first in each):
    ``det_boxes (K, 4)`` xyxy input pixels, ``det_scores (K,)``, ``det_classes (K,)`` int64,
    ``det_batch (K,)`` int64 (the image each belongs to). The metadata is kept in the file.

    Args:
        raw_onnx_path: a raw export (:func:`export_detector`).
        path: where to write.
        meta: thresholds and layout; by default the raw file's own metadata.
    """
    import onnx
    from onnx import TensorProto, helper

    raw = onnx.load(str(raw_onnx_path), load_external_data=False)
    meta = meta or meta_of_proto(raw)
    if meta is None:
        raise ExportError(f"{Path(raw_onnx_path).name} carries no detection metadata")
    graph = raw.graph
    outputs = [o.name for o in graph.output]
    from compression.detect_post import recognise_outputs

    try:
        recognise_outputs(
            [
                [
                    d.dim_value if d.HasField("dim_value") else None
                    for d in o.type.tensor_type.shape.dim
                ]
                for o in graph.output
            ],
            meta,
        )
    except DetectionError as exc:
        raise ExportError(str(exc)) from exc
    g = _Graph("e2e_")
    if meta.family == "yolo":
        boxes, scores = _decode_yolo_nodes(g, outputs, meta)
    else:
        boxes, scores = _decode_ssd_nodes(g, outputs, meta)
    size = float(meta.input_size)
    boxes = g.op("Clip", [boxes, g.const(0.0, "lo"), g.const(size, "hi")])  # N, B, 4
    scores_t = g.op("Transpose", [scores], perm=[0, 2, 1])  # N, C, B
    cap = meta.max_detections
    selected = g.op(
        "NonMaxSuppression",
        [
            boxes,
            scores_t,
            g.const([cap], "max_out", np.int64),
            g.const([meta.iou_threshold], "iou"),
            g.const([meta.score_threshold], "score_thr"),
        ],
        center_point_box=0,
    )  # K, 3: batch, class, box
    batch = g.op("Gather", [selected, g.const(0, "i0", np.int64)], axis=1)
    klass = g.op("Gather", [selected, g.const(1, "i1", np.int64)], axis=1)
    sel_scores = g.op("GatherND", [scores_t, selected])
    sel_boxes = g.op(
        "GatherND", [boxes, g.op("Gather", [selected, g.const([0, 2], "i02", np.int64)], axis=1)]
    )
    # Order by image, then score (descending): key = 2 * batch - score, score in [0, 1].
    key = g.op(
        "Sub",
        [g.op("Mul", [g.op("Cast", [batch], to=TensorProto.FLOAT), g.const(2.0)]), sel_scores],
    )
    k = g.op("Shape", [sel_scores])
    _, order = g.op_n("TopK", [key, k], 2, axis=0, largest=0, sorted=1)
    sorted_batch = g.op("Gather", [batch, order], axis=0)
    # rank within its image = position - number of detections of earlier images
    n_images = g.op(
        "Squeeze",
        [
            g.op(
                "Slice",
                [
                    g.op("Shape", [INPUT_NAME]),
                    g.const([0], "s", np.int64),
                    g.const([1], "e", np.int64),
                ],
            ),
            g.const([0], "ax", np.int64),
        ],
    )
    zero = g.const(0, "zero", np.int64)
    one = g.const(1, "one", np.int64)
    image_ids = g.op("Range", [zero, n_images, one])
    earlier = g.op(
        "Less",
        [
            g.op("Unsqueeze", [sorted_batch, g.const([0], "ax", np.int64)]),
            g.op("Unsqueeze", [image_ids, g.const([1], "ax", np.int64)]),
        ],
    )  # n_images, K
    first = g.op(
        "ReduceSum",
        [g.op("Cast", [earlier], to=TensorProto.INT64), g.const([1], "ax", np.int64)],
        keepdims=0,
    )
    k_scalar = g.op("Squeeze", [k, g.const([0], "ax", np.int64)])
    position = g.op("Range", [zero, k_scalar, one])
    rank = g.op("Sub", [position, g.op("Gather", [first, sorted_batch], axis=0)])
    kept = g.op(
        "Squeeze",
        [
            g.op("NonZero", [g.op("Less", [rank, g.const(cap, "cap", np.int64)])]),
            g.const([0], "ax", np.int64),
        ],
    )
    final = g.op("Gather", [order, kept], axis=0)
    results = {
        "det_boxes": g.op("Gather", [sel_boxes, final], axis=0),
        "det_scores": g.op("Gather", [sel_scores, final], axis=0),
        "det_classes": g.op("Gather", [klass, final], axis=0),
        "det_batch": g.op("Gather", [batch, final], axis=0),
    }
    for name, source in results.items():
        g.nodes.append(helper.make_node("Identity", [source], [name]))
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.inits)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["K", 4]),
            helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["K"]),
            helper.make_tensor_value_info("det_classes", TensorProto.INT64, ["K"]),
            helper.make_tensor_value_info("det_batch", TensorProto.INT64, ["K"]),
        ]
    )
    _set_meta(raw, meta)
    try:
        onnx.checker.check_model(raw)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the end-to-end graph is not valid ONNX: {exc}") from exc
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(raw, str(tmp))
    tmp.replace(out)
    return out


def end_to_end_detections(results: Sequence[np.ndarray], batch_size: int) -> list[Detections]:
    """Split the end-to-end graph's outputs (in :data:`E2E_OUTPUTS` order) per image."""
    boxes, scores, classes, batch = (np.asarray(r) for r in results)
    out = []
    for b in range(batch_size):
        m = batch == b
        out.append(
            Detections(
                boxes=boxes[m].astype(np.float32).reshape(-1, 4),
                scores=scores[m].astype(np.float32),
                class_ids=classes[m].astype(np.int64),
            )
        )
    return out


# --- torch reference and parity -------------------------------------------------------------


def torch_postprocess(outputs: Sequence[torch.Tensor], meta: DetectorMeta) -> list[Detections]:
    """The reference post-processing in torch (torchvision's ``batched_nms``), written apart
    from the numpy module so the parity check compares two implementations."""
    from torchvision.ops import batched_nms, clip_boxes_to_image

    if meta.family == "yolo":
        assert meta.anchors is not None and meta.strides is not None
        c = meta.num_classes
        boxes_l, scores_l = [], []
        for out, anchors, stride in zip(outputs, meta.anchors, meta.strides, strict=True):
            n, _, h, w = out.shape
            a = len(anchors)
            t = out.float().view(n, a, 5 + c, h, w).permute(0, 1, 3, 4, 2)
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            anchor = torch.tensor(anchors, dtype=torch.float32).view(1, a, 1, 1, 2)
            cx = (t[..., 0].sigmoid() + gx) * stride
            cy = (t[..., 1].sigmoid() + gy) * stride
            wh = anchor * t[..., 2:4].exp()
            xyxy = torch.stack(
                [
                    cx - wh[..., 0] / 2,
                    cy - wh[..., 1] / 2,
                    cx + wh[..., 0] / 2,
                    cy + wh[..., 1] / 2,
                ],
                dim=-1,
            )
            boxes_l.append(xyxy.reshape(n, -1, 4))
            scores_l.append((t[..., 4:5].sigmoid() * t[..., 5:].sigmoid()).reshape(n, -1, c))
        boxes, scores = torch.cat(boxes_l, 1), torch.cat(scores_l, 1)
    else:
        from torchvision.models.detection._utils import BoxCoder

        coder = BoxCoder(meta.box_weights)
        priors = torch.tensor(meta.priors, dtype=torch.float32)
        rel = outputs[0].float()
        boxes = torch.stack([coder.decode_single(r, priors) for r in rel])
        scores = torch.softmax(outputs[1].float(), dim=-1)[..., 1:]
    result = []
    size = (meta.input_size, meta.input_size)
    for b in range(boxes.shape[0]):
        img_boxes = clip_boxes_to_image(boxes[b], size)
        box_idx, cls_idx = torch.nonzero(scores[b] > meta.score_threshold, as_tuple=True)
        cand = scores[b][box_idx, cls_idx]
        if meta.pre_nms_top_k is not None:
            chosen = []
            for c_ in cls_idx.unique():
                members = torch.nonzero(cls_idx == c_).flatten()
                top = cand[members].topk(min(meta.pre_nms_top_k, members.numel())).indices
                chosen.append(members[top])
            if chosen:
                pick = torch.cat(chosen).sort().values
                box_idx, cls_idx, cand = box_idx[pick], cls_idx[pick], cand[pick]
        keep = batched_nms(img_boxes[box_idx], cand, cls_idx, meta.iou_threshold)
        keep = keep[: meta.max_detections]
        result.append(
            Detections(
                boxes=img_boxes[box_idx][keep].numpy().astype(np.float32).reshape(-1, 4),
                scores=cand[keep].numpy().astype(np.float32),
                class_ids=cls_idx[keep].numpy().astype(np.int64),
            )
        )
    return result


@dataclass
class Agreement:
    """How two sets of detections agree: the boxes of each class are paired one to one with the
    least total coordinate difference, and a pair counts as matched if its IoU is at least
    ``min_iou``."""

    reference: int  # detections on the reference side, all images
    other: int
    matched: int
    matched_fraction: float  # matched / the larger side (1.0 when both are empty)
    max_box_diff: float  # largest coordinate difference of a matched pair, pixels
    max_score_diff: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_detections(
    reference: Sequence[Detections], other: Sequence[Detections], *, min_iou: float = 0.5
) -> Agreement:
    from compression.detect_post import box_iou

    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} images against {len(other)}")
    from scipy.optimize import linear_sum_assignment

    n_ref = n_other = matched = 0
    box_diff = score_diff = 0.0
    for ref, oth in zip(reference, other, strict=True):
        n_ref += len(ref)
        n_other += len(oth)
        for cls in np.unique(ref.class_ids):
            ri = np.flatnonzero(ref.class_ids == cls)
            oi = np.flatnonzero(oth.class_ids == cls)
            if not len(oi):
                continue
            # One-to-one pairs of the class with the least total coordinate difference (each
            # pair's largest one). Crowded outputs hold near-duplicate boxes, where taking each
            # reference box's closest box in turn can take a later box's exact twin and leave it
            # a neighbour, and where the best IoU can pick a neighbour.
            cost = np.max(np.abs(ref.boxes[ri][:, None, :] - oth.boxes[oi][None, :, :]), axis=2)
            for r, o in zip(*linear_sum_assignment(cost), strict=True):
                i, j = int(ri[r]), int(oi[o])
                if box_iou(ref.boxes[i], oth.boxes[j : j + 1])[0] < min_iou:
                    continue
                matched += 1
                box_diff = max(box_diff, float(cost[r, o]))
                score_diff = max(score_diff, float(abs(ref.scores[i] - oth.scores[j])))
    larger = max(n_ref, n_other)
    return Agreement(
        reference=n_ref,
        other=n_other,
        matched=matched,
        matched_fraction=matched / larger if larger else 1.0,
        max_box_diff=box_diff,
        max_score_diff=score_diff,
    )


@dataclass
class ParityReport:
    """Torch against ONNX Runtime on the same images."""

    images: int
    raw_max_abs_diff: float  # largest difference of the raw head outputs
    numpy: Agreement  # torch decode + NMS vs ORT raw outputs + numpy post-processing
    end_to_end: Agreement | None  # torch vs the end-to-end graph, when one was given

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def ok(self) -> bool:
        parts = [self.numpy] + ([self.end_to_end] if self.end_to_end else [])
        return all(parity_ok(p) for p in parts)


def _session(path: Path | str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module,
    onnx_path: Path | str,
    images: torch.Tensor | np.ndarray,
    *,
    end_to_end_path: Path | str | None = None,
    meta: DetectorMeta | None = None,
) -> ParityReport:
    """Compare torch's decoded and NMS-ed boxes with ONNX Runtime's on ``images``.

    ``images``: float ``(N, 3, S, S)`` in [0, 1]. The raw ONNX's outputs go through the numpy
    post-processing (:func:`compression.detect_post.postprocess`); the end-to-end graph, when
    given, is compared too. ``meta`` defaults to the one stored in the raw file.

    Returns:
        A :class:`ParityReport` (max box difference and matched fraction per comparison).
    """
    meta = meta or read_detector_meta(onnx_path)
    if meta is None:
        raise ExportError(f"{Path(onnx_path).name} carries no detection metadata")
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    module = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        raw_torch = module(x)
    if isinstance(raw_torch, torch.Tensor):
        raw_torch = [raw_torch]
    raw_torch = list(raw_torch)
    reference = torch_postprocess(raw_torch, meta)
    session = _session(onnx_path)
    raw_ort = session.run(None, {INPUT_NAME: x.numpy()})
    raw_diff = max(
        float(np.max(np.abs(np.asarray(o) - t.numpy()))) if t.numel() else 0.0
        for o, t in zip(raw_ort, raw_torch, strict=True)
    )
    numpy_agreement = compare_detections(reference, postprocess(raw_ort, meta))
    e2e = None
    if end_to_end_path is not None:
        e2e_out = _session(end_to_end_path).run(list(E2E_OUTPUTS), {INPUT_NAME: x.numpy()})
        e2e = compare_detections(reference, end_to_end_detections(e2e_out, x.shape[0]))
    return ParityReport(
        images=int(x.shape[0]),
        raw_max_abs_diff=raw_diff,
        numpy=numpy_agreement,
        end_to_end=e2e,
    )


# --- Faster R-CNN: the whole model, post-processing included --------------------------------


class FasterRCNNDetections(nn.Module):
    """A torchvision Faster R-CNN as a module from one image to its detections.

    Input: float ``(1, 3, S, S)`` in [0, 1]. Outputs (:data:`FRCNN_OUTPUTS`): ``det_boxes
    (K, 4)`` xyxy input pixels, ``det_scores (K,)``, ``det_classes (K,)`` int64 data-set class
    ids (torchvision's label minus the background's 1), best first, as the eval-mode model
    returns them (score threshold, per-class NMS and ``detections_per_img`` applied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.label_offset = int(getattr(model, "label_offset", 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([x[0]])[0]
        return out["boxes"], out["scores"], out["labels"] - self.label_offset


def export_fasterrcnn(
    model: nn.Module,
    path: Path | str,
    *,
    opset: int = 17,
    parity_images: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Write a torchvision Faster R-CNN (family ``fasterrcnn``) as one ONNX graph that returns
    detections (:class:`FasterRCNNDetections`), batch 1 at the model's ``input_size``.

    The TorchScript-based exporter traces the eval-mode model on one image (torchvision's
    documented path; opset >= 11 for its RoIAlign and NMS). With ``parity_images`` (float
    ``(N, 3, S, S)`` in [0, 1]) the file is kept only if :func:`check_fasterrcnn_parity` finds
    the same boxes as torch on them.

    Raises:
        ExportError: not a Faster R-CNN, an opset below 11, the export failed, or the boxes do
            not match torch's.
    """
    from compression.detection_metrics import model_family

    try:
        family = model_family(model)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if family != "fasterrcnn":
        raise ExportError(
            f"export_fasterrcnn takes a Faster R-CNN detector, not a {family} one; "
            "use export_detector for YOLO and SSD"
        )
    if opset < 11:
        raise ExportError(f"Faster R-CNN needs opset >= 11 (RoIAlign, NMS), got {opset}")
    size = int(getattr(model, "input_size", 0))
    if size <= 0:
        raise ExportError("the Faster R-CNN declares no input_size")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # export_onnx exports an eval-mode CPU copy through the TorchScript exporter, as
    # torchvision documents for its detectors, and leaves no half-written file behind.
    export_onnx(
        FasterRCNNDetections(model),
        (3, size, size),
        tmp,
        opset=opset,
        output_names=FRCNN_OUTPUTS,
        dynamic_axes={name: {0: "K"} for name in FRCNN_OUTPUTS},
    )
    if parity_images is not None:
        try:
            parity = check_fasterrcnn_parity(model, tmp, parity_images)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"the exported Faster R-CNN does not run: {exc}") from exc
        if not parity_ok(parity, FRCNN_PARITY_MAX_BOX_DIFF_PX):
            tmp.unlink(missing_ok=True)
            raise ExportError(
                "the ONNX Faster R-CNN's boxes do not match torch's: "
                f"{parity.matched}/{max(parity.reference, parity.other)} matched, "
                f"largest box difference {parity.max_box_diff:.3g} px"
            )
    tmp.replace(path)
    return path


def fasterrcnn_torch_detections(
    model: nn.Module, images: torch.Tensor | np.ndarray
) -> list[Detections]:
    """The eval-mode torch model's detections on ``images`` (float ``(N, 3, S, S)`` in [0, 1]),
    one image at a time, classes as data-set ids."""
    module = FasterRCNNDetections(copy.deepcopy(model).to("cpu").eval()).eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            boxes, scores, classes = module(x[i : i + 1])
            out.append(
                Detections(
                    boxes=boxes.numpy().astype(np.float32).reshape(-1, 4),
                    scores=scores.numpy().astype(np.float32),
                    class_ids=classes.numpy().astype(np.int64),
                )
            )
    return out


def check_fasterrcnn_parity(
    model: nn.Module, onnx_path: Path | str, images: torch.Tensor | np.ndarray
) -> Agreement:
    """Torch's Faster R-CNN detections against the :func:`export_fasterrcnn` graph's on
    ``images``, one image per run (the graph's batch is 1)."""
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    reference = fasterrcnn_torch_detections(model, x)
    session = _session(onnx_path)
    ours = []
    for i in range(x.shape[0]):
        boxes, scores, classes = session.run(list(FRCNN_OUTPUTS), {INPUT_NAME: x[i : i + 1]})
        ours.append(
            Detections(
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                scores=np.asarray(scores, dtype=np.float32),
                class_ids=np.asarray(classes, dtype=np.int64),
            )
        )
    return compare_detections(reference, ours)


# The parity bars. A one-stage detector's boxes are one decode of the raw outputs: torch and ORT
# agree to float rounding. Faster R-CNN's pass through RPN top-k, per-level NMS and RoIAlign,
# where a near-tie between proposals can go either way in two correct implementations: on an
# Intel Xeon one box of 291 came out 0.129 px off (the other 290 within 0.04 px), on the AMD
# EPYC the bar was first set on, none beyond 0.05 px.
PARITY_MAX_BOX_DIFF_PX = 0.05
FRCNN_PARITY_MAX_BOX_DIFF_PX = 0.25


def parity_ok(agreement: Agreement, max_box_diff: float = PARITY_MAX_BOX_DIFF_PX) -> bool:
    """The parity bar an export is held to: at least 99% of the boxes matched, none more than
    ``max_box_diff`` px off."""
    return agreement.matched_fraction >= 0.99 and agreement.max_box_diff <= max_box_diff


# --- one call for the host measurement ------------------------------------------------------


@dataclass
class DetectorExport:
    """What :func:`export_and_check` wrote and measured."""

    raw_path: str
    end_to_end_path: str | None
    meta: dict[str, Any]
    parity: ParityReport
    latency: dict[str, Any] | None  # DetectorLatency.to_dict(): network alone and end to end

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def export_and_check(
    model: nn.Module,
    work_dir: Path | str,
    images: torch.Tensor | np.ndarray,
    *,
    meta: DetectorMeta | None = None,
    end_to_end: bool = True,
    latency_runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
    should_cancel: Any = None,
) -> DetectorExport:
    """Export a detector (raw outputs, and the end-to-end graph), check torch/ONNX parity on
    ``images`` and time it on the same images for the network alone and with the numpy
    post-processing (in the isolated torch-free child; ``latency_runs=0`` skips it).

    Raises:
        ExportError: the export failed, or the parity check found boxes that do not match
            (below 99% matched, or a matched box more than ``PARITY_MAX_BOX_DIFF_PX`` off).
    """
    from compression.latency import measure_detector_latency

    work = Path(work_dir)
    meta = meta or meta_from_model(model)
    raw = export_detector(model, work / "detector.onnx", meta=meta)
    e2e = export_end_to_end(raw, work / "detector_e2e.onnx", meta=meta) if end_to_end else None
    parity = check_parity(model, raw, images, end_to_end_path=e2e, meta=meta)
    if not parity.ok:
        raise ExportError(
            "the ONNX detector's boxes do not match torch's: "
            f"{parity.numpy.matched}/{max(parity.numpy.reference, parity.numpy.other)} matched, "
            f"largest box difference {parity.numpy.max_box_diff:.3g} px"
            + (
                f"; end-to-end graph {parity.end_to_end.matched_fraction:.1%} matched"
                if parity.end_to_end is not None
                else ""
            )
        )
    latency = None
    if latency_runs > 0:
        latency = measure_detector_latency(
            raw,
            images=np.asarray(images, dtype=np.float32),
            threads=threads,
            warmup=warmup,
            runs=latency_runs,
            should_cancel=should_cancel,
        ).to_dict()
    return DetectorExport(
        raw_path=str(raw),
        end_to_end_path=str(e2e) if e2e is not None else None,
        meta=meta.to_dict(),
        parity=parity,
        latency=latency,
    )
