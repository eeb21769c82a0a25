"""Seed 003's distillation losses: inter-class consistency, channel correlation, attention.

Each loss is zero when the student's outputs equal the teacher's, positive otherwise, passes a
gradient back to the student (and to the adapter where there is one), and a layer name the
model does not have is refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError, StageScopeError
from compression.methods.distillation import (
    _adapter,
    attention_loss,
    attention_map,
    channel_correlation,
    channel_correlation_loss,
    class_consistency_loss,
    class_correlation,
)
from compression.model_facts import ModelFacts
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.stage import ArchSpec, ModelState, StageContext, StageResult
from compression.zoo import create_model

CPU = torch.device("cpu")


class TinyConvNet(nn.Module):
    """Two conv blocks and a linear head; ``width`` sets the channel counts."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(2 * width * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block2(self.block1(x))))


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=384, val=128, seed=0)


def _ctx(student: nn.Module, data: DatasetBundle, tmp: Path, teacher: nn.Module) -> StageContext:
    calls: list[Any] = []
    ctx = StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=10, module=student),
        data=data,
        device=CPU,
        work_dir=tmp,
        seed=0,
        report=lambda frac, msg, metrics: calls.append(msg),
        check_cancel=lambda: calls.append("step"),
        load_model=lambda ref: ModelState(
            input_shape=data.input_shape, num_classes=10, module=teacher
        ),
    )
    ctx.calls = calls  # type: ignore[attr-defined]
    return ctx


def _run(ctx: StageContext, **overrides: Any) -> StageResult:
    spec = registry.get_method("distillation")
    result = spec.run(ctx, registry.config_from_dict(spec.config_cls, overrides))
    assert isinstance(result, StageResult)
    return result


# --- the losses one by one --------------------------------------------------------------------


def test_class_consistency_is_zero_for_equal_logits_and_positive_for_other_structure() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(32, 10) * 3
    same = teacher.clone().requires_grad_(True)
    loss = class_consistency_loss(same, teacher, 4.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-10)
    student = torch.randn(32, 10, requires_grad=True)
    loss = class_consistency_loss(student, teacher, 4.0)
    assert float(loss) > 1e-3
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    # It sees the batch's class structure, not each row: shuffling the batch changes nothing.
    perm = torch.randperm(32)
    assert float(class_consistency_loss(student[perm], teacher[perm], 4.0)) == pytest.approx(
        float(loss), rel=1e-5
    )
    r = class_correlation(torch.softmax(teacher, dim=1))
    assert r.shape == (10, 10)
    assert torch.allclose(torch.diagonal(r), torch.ones(10), atol=1e-5)


def test_class_consistency_differs_from_soft_targets() -> None:
    # Two classes that the teacher always confuses together: a student that gets each row's
    # top class right but never confuses them has a different class-correlation matrix.
    torch.manual_seed(0)
    base = torch.randn(64, 10)
    teacher = base.clone()
    teacher[:, 4] = teacher[:, 9] = base[:, 4]
    assert float(class_consistency_loss(base, teacher, 2.0)) > 0.01


def test_channel_correlation_is_zero_for_equal_maps_and_scale_free() -> None:
    torch.manual_seed(0)
    f = torch.randn(4, 8, 6, 6)
    assert float(channel_correlation_loss(f.clone(), f)) == pytest.approx(0.0, abs=1e-10)
    assert float(channel_correlation_loss(f * 5.0, f)) == pytest.approx(0.0, abs=1e-10)
    g = channel_correlation(f)
    assert g.shape == (4, 8, 8)
    assert torch.allclose(torch.diagonal(g, dim1=1, dim2=2), torch.ones(4, 8), atol=1e-5)
    # Different resolutions give the same size of matrix (space is summed out).
    assert channel_correlation(torch.randn(4, 8, 3, 3)).shape == (4, 8, 8)


def test_channel_correlation_gradient_reaches_the_student_and_the_adapter() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 16, 5, 5)
    student = torch.randn(4, 6, 7, 7, requires_grad=True)
    adapter = _adapter(6, 16)
    loss = channel_correlation_loss(adapter(student), teacher)
    assert float(loss) > 1e-3
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert adapter.weight.grad is not None and float(adapter.weight.grad.abs().sum()) > 0


def test_the_adapter_starts_as_the_identity_for_equal_channel_counts() -> None:
    f = torch.randn(2, 8, 4, 4)
    assert torch.allclose(_adapter(8, 8)(f), f)
    assert float(channel_correlation_loss(_adapter(8, 8)(f), f)) == pytest.approx(0.0, abs=1e-10)


def test_attention_is_zero_for_equal_maps_across_channels_and_sizes() -> None:
    torch.manual_seed(0)
    f = torch.randn(4, 16, 8, 8)
    assert float(attention_loss(f.clone(), f)) == pytest.approx(0.0, abs=1e-10)
    # Channel count and scale do not matter: the map is a normalised channel mean of squares.
    assert float(attention_loss(torch.cat([f, f], dim=1) * 3.0, f)) == pytest.approx(0.0, abs=1e-10)
    # A map at twice the resolution whose 2x2 cells are constant shrinks to the same map.
    up = f.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert float(attention_loss(up, f)) == pytest.approx(0.0, abs=1e-10)
    # A smaller student map is interpolated up to the teacher's 8x8.
    assert attention_map(torch.randn(4, 6, 5, 5), (8, 8)).shape == (4, 64)


def test_attention_loss_is_positive_for_other_maps_and_has_a_gradient() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 16, 8, 8)
    student = torch.randn(4, 6, 10, 10, requires_grad=True)
    loss = attention_loss(student, teacher)
    assert float(loss) > 1e-5
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


# --- config and layer names -------------------------------------------------------------------


def _facts(arch: str) -> ModelFacts:
    module = create_model(arch, num_classes=10, in_channels=1)
    return ModelFacts.from_state(
        ModelState(
            input_shape=(1, 32, 32), num_classes=10, module=module, arch=ArchSpec(arch, 10, 1)
        )
    )


def test_a_student_layer_the_model_does_not_have_is_refused_with_candidates() -> None:
    recipe = parse_recipe(
        {
            "stages": [
                {
                    "method": "distillation",
                    "config": {"attention_weight": 1000.0, "student_layers": "layer3,layer9"},
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as refused:
        check_recipe_for_model(recipe, _facts("resnet20"))
    assert refused.value.field == "stages[0].config.student_layers"
    assert "resnet20 has no layer 'layer9'" in refused.value.message
    assert "layer3.2.conv2" in refused.value.message and "layer1, " in refused.value.message
    ok = parse_recipe(
        {"stages": [{"method": "distillation", "config": {"student_layers": "layer2, layer3.0"}}]}
    )
    check_recipe_for_model(ok, _facts("resnet20"))  # blocks and layers both pass


def test_feature_map_losses_on_a_model_without_convolutions_are_refused() -> None:
    recipe = parse_recipe(
        {"stages": [{"method": "distillation", "config": {"channel_correlation_weight": 1.0}}]}
    )
    with pytest.raises(ConfigError) as refused:
        check_recipe_for_model(recipe, _facts("lenet300_100"))
    assert refused.value.field == "stages[0].config.channel_correlation_weight"
    assert "no convolution layers" in refused.value.message
    check_recipe_for_model(recipe, _facts("lenet5"))


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"student_layers": "a,b", "teacher_layers": "c"}, "config.teacher_layers"),
        ({"teacher_layers": "c"}, "config.student_layers"),
        ({"student_layers": "a,,b"}, "config.student_layers"),
        ({"class_consistency_weight": -1.0}, "config.class_consistency_weight"),
    ],
)
def test_bad_layer_lists_are_refused_by_the_config(config: dict[str, Any], field: str) -> None:
    spec = registry.get_method("distillation")
    with pytest.raises(ConfigError) as refused:
        registry.config_from_dict(spec.config_cls, config)
    assert refused.value.field == field


def test_a_teacher_layer_it_does_not_have_is_refused_before_the_first_step(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    ctx = _ctx(TinyConvNet(4), digits, tmp_path, TinyConvNet(8))
    with pytest.raises(ConfigError) as refused:
        _run(
            ctx,
            teacher="t",
            attention_weight=1000.0,
            student_layers="block2",
            teacher_layers="block3",
            epochs=1,
        )
    assert refused.value.field == "config.teacher_layers"
    assert "the teacher has no layer 'block3'" in refused.value.message
    assert "block1, block1.0, block1.1, block2" in refused.value.message
    assert ctx.calls == []  # type: ignore[attr-defined]


def test_a_layer_without_a_feature_map_is_refused_before_the_first_step(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    ctx = _ctx(TinyConvNet(4), digits, tmp_path, TinyConvNet(8))
    with pytest.raises(ConfigError, match=r"'fc' outputs shape \(1, 10\)"):
        _run(ctx, teacher="t", channel_correlation_weight=1.0, student_layers="fc", epochs=1)
    assert ctx.calls == []  # type: ignore[attr-defined]


# --- a tiny run with every loss on ------------------------------------------------------------


def _digits_teacher(data: DatasetBundle) -> nn.Module:
    from compression.training import train

    torch.manual_seed(0)
    teacher = TinyConvNet(8)
    ctx = _ctx(teacher, data, Path("/nonexistent"), teacher)
    train(teacher, data, ctx, epochs=4, lr=0.05, batch_size=16)
    return teacher.eval()


def test_a_tiny_distillation_with_every_loss_on_trains_a_narrower_student(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    teacher = _digits_teacher(digits)
    before = [p.clone() for p in teacher.parameters()]
    torch.manual_seed(1)
    student = TinyConvNet(4)  # 4 / 8 channels against the teacher's 8 / 16: adapters needed
    ctx = _ctx(student, digits, tmp_path, teacher)
    result = _run(
        ctx,
        teacher="t",
        class_consistency_weight=1.0,
        channel_correlation_weight=1.0,
        attention_weight=1000.0,
        feature_weight=0.1,
        student_layers="block1,block2",
        epochs=3,
        lr=0.05,
        batch_size=16,
    )
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert result.metrics["val_acc"] > 60.0  # chance is 10 %; Hinton alone reaches about 83 %
    # The adapters were training-only: the student keeps its shape, the teacher its weights.
    assert result.model.module is student
    assert set(dict(student.named_parameters())) == set(dict(TinyConvNet(4).named_parameters()))
    for p, q in zip(teacher.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_default_feature_layers_are_the_last_convolutions(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    teacher = TinyConvNet(8).eval()
    ctx = _ctx(TinyConvNet(4), digits, tmp_path, teacher)
    result = _run(ctx, teacher="t", channel_correlation_weight=1.0, epochs=1, batch_size=64)
    assert len(result.history) == 1
    # The job's log says which maps were compared (the classifier is never one of them).
    assert ctx.calls[0] == (  # type: ignore[attr-defined]
        "distillation: feature maps compared, student -> teacher: "
        "block2.0 (8x16x16) -> block2.0 (16x16x16)"
    )


def test_no_convolution_for_the_default_layers_is_a_clear_error(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    student = create_model("lenet300_100", num_classes=10, in_channels=1)
    ctx = _ctx(student, digits, tmp_path, TinyConvNet(8))
    with pytest.raises(StageScopeError, match="the student has no convolution"):
        _run(ctx, teacher="t", attention_weight=1000.0, epochs=1)
