"""Detector post-processing (numpy, shared with the agent) and the detector's ONNX export."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

from compression import detect_post as dp
from compression import detection_export as de

ROOT = Path(__file__).resolve().parents[2]


class TinyYolo(nn.Module):
    """A two-level detector following the YOLO contract (strides 32 and 16 at 64 px)."""

    task = "detection"
    family = "yolo"

    def __init__(self, num_classes: int = 3, input_size: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = input_size
        self.strides = (32, 16)
        self.anchors = (((40.0, 30.0), (24.0, 50.0)), ((10.0, 12.0), (16.0, 8.0)))
        self.class_names = tuple(f"c{i}" for i in range(num_classes))
        c = 5 + num_classes
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1), nn.ReLU()]
        self.stem = nn.Sequential(*layers)  # stride 16
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())  # stride 32
        self.head32 = nn.Conv2d(8, 2 * c, 1)
        self.head16 = nn.Conv2d(8, 2 * c, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f16 = self.stem(x)
        return [self.head32(self.down(f16)), self.head16(f16)]


def _yolo_meta(**kw) -> dp.DetectorMeta:
    values = {
        "family": "yolo",
        "num_classes": 1,
        "input_size": 16,
        "anchors": (((4.0, 6.0),),),
        "strides": (8,),
    }
    values.update(kw)
    return dp.DetectorMeta(**values)


def _random_boxes(n: int, rng: np.random.Generator, size: float = 100.0) -> np.ndarray:
    xy = rng.random((n, 2)) * size
    wh = rng.random((n, 2)) * 30 + 1
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# --- decoding -------------------------------------------------------------------------------


def test_decode_yolo_matches_a_hand_computation():
    meta = _yolo_meta()
    out = np.zeros((1, 6, 2, 2), dtype=np.float32)  # 1 anchor x (5 + 1 class), 2x2 grid
    # cell (row 1, column 0): tx = ty = 0, tw = log 2, th = 0, obj = 0, class = log 3
    out[0, 2, 1, 0] = math.log(2.0)
    out[0, 5, 1, 0] = math.log(3.0)
    boxes, scores = dp.decode_yolo([out], meta)
    assert boxes.shape == (1, 4, 1 * 4) and scores.shape == (1, 4, 1)
    # x = (0.5 + 0) * 8 = 4, y = (0.5 + 1) * 8 = 12, w = 4 * 2 = 8, h = 6
    np.testing.assert_allclose(boxes[0, 2], [0.0, 9.0, 8.0, 15.0], atol=1e-5)
    assert scores[0, 2, 0] == pytest.approx(0.5 * 0.75, abs=1e-6)
    # cell (0, 1): x = 12, y = 4, w = 4, h = 6, score 0.25
    np.testing.assert_allclose(boxes[0, 1], [10.0, 1.0, 14.0, 7.0], atol=1e-5)
    assert scores[0, 1, 0] == pytest.approx(0.25, abs=1e-6)


def test_decode_ssd_matches_torchvision_boxcoder_and_softmax():
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(0)
    priors = _random_boxes(50, rng)
    rel = rng.normal(size=(2, 50, 4)).astype(np.float32) * 3  # some dw, dh above the clamp
    logits = rng.normal(size=(2, 50, 5)).astype(np.float32)
    boxes, scores = dp.decode_ssd(rel, logits, priors, weights=(10, 10, 5, 5))
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    for b in range(2):
        expected = coder.decode_single(torch.from_numpy(rel[b]), torch.from_numpy(priors))
        np.testing.assert_allclose(boxes[b], expected.numpy(), rtol=1e-5, atol=1e-3)
    softmax = torch.softmax(torch.from_numpy(logits), -1)[..., 1:].numpy()
    np.testing.assert_allclose(scores, softmax, atol=1e-6)


def test_ssd_selection_equals_torchvision_ssd_postprocess_detections():
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.ssd import SSD

    torch.manual_seed(0)
    centre, wh = torch.rand(400, 2) * 64, torch.rand(400, 2) * 30 + 4
    priors = torch.cat([centre - wh / 2, centre + wh / 2], 1)
    rel, logits = torch.randn(2, 400, 4), torch.randn(2, 400, 4) * 2
    meta = dp.DetectorMeta(
        family="ssd",
        num_classes=3,
        input_size=64,
        priors=tuple(tuple(p) for p in priors.tolist()),
        score_threshold=0.3,
        iou_threshold=0.5,
        max_detections=50,
        pre_nms_top_k=40,
    )
    ssd = SSD.__new__(SSD)  # postprocess_detections reads only these attributes
    ssd.__dict__.update(
        box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
        score_thresh=0.3,
        topk_candidates=40,
        nms_thresh=0.5,
        detections_per_img=50,
    )
    expected = SSD.postprocess_detections(
        ssd, {"bbox_regression": rel, "cls_logits": logits}, [priors, priors], [(64, 64)] * 2
    )
    got = dp.postprocess([rel.numpy(), logits.numpy()], meta)
    for want, have in zip(expected, got, strict=True):
        assert len(want["scores"]) == len(have) == 50
        np.testing.assert_allclose(have.boxes, want["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(have.scores, want["scores"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(have.class_ids, want["labels"].numpy() - 1)


# --- NMS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_keeps_the_same_indices_as_torchvision(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(300, rng)
    scores = rng.random(300).astype(np.float32)
    for iou in (0.3, 0.5, 0.7):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
        np.testing.assert_array_equal(dp.nms(boxes, scores, iou), want.numpy())
        np.testing.assert_array_equal(dp.nms(boxes, scores, iou, max_keep=7), want.numpy()[:7])


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_keeps_the_same_indices_as_torchvision(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(300, rng) - 20  # negative coordinates too
    scores = rng.random(300).astype(np.float32)
    ids = rng.integers(0, 4, 300)
    want = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(ids), 0.5
    )
    np.testing.assert_array_equal(dp.batched_nms(boxes, scores, ids, 0.5), want.numpy())
    assert dp.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).shape == (0,)


def test_postprocess_thresholds_caps_and_names_classes():
    rng = np.random.default_rng(3)
    meta = _yolo_meta(num_classes=2, class_names=("cat", "dog"), max_detections=3)
    out = rng.normal(size=(2, 7, 2, 2)).astype(np.float32) * 3
    dets = dp.postprocess([out], meta)
    assert len(dets) == 2
    for d in dets:
        assert len(d) <= 3 and d.boxes.dtype == np.float32 and d.class_ids.dtype == np.int64
        assert (d.scores > 0.25).all() and (np.diff(d.scores) <= 0).all()
        assert (d.boxes >= 0).all() and (d.boxes <= 16).all()  # clipped to the input
        assert d.class_names == [("cat", "dog")[i] for i in d.class_ids]
    none = dp.postprocess([out], dataclasses.replace(meta, score_threshold=1.0))
    assert [len(d) for d in none] == [0, 0]


# --- metadata and recognising outputs -------------------------------------------------------


def test_meta_round_trips_through_json():
    meta = _yolo_meta(num_classes=2, class_names=("a", "b"), score_threshold=0.001)
    again = dp.DetectorMeta.from_json(meta.to_json())
    assert again == meta
    ssd = dp.DetectorMeta(
        family="ssd", num_classes=1, input_size=32, priors=((0.0, 0.0, 8.0, 8.0),)
    )
    assert dp.DetectorMeta.from_json(ssd.to_json()) == ssd


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"family": "retinanet"}, "family 'retinanet'"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"score_threshold": 1.5}, "score_threshold must be a number in [0, 1]"),
        ({"strides": (8, 16)}, "1 anchor levels for 2 strides"),
        ({"strides": (5,)}, "not a multiple of level 0's stride 5"),
        ({"anchors": (((4.0, -1.0),),)}, "is not a positive (w, h) pair"),
        ({"class_names": ("a", "b")}, "2 class names for 1 classes"),
        ({"anchors": None}, "needs anchors and strides"),
    ],
)
def test_meta_refuses_bad_fields_with_a_sentence(change, words):
    with pytest.raises(dp.DetectionError, match=None) as info:
        _yolo_meta(**change)
    assert words in str(info.value)


def test_meta_json_refusals():
    good = _yolo_meta().to_dict()
    for text, words in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"family": "yolo"}', "lacks 'num_classes'"),
        ('{"version": 9, "family": "yolo"}', "version 9 is not supported"),
    ]:
        with pytest.raises(dp.DetectionError, match=words):
            dp.DetectorMeta.from_json(text)
    with pytest.raises(dp.DetectionError, match="unknown detection metadata fields: colour"):
        dp.DetectorMeta.from_dict({**good, "colour": "red"})


def test_recognise_outputs_accepts_the_layout_and_names_both_shapes_when_not():
    meta = dp.DetectorMeta(
        family="yolo",
        num_classes=3,
        input_size=64,
        anchors=(((40.0, 30.0), (24.0, 50.0)), ((10.0, 12.0), (16.0, 8.0))),
        strides=(32, 16),
    )
    dp.recognise_outputs([["batch", 16, 2, 2], [1, 16, 4, 4]], meta, input_shape=[1, 3, 64, 64])
    with pytest.raises(dp.DetectionError) as info:
        dp.recognise_outputs([[1, 16, 2, 2], [1, 18, 4, 4]], meta)
    assert "output 1 has shape (1, 18, 4, 4)" in str(info.value)
    assert "expects (N, 16, 4, 4)" in str(info.value)
    with pytest.raises(dp.DetectionError, match=r"expects 2 outputs .* has 1: \(N, 10\)"):
        dp.recognise_outputs([["N", 10]], meta)
    with pytest.raises(dp.DetectionError, match=r"input has shape \(N, 3, 32, 32\)"):
        dp.recognise_outputs([[1, 16, 2, 2], [1, 16, 4, 4]], meta, input_shape=["N", 3, 32, 32])


# --- export, end-to-end graph and parity ----------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyYolo()
    folder = tmp_path_factory.mktemp("det")
    raw = de.export_detector(model, folder / "raw.onnx")
    return model, raw, folder


def test_export_stores_the_metadata_and_raw_outputs(exported):
    model, raw, _ = exported
    meta = de.read_detector_meta(raw)
    assert meta == de.meta_from_model(model)
    assert meta is not None and meta.class_names == ("c0", "c1", "c2")
    proto = onnx.load(str(raw))
    assert [o.name for o in proto.graph.output] == ["level0", "level1"]


@pytest.mark.parametrize("threshold", [0.25, 0.001])
def test_parity_torch_against_ort_numpy_and_end_to_end(exported, threshold):
    model, raw, folder = exported
    meta = dataclasses.replace(de.meta_from_model(model), score_threshold=threshold)
    e2e = de.export_end_to_end(raw, folder / f"e2e_{threshold}.onnx", meta=meta)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    report = de.check_parity(model, raw, images, end_to_end_path=e2e, meta=meta)
    assert report.raw_max_abs_diff < 1e-4
    assert report.numpy.reference > 10  # boxes to compare
    for agreement in (report.numpy, report.end_to_end):
        assert agreement is not None
        assert agreement.matched_fraction == 1.0 and agreement.max_box_diff < 1e-3
    assert report.ok


def test_the_zoo_yolov3_tiny_exports_with_parity(tmp_path):
    from compression.zoo import create_model

    torch.manual_seed(0)
    model = create_model("yolov3_tiny", num_classes=4, width=0.125, input_size=64)
    raw = de.export_detector(model, tmp_path / "tiny.onnx")
    # every box above 0.001, no cap reached: an untrained head's scores sit within float noise
    # of each other, and a binding cap would cut between near-ties
    meta = dataclasses.replace(
        de.meta_from_model(model), score_threshold=0.001, max_detections=1000
    )
    e2e = de.export_end_to_end(raw, tmp_path / "tiny_e2e.onnx", meta=meta)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    report = de.check_parity(model, raw, images, end_to_end_path=e2e, meta=meta)
    assert report.numpy.reference > 50
    assert report.numpy.matched_fraction == 1.0 and report.numpy.max_box_diff < 1e-3
    assert report.end_to_end is not None and report.end_to_end.matched_fraction == 1.0


def test_end_to_end_graph_returns_the_numpy_boxes_capped_per_image(exported):
    import onnxruntime as ort

    model, raw, folder = exported
    meta = dataclasses.replace(de.meta_from_model(model), score_threshold=0.01, max_detections=4)
    e2e = de.export_end_to_end(raw, folder / "e2e_cap.onnx", meta=meta)
    assert de.read_detector_meta(e2e) == meta
    images = np.random.default_rng(2).random((3, 3, 64, 64)).astype(np.float32)
    raw_out = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"]).run(
        None, {"input": images}
    )
    want = dp.postprocess(raw_out, meta)
    session = ort.InferenceSession(str(e2e), providers=["CPUExecutionProvider"])
    got = de.end_to_end_detections(session.run(list(de.E2E_OUTPUTS), {"input": images}), 3)
    for w, g in zip(want, got, strict=True):
        assert len(w) == len(g) == 4
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-4)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)
        np.testing.assert_array_equal(g.class_ids, w.class_ids)


def test_export_refuses_a_model_whose_outputs_do_not_fit_its_metadata(tmp_path):
    model = TinyYolo()
    wrong = dataclasses.replace(de.meta_from_model(model), num_classes=4, class_names=None)
    with pytest.raises(de.ExportError, match="does not fit its metadata"):
        de.export_detector(model, tmp_path / "x.onnx", meta=wrong)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(dp.DetectionError, match="family None"):
        de.meta_from_model(nn.Conv2d(3, 3, 1))


# --- the agent's copy -----------------------------------------------------------------------


def test_the_agent_module_imports_and_runs_without_torch():
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnx', 'compression'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from edgeslim_agent import detect_post as dp\n"
        "meta = dp.DetectorMeta(family='yolo', num_classes=1, input_size=16,\n"
        "    anchors=(((4.0, 6.0),),), strides=(8,))\n"
        "out = np.zeros((1, 6, 2, 2), dtype=np.float32); out[0, 5] = 3.0\n"
        "print(len(dp.postprocess([out], meta)[0]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
    import compression.detect_post
    import edgeslim_agent.detect_post

    assert compression.detect_post is edgeslim_agent.detect_post


# --- inspection of uploaded ONNX detectors --------------------------------------------------


@pytest.fixture(scope="module")
def probed(exported):
    from compression.model_io import probe_onnx

    return probe_onnx(exported[1])  # the memory-capped ONNX Runtime run an upload gets


def test_an_onnx_detector_is_inspected_as_a_detector(exported, probed):
    from compression.inspection import inspect_onnx
    from compression.model_io import _onnx_detector_state

    _, raw, _ = exported
    state = _onnx_detector_state(raw, probed, None, None)
    assert state is not None
    assert (state.task, state.num_classes, state.input_shape) == ("detection", 3, (3, 64, 64))
    info = inspect_onnx(raw)
    assert info.num_classes == 3
    assert info.extra["detection"]["family"] == "yolo"
    assert info.extra["detection"]["outputs"] == ["level0", "level1"]


def test_inspection_refuses_a_detector_whose_outputs_the_post_processing_does_not_know(
    exported, probed, tmp_path
):
    from compression.errors import InvalidModelError
    from compression.inspection import inspect_onnx
    from compression.model_io import _onnx_detector_state, load_model_file

    model, raw, _ = exported
    # metadata claiming a fourth class: the heads are 16 channels, the post-processing wants 18
    lying = tmp_path / "lying.onnx"
    lying.write_bytes(raw.read_bytes())
    de.write_detector_meta(
        lying, dataclasses.replace(de.meta_from_model(model), num_classes=4, class_names=None)
    )
    with pytest.raises(InvalidModelError) as info:
        load_model_file(lying)  # the whole upload path
    message = str(info.value)
    assert "lying.onnx is refused: its outputs are not what the detector's post-processing" in (
        message
    )
    assert "output 0 has shape (1, 16, 2, 2)" in message and "expects (N, 18, 2, 2)" in message
    # the same graph without metadata: several head maps are no classifier's output
    bare = onnx.load(str(raw))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(InvalidModelError, match=r"outputs \(1, 16, 2, 2\), \(1, 16, 4, 4\), not a"):
        _onnx_detector_state(tmp_path / "bare.onnx", probed, None, None)
    # malformed metadata
    broken = onnx.load(str(raw))
    broken.metadata_props[0].value = '{"family": "yolo"'
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(
        InvalidModelError, match=r"broken\.onnx: the detection metadata is not valid"
    ):
        _onnx_detector_state(tmp_path / "broken.onnx", probed, None, None)
    with pytest.raises(
        InvalidModelError, match=r"detection metadata is refused: .* not valid JSON"
    ):
        inspect_onnx(tmp_path / "broken.onnx")
    # a number of classes other than the metadata's
    with pytest.raises(InvalidModelError, match="is a detector of 3 classes, not 5"):
        _onnx_detector_state(raw, probed, None, 5)


# --- latency with and without post-processing -----------------------------------------------


def test_export_and_check_writes_both_graphs_checks_parity_and_times_both_ways(tmp_path):
    torch.manual_seed(0)
    model = TinyYolo()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    done = de.export_and_check(model, tmp_path, images, latency_runs=2, warmup=0)
    assert Path(done.raw_path).is_file() and Path(done.end_to_end_path or "").is_file()
    assert done.parity.ok and done.meta["family"] == "yolo"
    assert done.latency is not None and done.latency["isolated"] is True
    assert done.latency["end_to_end_p50_ms"] >= done.latency["network_p50_ms"] > 0


def test_detector_latency_times_the_network_and_the_post_processing(exported):
    """In process here; export_and_check above times in the isolated child."""
    from compression.latency import LatencyError, measure_detector_latency

    isolated = False

    model, raw, folder = exported
    images = np.random.default_rng(4).random((2, 3, 64, 64)).astype(np.float32)
    result = measure_detector_latency(raw, images=images, runs=4, warmup=1, isolated=isolated)
    assert result.isolated is isolated and result.batch_size == 2 and result.runs == 4
    assert result.network_p50_ms > 0 and result.postprocess_p50_ms > 0
    assert result.end_to_end_p50_ms >= result.network_p50_ms
    assert result.end_to_end_fps <= result.network_fps
    # the same images' detections, counted by the post-processing itself
    meta = de.read_detector_meta(raw)
    assert meta is not None
    with torch.no_grad():
        outputs = [o.numpy() for o in model(torch.from_numpy(images))]
    expected = sum(len(d) for d in dp.postprocess(outputs, meta)) / 2
    assert result.detections_per_image == pytest.approx(expected)
    bare = onnx.load(str(raw))
    del bare.metadata_props[:]
    onnx.save(bare, str(folder / "bare_latency.onnx"))
    with pytest.raises(LatencyError, match="carries no detection metadata"):
        measure_detector_latency(folder / "bare_latency.onnx", runs=1, isolated=False)
