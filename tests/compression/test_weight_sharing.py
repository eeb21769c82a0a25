"""weight_sharing: k-means over non-zero weights, zeros kept, centroids trained together."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError, StageScopeError
from compression.methods.weight_sharing import cluster_layer, distinct_nonzero, init_centroids
from compression.model_facts import LayerFact, ModelFacts
from compression.stage import ModelState, StageContext, StageResult
from compression.training import evaluate, train
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=384, val=192, seed=0)


def make_ctx(module: nn.Module | None, data: DatasetBundle, work_dir: Path) -> StageContext:
    return StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=10, module=module),
        data=data,
        device=CPU,
        work_dir=work_dir,
        seed=0,
        report=lambda *_: None,
        check_cancel=lambda: None,
    )


def run(ctx: StageContext, **overrides: Any) -> StageResult:
    spec = registry.get_method("weight_sharing")
    result = spec.run(ctx, registry.config_from_dict(spec.config_cls, overrides))
    assert isinstance(result, StageResult)
    return result


@pytest.fixture(scope="module")
def pruned_lenet(digits: DatasetBundle) -> nn.Module:
    """LeNet-5 trained a little, then half of every layer's weights set to exactly zero."""
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    train(model, digits, make_ctx(model, digits, Path("/nonexistent")), epochs=3, lr=0.05,
          batch_size=16)  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                w.mul_(w.abs() > w.abs().flatten().median())
    return model


def conv_linear(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_each_layer_has_at_most_2_to_the_bits_shared_values_and_zeros_stay_zero(
    digits: DatasetBundle, pruned_lenet: nn.Module, tmp_path: Path
) -> None:
    model = copy.deepcopy(pruned_lenet)
    zeros_before = {n: (m.weight == 0).clone() for n, m in conv_linear(model)}
    result = run(make_ctx(model, digits, tmp_path), conv_bits=3, fc_bits=2, finetune_epochs=1)
    out = result.model.module
    assert out is not None
    for name, m in conv_linear(out):
        bits = 3 if isinstance(m, nn.Conv2d) else 2
        assert 1 <= distinct_nonzero(m.weight) <= 2**bits, name
        # Exactly the pruned positions are zero: none revived, none newly zeroed.
        assert torch.equal(m.weight == 0, zeros_before[name]), name
        assert result.metrics[f"clusters.{name}"] == distinct_nonzero(m.weight)
        assert result.metrics[f"bits.{name}"] == bits
    assert len(result.history) == 1
    assert {c.name for c in result.layers} == set(zeros_before)


def test_centroid_finetuning_moves_the_shared_values_and_keeps_the_assignments(
    digits: DatasetBundle, pruned_lenet: nn.Module, tmp_path: Path
) -> None:
    frozen = copy.deepcopy(pruned_lenet)
    run(make_ctx(frozen, digits, tmp_path), fc_bits=3, conv_bits=3, finetune_epochs=0)
    tuned = copy.deepcopy(pruned_lenet)
    run(make_ctx(tuned, digits, tmp_path), fc_bits=3, conv_bits=3, finetune_epochs=2, lr=1e-3)
    moved = 0
    for (name, a), (_, b) in zip(conv_linear(frozen), conv_linear(tuned), strict=True):
        wa, wb = a.weight.detach().flatten(), b.weight.detach().flatten()
        nz = wa != 0
        moved += int((wa[nz] != wb[nz]).sum())
        # Same clustering before training: weights that shared a value still share one.
        ca, ia = torch.unique(wa[nz], return_inverse=True)
        cb, ib = torch.unique(wb[nz], return_inverse=True)
        pairs = set(zip(ia.tolist(), ib.tolist(), strict=True))
        assert len(pairs) == ca.numel() == cb.numel(), name
    assert moved > 0


def test_sharing_costs_little_accuracy_at_the_papers_bits(
    digits: DatasetBundle, pruned_lenet: nn.Module, tmp_path: Path
) -> None:
    model = copy.deepcopy(pruned_lenet)
    before = evaluate(model, digits.val_loader())
    run(make_ctx(model, digits, tmp_path), finetune_epochs=1)  # conv 8 bits, fc 5 bits
    after = evaluate(model, digits.val_loader())
    assert after >= before - 3.0


def test_kmeans_keeps_zeros_out_and_uses_every_centroid() -> None:
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    w[w.abs() < 0.5] = 0.0
    mask, assign, centroids = cluster_layer(w, 3, "linear", seed=0, max_iter=50)
    assert torch.equal(mask, w != 0)
    assert assign.numel() == int(mask.sum())
    assert centroids.numel() == 8
    assert bool((centroids != 0).all())
    assert torch.unique(assign).numel() == centroids.numel()
    # Each weight goes to its nearest centroid.
    values = w[mask]
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    assert torch.equal(nearest, assign)


def test_a_layer_with_few_distinct_values_keeps_them_exactly() -> None:
    w = torch.tensor([[0.0, 0.25, -0.5], [0.25, 0.0, 0.75]])
    _, assign, centroids = cluster_layer(w, 5, "linear", seed=0, max_iter=10)
    assert centroids.tolist() == [-0.5, 0.25, 0.75]
    assert centroids[assign].tolist() == [0.25, -0.5, 0.25, 0.75]


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_initialisations_span_the_weights(init: str) -> None:
    values = np.sort(np.random.default_rng(0).normal(size=1000))
    c = init_centroids(values, 16, init, seed=0)
    assert 1 < c.size <= 16
    assert values.min() <= c.min() and c.max() <= values.max()
    if init == "linear":
        assert c[0] == values.min() and c[-1] == values.max()
        assert np.allclose(np.diff(c), np.diff(c)[0])


def test_an_onnx_model_is_refused(digits: DatasetBundle, tmp_path: Path) -> None:
    ctx = make_ctx(None, digits, tmp_path)
    ctx.model.onnx_path = tmp_path / "m.onnx"
    with pytest.raises(StageScopeError, match="torch"):
        run(ctx)


def test_a_model_without_conv_or_linear_layers_is_refused_before_it_runs() -> None:
    spec = registry.get_method("weight_sharing")
    assert spec.check_model is not None
    cfg = registry.config_from_dict(spec.config_cls, {})
    facts = ModelFacts(format="torch", layers=(LayerFact("bn", "batchnorm"),))
    with pytest.raises(ConfigError, match="has none"):
        spec.check_model(facts, cfg)
    spec.check_model(ModelFacts(format="torch", layers=(LayerFact("fc", "linear"),)), cfg)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"fc_bits": 0}, "config.fc_bits"),
        ({"conv_bits": 9}, "config.conv_bits"),
        ({"init": "kmeans++"}, "config.init"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], field: str) -> None:
    spec = registry.get_method("weight_sharing")
    with pytest.raises(ConfigError) as info:
        registry.config_from_dict(spec.config_cls, data)
    assert info.value.field == field
