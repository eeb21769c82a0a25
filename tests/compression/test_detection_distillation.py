"""Detection-aware distillation on a tiny YOLOv3-tiny (width 0.25, input 64): each loss term of
compression.detection_distill, the gradients, the level feature maps and their adapters, the
registered stage end to end, and its refusals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from compression.darknet import DarknetDetector
from compression.detection_data import DetectionBundle, DetectionReport, DetectionSample
from compression.detection_distill import (
    YoloLayout,
    binary_kl_with_logits,
    bounded_box_loss,
    class_kd,
    hint_loss,
    objectness_kd,
)
from compression.detection_train import make_batch, yolo_loss
from compression.errors import ConfigError, StageScopeError
from compression.methods.distillation import DistillationConfig, check_model, detector_layout
from compression.model_facts import ModelFacts
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.registry import config_from_dict, get_method, list_methods
from compression.stage import ArchSpec, ModelState, StageContext, StageResult
from compression.zoo import create_model

SIZE = 64
CLASSES = 3


def tiny_yolo(seed: int = 0, *, width: float = 0.25, size: int = SIZE, **kw: Any) -> nn.Module:
    torch.manual_seed(seed)
    arch = kw.pop("arch", "yolov3_tiny")
    model = create_model(arch, num_classes=CLASSES, width=width, input_size=size, **kw)
    # Larger head weights than the training prior, so the raw outputs depend on the image.
    for conv in cast(DarknetDetector, model).head_convs():
        nn.init.normal_(conv.weight, std=0.1)
    return model.eval()


def layout_of(model: nn.Module) -> YoloLayout:
    return detector_layout(model, model, "itself")


def bundle(n_train: int = 4) -> DetectionBundle:
    """Noise images with one to two bright squares each, class by colour."""
    rng = np.random.default_rng(0)
    colours = np.array([[250, 40, 40], [40, 250, 40], [40, 40, 250]], np.uint8)
    samples = []
    for i in range(n_train + 2):
        img = rng.integers(60, 120, (SIZE, SIZE, 3), dtype=np.uint8)
        boxes, labels = [], []
        for k in range(1 + i % 2):
            side = int(rng.integers(12, 28))
            x, y = int(rng.integers(0, SIZE - side)), int(rng.integers(0, SIZE - side))
            c = (i + k) % CLASSES
            img[y : y + side, x : x + side] = colours[c]
            boxes.append([x, y, x + side, y + side])
            labels.append(c)
        samples.append(
            DetectionSample(f"{i}.png", img, np.array(boxes, np.float32), np.array(labels))
        )
    classes = [f"c{k}" for k in range(CLASSES)]
    report = DetectionReport(name="squares", format="builtin", classes=classes)
    return DetectionBundle(
        "squares",
        "builtin",
        classes,
        samples[:n_train],
        samples[n_train:],
        samples[n_train:],
        report,
    )


def batch() -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    rng = np.random.default_rng(1)
    return make_batch(
        bundle().train, SIZE, rng, flip=False, scale_range=(1.0, 1.0), device=torch.device("cpu")
    )


def shifted(model: nn.Module, channel: int, by: float) -> nn.Module:
    """A copy whose head biases at ``channel`` of every anchor (0-3 box, 4 obj, 5.. classes)
    are shifted by ``by``."""
    other = copy.deepcopy(model)
    for conv in cast(DarknetDetector, other).head_convs():
        assert conv.bias is not None
        with torch.no_grad():
            conv.bias.view(-1, 5 + CLASSES)[:, channel] += by
    return other


# --- the loss terms --------------------------------------------------------------------------


def test_every_term_is_zero_for_a_student_equal_to_its_teacher() -> None:
    model = tiny_yolo()
    layout = layout_of(model)
    x, targets = batch()
    with torch.no_grad():
        s, t = model(x), copy.deepcopy(model)(x)
    assert float(objectness_kd(s, t, layout)) == pytest.approx(0.0, abs=1e-5)
    assert float(class_kd(s, t, layout, 4.0)) == pytest.approx(0.0, abs=1e-5)
    box, active, slots = bounded_box_loss(s, t, targets, layout, SIZE, margin=0.0)
    assert slots >= 4 and active == 0 and float(box) == 0.0
    f = torch.randn(2, 16, 4, 4)
    assert float(hint_loss(f, f.clone())) == 0.0
    # the binary KL is the cross-entropy to a soft target minus that target's entropy
    z_s, z_t = torch.tensor([0.3, -2.0]), torch.tensor([1.0, 0.5])
    p = torch.sigmoid(z_t)
    expected = p * torch.log(p / torch.sigmoid(z_s)) + (1 - p) * torch.log(
        (1 - p) / (1 - torch.sigmoid(z_s))
    )
    assert torch.allclose(binary_kl_with_logits(z_s, z_t), expected, atol=1e-6)


def test_each_term_is_positive_when_the_student_differs_where_it_looks() -> None:
    teacher = tiny_yolo()
    layout = layout_of(teacher)
    x, targets = batch()
    with torch.no_grad():
        t = teacher(x)
        obj_off = shifted(teacher, 4, 2.0)(x)
        cls_off = shifted(teacher, 5, 3.0)(x)
        wide = shifted(teacher, 2, 5.0)(x)  # boxes e^5 times too wide: far worse than the teacher
    assert float(objectness_kd(obj_off, t, layout)) > 0.1
    assert float(class_kd(obj_off, t, layout, 4.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(class_kd(cls_off, t, layout, 4.0)) > 0.01
    assert float(objectness_kd(cls_off, t, layout)) == pytest.approx(0.0, abs=1e-5)
    box, active, slots = bounded_box_loss(wide, t, targets, layout, SIZE)
    assert active == slots and float(box) > 1.0
    # ... and nothing where the student beats the teacher: swap the roles
    box, active, _ = bounded_box_loss(t, wide, targets, layout, SIZE)
    assert active == 0 and float(box) == 0.0
    assert float(hint_loss(torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))) == 1.0


def test_the_class_kd_is_weighted_by_the_teachers_objectness() -> None:
    """Background (teacher objectness near 0) does not count, however far the class logits."""
    teacher = tiny_yolo()
    layout = layout_of(teacher)
    x, _ = batch()
    with torch.no_grad():
        background = shifted(teacher, 4, -30.0)  # the teacher sees no object anywhere
        student = shifted(background, 5, 3.0)
        objects = shifted(teacher, 4, 30.0)  # ... or one everywhere
        t_bg, s_bg = background(x), student(x)
        t_obj, s_obj = objects(x), shifted(objects, 5, 3.0)(x)
    assert float(class_kd(s_bg, t_bg, layout, 2.0)) < 1e-6
    assert float(class_kd(s_obj, t_obj, layout, 2.0)) > 1.0


def test_the_bounded_box_loss_with_every_slot_counted_is_the_yolo_box_term() -> None:
    """With a margin no error difference beats, the bounded loss is the student's own YOLOv3
    box term, as detection training computes it; a very negative margin counts nothing."""
    teacher = tiny_yolo()
    student = tiny_yolo(seed=1)
    layout = layout_of(teacher)
    x, targets = batch()
    with torch.no_grad():
        s, t = student(x), teacher(x)
    _, parts = yolo_loss(s, targets, layout.anchors, layout.strides, CLASSES, SIZE)
    box, active, slots = bounded_box_loss(s, t, targets, layout, SIZE, margin=1e6)
    assert active == slots and float(box) == pytest.approx(parts["box"], rel=1e-5)
    box, active, _ = bounded_box_loss(s, t, targets, layout, SIZE, margin=-1e6)
    assert active == 0 and float(box) == 0.0
    _, some, _ = bounded_box_loss(s, t, targets, layout, SIZE, margin=0.0)
    assert 0 <= some <= slots


def test_gradients_reach_the_student_and_never_the_teacher() -> None:
    teacher, student = tiny_yolo(), tiny_yolo(seed=1).train()
    teacher.train()  # the teacher's outputs even carry a graph: the losses must not use it
    layout = layout_of(teacher)
    x, targets = batch()
    t_out, s_out = teacher(x), student(x)
    total = (
        objectness_kd(s_out, t_out, layout)
        + class_kd(s_out, t_out, layout, 4.0)
        + bounded_box_loss(s_out, t_out, targets, layout, SIZE, margin=1e6)[0]
    )
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert len(grads) == len(list(student.parameters()))
    assert sum(float(g.abs().sum()) for g in grads) > 0
    adapter = nn.Conv2d(8, 16, 1, bias=False)
    f_t = torch.randn(2, 16, 4, 4, requires_grad=True)
    hint_loss(torch.randn(2, 8, 4, 4), f_t, adapter).backward()
    assert f_t.grad is None and adapter.weight.grad is not None


# --- the stage -------------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str, dict[str, Any]]] = []

    def __call__(self, frac: float, message: str, metrics: dict[str, Any]) -> None:
        self.calls.append((frac, message, metrics))


def state(model: nn.Module, arch: str = "yolov3_tiny", classes: int = CLASSES) -> ModelState:
    return ModelState(
        input_shape=(3, SIZE, SIZE),
        num_classes=classes,
        task="detection",
        module=model,
        arch=ArchSpec(arch, classes, 3),
    )


def stage_ctx(student: nn.Module, tmp: Path, teachers: dict[str, ModelState]) -> StageContext:
    return StageContext(
        model=state(student),
        data=cast(Any, bundle()),
        device=torch.device("cpu"),
        work_dir=tmp,
        seed=0,
        report=Calls(),
        check_cancel=lambda: None,
        load_model=lambda ref: teachers[ref],
    )


def run_stage(ctx: StageContext, **config: Any) -> StageResult:
    spec = get_method("distillation")
    return cast(StageResult, spec.run(ctx, config_from_dict(spec.config_cls, config)))


def test_the_stage_distils_a_wider_teacher_through_adapters(tmp_path: Path) -> None:
    teacher = tiny_yolo(width=0.5)
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    student = tiny_yolo(seed=1)
    student_before = [p.detach().clone() for p in student.parameters()]
    ctx = stage_ctx(student, tmp_path, {"baseline": state(teacher)})
    result = run_stage(
        ctx,
        teacher="baseline",
        epochs=1,
        batch_size=4,
        lr=1e-3,
        optimizer="adam",
        det_hint_weight=1.0,
        attention_weight=10.0,
        channel_correlation_weight=1.0,
        det_levels="0,1",
    )
    out = result.model.module
    assert isinstance(out, DarknetDetector) and not out.training
    assert [tuple(o.shape) for o in out(torch.zeros(1, 3, SIZE, SIZE))] == [
        (1, 24, 2, 2),
        (1, 24, 4, 4),
    ]
    assert any(not torch.equal(a, b) for a, b in zip(student_before, out.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True))
    calls = cast(Calls, ctx.report).calls
    maps = next(m for _, m, _ in calls if "feature maps compared" in m)
    # width 0.25 reads 64 + 32 channels at level 0 ... the teacher twice that: adapters
    assert maps.count("through a 1x1 adapter") == 2
    row = result.history[-1]
    for key in ("loss", "gt", "obj_kd", "cls_kd", "box_bound", "hint", "attention"):
        assert key in row and np.isfinite(row[key])
    assert row["obj_kd"] > 0 and row["hint"] > 0
    assert result.metrics["distill_loss"] == row["loss"]
    assert calls[-1][0] == 1.0 and "epoch 1/1" in calls[-1][1]


def test_a_channel_pruned_student_keeps_its_head_inputs_so_needs_no_adapter(
    tmp_path: Path,
) -> None:
    """channel_pruning protects the heads' inputs, so the level maps keep the teacher's widths."""
    teacher = tiny_yolo()
    prune = get_method("channel_pruning")
    pctx = stage_ctx(copy.deepcopy(teacher), tmp_path, {})
    pruned = prune.run(pctx, config_from_dict(prune.config_cls, {"ratio": 0.5, "round_to": 1}))
    ctx = stage_ctx(cast(nn.Module, pruned.model.module), tmp_path, {"baseline": state(teacher)})
    result = run_stage(ctx, teacher="baseline", epochs=1, batch_size=4, det_hint_weight=1.0)
    calls = cast(Calls, ctx.report).calls
    maps = next(m for _, m, _ in calls if "feature maps compared" in m)
    assert "level 0 (stride 32)" in maps and "level 1 (stride 16)" in maps
    assert "adapter" not in maps
    assert result.history[-1]["hint"] > 0  # the pruned backbone computes other features


def test_without_a_teacher_reference_a_frozen_copy_of_the_stage_input_teaches(
    tmp_path: Path,
) -> None:
    student = tiny_yolo()
    ctx = stage_ctx(student, tmp_path, {})
    result = run_stage(ctx, epochs=1, batch_size=4, det_box_margin=100.0)
    assert result.model.module is student  # trained in place
    row = result.history[0]
    # every assigned slot counted (margin 100), each term measured against the frozen copy
    assert row["box_bound_active"] == 1.0 and row["box_bound"] > 0
    assert row["gt"] > row["gt_box"] > 0 and np.isfinite(row["obj_kd"] + row["cls_kd"])
    assert result.metrics["distill_box_bound"] == row["box_bound"]


# --- the registry and refusals ---------------------------------------------------------------


def test_distillation_is_offered_for_detectors_with_its_detection_weights() -> None:
    assert "distillation" in {m.name for m in list_methods(task="detection")}
    params = {p.name: p for p in get_method("distillation").params()}
    for name in ("det_objectness_weight", "det_class_weight", "det_box_bound_weight"):
        assert params[name].ge == 0.0 and params[name].help.startswith("detectors:")
    assert params["det_box_margin"].ge == -100.0 and params["det_levels"].type == "str"
    with pytest.raises(ConfigError, match="det_levels"):
        config_from_dict(DistillationConfig, {"det_levels": "0,x"})
    with pytest.raises(ConfigError, match="twice"):
        config_from_dict(DistillationConfig, {"det_levels": "1,1"})


def test_mismatched_teachers_are_refused_naming_both(tmp_path: Path) -> None:
    student = tiny_yolo()
    cases = {
        # other anchors: the same cfg at another input size scales them
        "big": (state(tiny_yolo(size=96)), r"anchors: teacher .* student"),
        # three levels against two
        "v3": (state(tiny_yolo(arch="yolov3"), arch="yolov3"), r"strides\): teacher \[32, 16, 8\]"),
        # another class count
        "two": (state(tiny_yolo(), classes=2), r"'two' \(yolov3_tiny\) has 2 classes"),
    }
    teachers = {k: v[0] for k, v in cases.items()}
    for ref, (_, pattern) in cases.items():
        with pytest.raises(StageScopeError, match=pattern) as exc:
            run_stage(stage_ctx(student, tmp_path, teachers), teacher=ref, epochs=1)
        assert repr(ref) in str(exc.value) and "student" in str(exc.value)
    layout_msg = r"teacher 'x' and the student 'yolov3-tiny'.*classes: teacher 2, student 3"
    two = create_model("yolov3_tiny", num_classes=2, width=0.25, input_size=SIZE)
    with pytest.raises(StageScopeError, match=layout_msg):
        detector_layout(student, two, "'x'")
    classifier = ModelState(
        input_shape=(3, SIZE, SIZE),
        num_classes=CLASSES,
        task="classification",
        module=nn.Conv2d(3, 3, 1),
    )
    with pytest.raises(StageScopeError, match="is a classification model but the student"):
        run_stage(stage_ctx(student, tmp_path, {"c": classifier}), teacher="c", epochs=1)


def test_classifier_only_terms_other_families_and_bad_levels_are_refused(tmp_path: Path) -> None:
    yolo = ModelFacts(format="torch", task="detection", arch="yolov3_tiny")
    for field in ("class_consistency_weight", "feature_weight"):
        recipe = parse_recipe({"stages": [{"method": "distillation", "config": {field: 1.0}}]})
        with pytest.raises(ConfigError) as exc:
            check_recipe_for_model(recipe, yolo)
        assert exc.value.field == f"stages[0].config.{field}"
        assert "yolov3_tiny is a detection model" in exc.value.message
    with pytest.raises(ConfigError, match="det_levels"):
        check_model(yolo, DistillationConfig(student_layers="layers.3"))
    ssd = ModelFacts(format="torch", task="detection", arch="ssdlite_mobilenetv2")
    with pytest.raises(ConfigError, match="another family than YOLO"):
        check_model(ssd, DistillationConfig())
    check_model(yolo, DistillationConfig(det_hint_weight=1.0, det_levels="1"))
    with pytest.raises(
        ConfigError, match=r"level 2, but the detector has 2 levels: 0 \(stride 32\)"
    ):
        run_stage(stage_ctx(tiny_yolo(), tmp_path, {}), det_hint_weight=1.0, det_levels="0,2")
    ctx = stage_ctx(tiny_yolo(), tmp_path, {})
    ctx.data = cast(Any, object())
    with pytest.raises(StageScopeError, match="distilled on a detection data set"):
        run_stage(ctx, epochs=1)
