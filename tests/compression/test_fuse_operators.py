"""fuse_operators and compression.fusion: folding keeps the outputs, simplification never runs on
a quantized graph, and the stage reports pairs, node counts and latency."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError
from compression.fusion import (
    FusionError,
    fold_conv_bn,
    is_quantized,
    node_count,
    ort_optimize,
    simplify_onnx,
)
from compression.model_facts import ModelFacts
from compression.onnx_export import check_parity, export_onnx
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.stage import ModelState, StageContext
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=64, val=32, test=32, seed=0)


def _ctx(module: nn.Module | None, data: DatasetBundle, work: Path, onnx_path: Path | None = None):  # type: ignore[no-untyped-def]
    state = ModelState(
        input_shape=data.input_shape, num_classes=10, module=module, onnx_path=onnx_path
    )
    return StageContext(
        model=state,
        data=data,
        device=CPU,
        work_dir=work,
        seed=0,
        report=lambda *a: None,
        check_cancel=lambda: None,
    )


def _run(ctx: StageContext, **kw: object):  # type: ignore[no-untyped-def]
    spec = registry.get_method("fuse_operators")
    return spec.run(ctx, registry.config_from_dict(spec.config_cls, kw))


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics, so that folding has something to get wrong."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize(
    ("arch", "pairs"), [("vgg11_bn", 8), ("resnet20", 21), ("mobilenet_v2", 52)]
)
def test_conv_bn_folding_finds_every_pair_and_keeps_the_outputs(arch: str, pairs: int) -> None:
    model = create_model(arch, num_classes=10, in_channels=1).eval()
    _randomise_bn(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
    folded = copy.deepcopy(model)
    done = fold_conv_bn(folded)
    assert len(done) == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), before, atol=1e-4, rtol=1e-4)


def test_folding_refuses_a_model_in_training_mode() -> None:
    with pytest.raises(FusionError):
        fold_conv_bn(create_model("resnet20", num_classes=10, in_channels=1).train())


def test_export_with_fuse_folds_and_simplifies_and_matches_torch(tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1).eval()
    _randomise_bn(model)
    plain = export_onnx(model, (1, 32, 32), tmp_path / "plain.onnx")
    fused = export_onnx(model, (1, 32, 32), tmp_path / "fused.onnx", fuse=True)
    assert node_count(fused) < node_count(plain)
    check_parity(model, fused, (1, 32, 32), atol=1e-4)


def test_simplification_refuses_a_quantized_graph(tmp_path: Path, digits: DatasetBundle) -> None:
    model = create_model("lenet5", num_classes=10, in_channels=1)
    ctx = _ctx(model, digits, tmp_path / "q")
    spec = registry.get_method("ptq_int8")
    q = spec.run(ctx, registry.config_from_dict(spec.config_cls, {"calibration_samples": 4}))
    int8 = q.model.onnx_path
    assert int8 is not None and is_quantized(int8)
    with pytest.raises(FusionError, match="never after"):
        simplify_onnx(int8, tmp_path / "bad.onnx")
    # The stage skips the pass on it, says so, and keeps the graph quantized.
    result = _run(_ctx(None, digits, tmp_path / "f", onnx_path=int8), latency_rounds=0)
    assert result.metrics["quantized_input"] == 1.0
    assert result.metrics["simplified"] == 0.0
    out = result.model.onnx_path
    assert out is not None and is_quantized(out)


def test_stage_reports_pairs_node_counts_and_latency(tmp_path: Path, digits: DatasetBundle) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    _randomise_bn(model)
    result = _run(
        _ctx(model, digits, tmp_path), ort_level="extended", latency_rounds=2, latency_runs=3
    )
    m = result.metrics
    assert m["fused_pairs"] == 21 and len(result.layers) == 21
    assert result.layers[0].kind == "conv+bn"
    assert m["nodes_simplified"] <= m["nodes_before"]
    assert m["nodes_after"] < m["nodes_simplified"]  # ORT's Conv+ReLU fusions, saved
    assert m["simplified"] == 1.0
    assert m["max_abs_diff"] < 1e-3
    assert m["p50_ms_before"] > 0 and m["p50_ms_after"] > 0
    assert m["latency_speedup"] == pytest.approx(m["p50_ms_before"] / m["p50_ms_after"])
    out = result.model.onnx_path
    assert result.model.format == "onnx" and out is not None
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "BatchNormalization" not in ops


def test_extended_level_saves_ort_contrib_fusions_basic_does_not(tmp_path: Path) -> None:
    model = create_model("vgg11_bn", num_classes=10, in_channels=1).eval()
    src = export_onnx(model, (1, 32, 32), tmp_path / "m.onnx")
    basic = ort_optimize(src, tmp_path / "basic.onnx", "basic")
    extended = ort_optimize(src, tmp_path / "extended.onnx", "extended")
    domains = {n.domain for n in onnx.load(str(extended)).graph.node}
    assert "com.microsoft" in domains  # FusedConv: ORT-only, see the module docstring
    assert {n.domain for n in onnx.load(str(basic)).graph.node} <= {"", "ai.onnx"}
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    outs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (src, extended)
    ]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)


def test_check_model_refuses_bn_folding_without_batchnorm() -> None:
    spec = registry.get_method("fuse_operators")
    facts = ModelFacts.from_module(
        create_model("lenet5", num_classes=10, in_channels=1), arch="lenet5"
    )
    recipe = parse_recipe({"name": "f", "stages": [{"method": "fuse_operators"}]})
    with pytest.raises(ConfigError) as info:
        check_recipe_for_model(recipe, facts)
    assert info.value.field == "stages[0].config.fold_batchnorm"
    assert "no BatchNorm" in info.value.message and "fold_batchnorm to false" in info.value.message
    # Only the graph passes: accepted.
    graph_only = parse_recipe(
        {"name": "f", "stages": [{"method": "fuse_operators", "config": {"fold_batchnorm": False}}]}
    )
    check_recipe_for_model(graph_only, facts)
    # A model with BatchNorm is fine.
    assert spec.check_model is not None
    cfg = registry.config_from_dict(spec.config_cls, {})
    spec.check_model(ModelFacts.from_module(create_model("resnet20")), cfg)
