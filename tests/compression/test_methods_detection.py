"""Existing methods on a tiny YOLOv3-tiny: channel pruning protects the heads on both sides,
magnitude pruning keeps them dense, int8 PTQ calibrates on detection images, and every other
method refuses a detector naming itself and the task."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression.darknet import DarknetDetector
from compression.detect_post import postprocess
from compression.detection_data import DetectionBundle, DetectionReport, DetectionSample
from compression.detection_export import (
    compare_detections,
    export_detector,
    meta_from_model,
    read_detector_meta,
)
from compression.errors import ConfigError, StageScopeError
from compression.macs import count_macs
from compression.methods.channel_pruning import layer_pruner
from compression.methods.ptq_int8 import detection_calibration_arrays
from compression.model_facts import ModelFacts
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.registry import config_from_dict, get_method, list_methods
from compression.stage import ModelState, StageContext, StageResult
from compression.zoo import create_model

SIZE = 64
CLASSES = 3
DETECTION_METHODS = {
    "channel_pruning",
    "magnitude_pruning",
    "ptq_int8",
    "fuse_operators",
    "finetune",
    "distillation",
}


def tiny_yolo(seed: int = 0) -> DarknetDetector:
    torch.manual_seed(seed)
    model = create_model("yolov3_tiny", num_classes=CLASSES, width=0.25, input_size=SIZE)
    assert isinstance(model, DarknetDetector)
    # Larger head weights than the training prior, so the raw outputs depend on the image.
    for conv in model.head_convs():
        nn.init.normal_(conv.weight, std=0.1)
    return model.eval()


def with_batchnorm_statistics(model: nn.Module, bundle: DetectionBundle) -> nn.Module:
    """BatchNorm statistics measured on the bundle's images, so the features (and raw outputs)
    of an untrained network vary with the image as a trained one's do instead of fading out."""
    x = torch.from_numpy(np.concatenate(detection_calibration_arrays(bundle, 6, size=SIZE)))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def photo_bundle(n: int = 8) -> DetectionBundle:
    """Crops of scikit-learn's two photographs with one box each (calibration needs images)."""
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        photo = photos[i % 2]
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        crop = np.ascontiguousarray(photo[y : y + h, x : x + w])
        box = np.array([[5, 5, w - 5, h - 5]], np.float32)
        samples.append(DetectionSample(f"{i}.jpg", crop, box, np.array([i % CLASSES])))
    classes = [f"c{k}" for k in range(CLASSES)]
    report = DetectionReport(name="photos", format="builtin", classes=classes)
    return DetectionBundle(
        "photos", "builtin", classes, samples[:6], samples[6:], samples[6:], report
    )


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str, dict[str, Any]]] = []

    def __call__(self, frac: float, message: str, metrics: dict[str, Any]) -> None:
        self.calls.append((frac, message, metrics))


def detector_ctx(model: nn.Module | None, tmp: Path, data: Any = None) -> StageContext:
    state = ModelState(
        input_shape=(3, SIZE, SIZE), num_classes=CLASSES, task="detection", module=model
    )
    return StageContext(
        model=state,
        data=cast(Any, data if data is not None else photo_bundle()),
        device=torch.device("cpu"),
        work_dir=tmp,
        seed=0,
        report=Calls(),
        check_cancel=lambda: None,
    )


def run(name: str, ctx: StageContext, **config: Any) -> StageResult:
    spec = get_method(name)
    return cast(StageResult, spec.run(ctx, config_from_dict(spec.config_cls, config)))


def test_detection_support_is_declared_and_listed() -> None:
    offered = {m.name for m in list_methods(task="detection")}
    assert offered == DETECTION_METHODS
    assert {m.name for m in list_methods(task="classification")} == {m.name for m in list_methods()}


def test_a_method_without_detection_refuses_a_detector_naming_itself_and_the_task(
    tmp_path: Path,
) -> None:
    ctx = detector_ctx(tiny_yolo(), tmp_path)
    for spec in list_methods():
        if spec.name in DETECTION_METHODS:
            continue
        with pytest.raises(StageScopeError) as exc:
            spec.run(ctx, spec.config_cls())
        assert f"{spec.name} supports classification" in str(exc.value)
        assert "the model is a detection model" in str(exc.value)
    # the recipe check says the same before anything is queued
    facts = ModelFacts(format="torch", task="detection", arch="yolov3_tiny")
    recipe = parse_recipe(
        {"stages": [{"method": "channel_pruning"}, {"method": "tucker_decomposition"}]}
    )
    with pytest.raises(
        StageScopeError, match=r"stages\[1\] \(tucker_decomposition\): tucker_decomposition"
    ):
        check_recipe_for_model(recipe, facts)


def test_torch_pruning_ignored_layers_alone_would_prune_a_head_input() -> None:
    """The Torch-Pruning #341 behaviour this method guards against, so the test below can fail."""
    import torch_pruning as tp

    model = tiny_yolo()
    heads = model.head_convs()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, SIZE, SIZE))
    touched = {
        d.target.module
        for g in dg.get_all_groups(ignored_layers=heads, root_module_types=[nn.Conv2d])
        for d, _ in g
        if dg.is_in_channel_pruning_fn(d.handler)
    }
    assert any(h in touched for h in heads)


def test_channel_pruning_keeps_yolo_heads_and_the_concat_consistent(tmp_path: Path) -> None:
    model = tiny_yolo()
    heads = model.head_convs()
    before = [(h.in_channels, h.out_channels, h.weight.detach().clone()) for h in heads]
    macs_before = count_macs(model, (3, SIZE, SIZE))
    ctx = detector_ctx(model, tmp_path)
    result = run(
        "channel_pruning",
        ctx,
        importance="bn_scale",
        ratio=0.5,
        round_to=1,
        sparsity_epochs=0,
        finetune_epochs=5,
    )
    pruned = result.model.module
    assert isinstance(pruned, DarknetDetector)
    # Protected on both sides: each head conv is the same tensor, A * (5 + C) outputs from the
    # same input channels (no channel of the feature map feeding it was removed).
    after_heads = pruned.head_convs()
    for (c_in, c_out, w), h in zip(before, after_heads, strict=True):
        assert (h.in_channels, h.out_channels) == (c_in, c_out) == (c_in, 3 * (5 + CLASSES))
        assert torch.equal(h.weight, w)
    # The route (concat of the upsampled branch and the earlier level) and everything else
    # pruned consistently: the network runs and gives both levels at their grid sizes.
    outs = pruned(torch.randn(2, 3, SIZE, SIZE))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 2, 2), (2, 24, 4, 4)]
    assert result.metrics["macs_after"] < 0.6 * macs_before
    assert result.metrics["mac_reduction"] == pytest.approx(
        macs_before / count_macs(pruned, (3, SIZE, SIZE))
    )
    assert not result.history  # no sparsity epochs, and the fine-tuning is a later stage's
    assert any(
        "fine-tuning after the cut is skipped" in c[1] for c in cast(Calls, ctx.report).calls
    )
    # the pruned detector exports and ONNX Runtime gives the same raw outputs
    path = export_detector(pruned, tmp_path / "pruned.onnx")
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = [o.numpy() for o in pruned(torch.from_numpy(x))]
    for g, w2 in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w2, atol=1e-4)


def test_per_layer_ratios_cannot_name_a_head() -> None:
    model = tiny_yolo()
    names = layer_pruner(model, torch.randn(1, 3, SIZE, SIZE), num_classes=CLASSES).layer_names()
    heads = set(model.head_convs())
    head_names = {n for n, m in model.named_modules() if m in heads}
    assert len(head_names) == 2
    assert names and not (set(names) & head_names)


def test_channel_pruning_refuses_what_needs_classification_data_on_a_detector(
    tmp_path: Path,
) -> None:
    facts = ModelFacts(format="torch", task="detection", arch="yolov3_tiny")
    for stage, field in (
        ({"importance": "dynamic"}, "importance"),
        ({"recovery_distillation": 0.5}, "recovery_distillation"),
    ):
        recipe = parse_recipe({"stages": [{"method": "channel_pruning", "config": stage}]})
        with pytest.raises(ConfigError) as exc:
            check_recipe_for_model(recipe, facts)
        assert exc.value.field == f"stages[0].config.{field}"
        assert "yolov3_tiny is a detection model" in exc.value.message
    ssd = ModelFacts(format="torch", task="detection", arch="ssdlite_mobilenetv2")
    with pytest.raises(ConfigError, match="only YOLO heads"):
        check_recipe_for_model(parse_recipe({"stages": [{"method": "channel_pruning"}]}), ssd)
    with pytest.raises(StageScopeError, match="importance dynamic"):
        run("channel_pruning", detector_ctx(tiny_yolo(), tmp_path), importance="dynamic")


def test_magnitude_pruning_on_a_detector_is_one_shot_and_keeps_heads_dense(tmp_path: Path) -> None:
    model = tiny_yolo()
    heads = [h.weight.detach().clone() for h in model.head_convs()]
    result = run("magnitude_pruning", detector_ctx(model, tmp_path), sparsity=0.6, steps=4)
    pruned = result.model.module
    assert isinstance(pruned, DarknetDetector)
    assert result.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    for w, h in zip(heads, pruned.head_convs(), strict=True):
        assert torch.equal(h.weight, w)
    assert not result.history
    assert [tuple(o.shape) for o in pruned(torch.randn(1, 3, SIZE, SIZE))] == [
        (1, 24, 2, 2),
        (1, 24, 4, 4),
    ]
    facts = ModelFacts(format="torch", task="detection", arch="yolov3_tiny")
    recipe = parse_recipe({"stages": [{"method": "magnitude_pruning", "config": {"distill": 0.5}}]})
    with pytest.raises(ConfigError, match="detection model"):
        check_recipe_for_model(recipe, facts)


def test_calibration_arrays_are_letterboxed_training_images() -> None:
    bundle = photo_bundle()
    arrays = detection_calibration_arrays(bundle, 100, size=SIZE, seed=1)
    assert len(arrays) == len(bundle.train)
    assert all(a.shape == (1, 3, SIZE, SIZE) and a.dtype == np.float32 for a in arrays)
    assert all(a.min() >= 0.0 and a.max() <= 1.0 for a in arrays)
    assert (
        detection_calibration_arrays(bundle, 3, size=SIZE, seed=1)[0].tobytes()
        != (detection_calibration_arrays(bundle, 3, size=SIZE, seed=2)[0].tobytes())
        or len(bundle.train) < 2
    )


def test_ptq_int8_calibrates_on_detection_images_and_keeps_the_boxes(tmp_path: Path) -> None:
    bundle = photo_bundle()
    model = with_batchnorm_statistics(tiny_yolo(), bundle)
    result = run("ptq_int8", detector_ctx(model, tmp_path, bundle), calibration_samples=6)
    int8 = result.model.onnx_path
    assert int8 is not None and result.model.task == "detection"
    meta = read_detector_meta(int8)
    assert meta == meta_from_model(model)  # the post-processing reads the int8 file alike
    held_out = dataclasses.replace(bundle, train=bundle.val)
    images = np.concatenate(
        detection_calibration_arrays(bundle, 8, size=SIZE, seed=5)
        + detection_calibration_arrays(held_out, 2, size=SIZE, seed=0)
    )
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    q = session.run(None, {session.get_inputs()[0].name: images})
    with torch.no_grad():
        f = [o.numpy() for o in model(torch.from_numpy(images))]
    for qo, fo in zip(q, f, strict=True):
        assert qo.shape == fo.shape
        # the part of the raw outputs that depends on the image (each position's mean over
        # the images removed) follows fp32 closely
        qc, fc = qo - qo.mean(0), fo - fo.mean(0)
        assert fc.std() > 0.1
        assert np.corrcoef(qc.ravel(), fc.ravel())[0, 1] > 0.95
    low = dataclasses.replace(meta, score_threshold=0.05)
    agreement = compare_detections(postprocess(f, low), postprocess(q, low))
    assert agreement.reference > 100
    assert agreement.matched_fraction >= 0.75


def test_ptq_int8_refuses_a_detector_with_classification_data(tmp_path: Path) -> None:
    from compression.datasets import load_digits

    with pytest.raises(StageScopeError, match="detection data set"):
        run("ptq_int8", detector_ctx(tiny_yolo(), tmp_path, load_digits()))


def test_sparsity_training_refuses_a_detector_with_classification_data(tmp_path: Path) -> None:
    """channel_pruning's sparsity epochs on a detector need detection data: a classification
    set is refused naming the method, before anything is trained or cut."""
    from compression.datasets import load_digits

    model = tiny_yolo()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = detector_ctx(model, tmp_path, load_digits())
    with pytest.raises(StageScopeError, match="channel_pruning: a detection model trains on a"):
        run("channel_pruning", ctx, importance="bn_scale", ratio=0.3, sparsity_epochs=1)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained, nothing cut


def test_finetune_flip_option_reaches_the_detector_augmentation(tmp_path: Path) -> None:
    """``flip: false`` trains on unmirrored images only: two such runs from the same start are
    identical, and a run with flips (same seed, same start) ends elsewhere."""

    def weights_after(flip: bool, name: str) -> dict[str, torch.Tensor]:
        ctx = detector_ctx(tiny_yolo(), tmp_path / name)
        result = run("finetune", ctx, epochs=1, batch_size=2, lr=0.01, flip=flip)
        assert result.model.module is not None
        return {k: v.detach().clone() for k, v in result.model.module.state_dict().items()}

    plain, again, flipped = (
        weights_after(False, "a"),
        weights_after(False, "b"),
        weights_after(True, "c"),
    )
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert any(not torch.equal(plain[k], flipped[k]) for k in plain)


def test_channel_pruning_sparsity_trains_a_detector_with_l1_on_its_bn_scales(
    tmp_path: Path,
) -> None:
    """bn_scale with sparsity epochs on a YOLO: the detection loss trains (a history row per
    epoch, with val mAP) and the L1 push leaves the BN scales smaller than the same training
    without it, from the same start; the heads stay protected."""

    def sparsity_run(lam: float, name: str) -> tuple[StageResult, float]:
        model = tiny_yolo()
        ctx = detector_ctx(model, tmp_path / name)
        gammas: list[torch.Tensor] = []

        def keep_gammas(frac: float, message: str, metrics: dict[str, Any]) -> None:
            # the last report of the sparsity phase: read the scales before the cut
            if message.startswith("sparsity training: epoch 3/3"):
                gammas[:] = [
                    m.weight.detach().abs().sum()
                    for m in model.modules()
                    if isinstance(m, nn.BatchNorm2d)
                ]

        ctx = dataclasses.replace(ctx, report=keep_gammas)
        result = run(
            "channel_pruning",
            ctx,
            importance="bn_scale",
            ratio=0.3,
            round_to=1,
            sparsity_epochs=3,
            sparsity_lambda=lam,
            finetune_epochs=0,
            batch_size=2,
            lr=0.03,
            optimizer="adam",
            flip=False,
        )
        assert gammas, "the sparsity phase reported no epoch 3/3"
        return result, float(torch.stack(gammas).sum())

    pushed, l1_sum = sparsity_run(0.5, "l1")
    _, plain_sum = sparsity_run(0.0, "plain")
    assert [int(h["epoch"]) for h in pushed.history] == [1, 2, 3]
    assert all("val_map50" in h and "loss" in h for h in pushed.history)
    assert l1_sum < 0.9 * plain_sum  # measured 0.86; without the L1 hook the runs are identical
    pruned = pushed.model.module
    assert isinstance(pruned, DarknetDetector)
    assert [h.out_channels for h in pruned.head_convs()] == [3 * (5 + CLASSES)] * 2
