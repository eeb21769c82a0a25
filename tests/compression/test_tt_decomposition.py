"""tt_decomposition: TT-SVD with adaptive ranks, the DP contraction order, and what it leaves."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression.checkpoint import load_checkpoint, save_checkpoint
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.registry import config_from_dict, get_method
from compression.stage import ArchSpec, ModelState, StageContext
from compression.tensor_train import (
    TTLayer,
    balance_cores,
    balanced_factors,
    left_to_right_path,
    max_ranks,
    mode_pairs,
    plan_order,
    ranks_for_error,
    relative_error,
    tt_params,
    tt_svd,
    tt_to_matrix,
)
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=16).subset(train=128, val=64, test=64, seed=0)


class OneByOneNet(nn.Module):
    """A stem, two 1x1 convs (one strided), a depthwise conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 64, 1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.project = nn.Conv2d(64, 48, 1, stride=2, bias=False)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        x = self.project(x).mean(dim=(2, 3))
        out: torch.Tensor = self.head(x)
        return out


def _ctx(module: nn.Module, data: DatasetBundle, work: Path, arch: ArchSpec | None = None) -> Any:
    state = ModelState(
        input_shape=data.input_shape, num_classes=data.num_classes, module=module, arch=arch
    )
    return StageContext(
        model=state,
        data=data,
        device=CPU,
        work_dir=work,
        seed=0,
        report=lambda *_: None,
        check_cancel=lambda: None,
    )


def _run(module: nn.Module, data: DatasetBundle, work: Path, **config: Any) -> Any:
    spec = get_method("tt_decomposition")
    cfg = config_from_dict(spec.config_cls, {"finetune_epochs": 0, **config})
    return spec.run(_ctx(module, data, work), cfg)


def _random_tt(out_modes: tuple[int, ...], in_modes: tuple[int, ...], ranks: list[int]) -> Any:
    rng = np.random.default_rng(1)
    full = [1, *ranks, 1]
    return [
        rng.standard_normal((full[k], o, i, full[k + 1]))
        for k, (o, i) in enumerate(zip(out_modes, in_modes, strict=True))
    ]


# --- modes and TT-SVD -------------------------------------------------------------------------


def test_balanced_factors_and_primes() -> None:
    assert balanced_factors(96, 2) == (8, 12)
    assert balanced_factors(1280, 3) == (8, 10, 16)
    assert math.prod(balanced_factors(960, 4)) == 960
    # a prime count takes modes of size 1 instead of padding
    assert balanced_factors(7, 3) == (1, 1, 7)
    assert mode_pairs(7, 13, 2) == ((7, 1), (1, 13))  # two primes: a rank-r matrix product
    assert mode_pairs(2, 2, 3) is None  # a core mapping one channel to one is refused
    out_modes, in_modes = mode_pairs(10, 1280, 2) or ((), ())
    assert math.prod(out_modes) == 10 and math.prod(in_modes) == 1280


def test_ranks_for_error_recovers_the_true_tt_ranks_and_matches_tensorly() -> None:
    out_modes, in_modes, true = (4, 4, 6), (2, 3, 4), [3, 5]
    w = tt_to_matrix(_random_tt(out_modes, in_modes, true))
    ranks, err = ranks_for_error(w, out_modes, in_modes, 1e-4)
    assert ranks == true
    assert err < 1e-4
    noisy = w + 0.3 * np.linalg.norm(w) / math.sqrt(w.size) * np.random.default_rng(
        2
    ).standard_normal(w.shape)
    for budget in (0.2, 0.5, 0.8):
        ranks, err = ranks_for_error(noisy, out_modes, in_modes, budget)
        assert err <= budget
        cores = tt_svd(noisy, out_modes, in_modes, ranks)
        # the error the sweep predicts is what tensorly's TT-SVD gives at those ranks
        assert relative_error(noisy, cores) == pytest.approx(err, abs=1e-4)
    # a looser budget never needs more parameters
    sizes = [
        tt_params(out_modes, in_modes, ranks_for_error(noisy, out_modes, in_modes, b)[0])
        for b in (0.1, 0.4, 0.8)
    ]
    assert sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError):
        tt_svd(w, out_modes, in_modes, [max_ranks(out_modes, in_modes)[0] + 1, 1])


def test_balance_cores_keeps_the_product_and_evens_the_norms() -> None:
    w = np.random.default_rng(3).standard_normal((48, 64)).astype(np.float32)
    cores = tt_svd(w, (6, 8), (8, 8), [20])
    norms = [float(np.linalg.norm(c)) for c in cores]
    assert max(norms) / min(norms) > 3  # TT-SVD puts the scale into the last core
    balanced = balance_cores(cores)
    new = [float(np.linalg.norm(c)) for c in balanced]
    assert new == pytest.approx([math.sqrt(norms[0] * norms[1])] * 2, rel=1e-5)
    assert np.allclose(tt_to_matrix(balanced), tt_to_matrix(cores), atol=1e-5)
    assert all(b.dtype == np.float32 for b in balanced)


# --- the layer and its order ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_tt_layer_computes_the_dense_product_in_every_order(kind: str) -> None:
    out_modes, in_modes = (6, 4, 4), (2, 3, 4)
    cores = _random_tt(out_modes, in_modes, [4, 5])
    dense = torch.from_numpy(tt_to_matrix(cores)).float()
    bias = torch.randn(96)
    plan = plan_order(kind, out_modes, in_modes, [4, 5], spatial=36)  # type: ignore[arg-type]
    for path in (plan.dp_path, plan.greedy_path, left_to_right_path(3)):
        layer = TTLayer.from_cores(kind, cores, path, bias=bias, stride=2 if kind == "conv" else 1)  # type: ignore[arg-type]
        if kind == "conv":
            x = torch.randn(3, 24, 12, 12)
            ref = nn.functional.conv2d(x, dense.reshape(96, 24, 1, 1), bias, stride=2)
        else:
            x = torch.randn(3, 5, 24)
            ref = x @ dense.T + bias
        assert torch.allclose(layer(x), ref, atol=1e-3, rtol=1e-4)
    assert torch.allclose(layer.dense_weight(), dense, atol=1e-4)


def test_plan_order_costs() -> None:
    plan = plan_order("conv", (8, 8), (16, 24), [53], spatial=4)
    assert plan.dense_flops == 2 * 64 * 384 * 4
    assert plan.dp_flops <= plan.greedy_flops
    # at batch 1 and 4 pixels, contracting x into the cores beats building the dense weight
    assert plan.dp_flops < plan.greedy_flops


def _set_low_tt_rank(conv: nn.Conv2d, rank: int = 3) -> None:
    """A weight of TT rank 3 plus 5% noise: what a compressible trained layer looks like."""
    pairs = mode_pairs(conv.out_channels, conv.in_channels, 2)
    assert pairs is not None
    (o1, o2), (i1, i2) = pairs
    g = torch.Generator().manual_seed(3)
    w = sum(
        torch.kron(torch.randn(o1, i1, generator=g), torch.randn(o2, i2, generator=g))
        for _ in range(rank)
    )
    assert isinstance(w, torch.Tensor)
    w = w + 0.05 * w.std() * torch.randn(w.shape, generator=g)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape) * 0.1)


# --- the method -------------------------------------------------------------------------------


def test_method_decomposes_lists_skips_and_reports(digits: DatasetBundle, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = OneByOneNet()
    _set_low_tt_rank(model.expand)
    _set_low_tt_rank(model.project)
    x = torch.randn(2, 1, 16, 16)
    before = model(x).detach()
    res = _run(
        model,
        digits,
        tmp_path,
        max_error=0.3,
        modes=2,
        include_classifier=True,
        min_params=0,
        dense_fallback=False,
    )
    rows = {r["name"]: r for r in res.extras["tensor_train"]["layers"]}
    changes = {r.name: asdict(r) for r in res.layers}
    assert isinstance(model.expand, TTLayer) and isinstance(model.project, TTLayer)
    assert isinstance(model.dw, nn.Conv2d)  # never touched: not a channel matrix
    for name in ("expand", "project"):
        d = rows[name]
        assert d["action"] == "tt"
        assert d["rel_error"] <= 0.3 + 1e-6
        assert math.prod(d["out_modes"]) * math.prod(d["in_modes"]) == 64 * (
            16 if name == "expand" else 48
        )
        assert d["flops_dp"] <= d["flops_greedy"]
        assert d["flops_dense"] > 0
        assert changes[name]["params_after"] < changes[name]["params_before"]
        assert d["params_after"] == changes[name]["params_after"]
    assert rows["project"]["input_hw"] == 64  # 16x16 -> stride 2 -> 8x8
    assert res.metrics["tt_layers"] >= 2
    after = model(x).detach()
    rel = float((after - before).norm() / before.norm())
    assert rel < 0.6  # approximations within budget, not a different network


def test_dense_fallback_recontracts_and_says_so(digits: DatasetBundle, tmp_path: Path) -> None:
    model = OneByOneNet()
    res = _run(model, digits, tmp_path, rank=8, modes=2, layers="expand", min_params=0)
    row = res.extras["tensor_train"]["layers"][0]
    # 16 -> 64 at 16x16 pixels with rank 8: every order costs more than the dense conv
    assert row["action"] == "recontracted"
    assert "no contraction order beats the dense layer" in row["reason"]
    assert row["flops_dp"] >= row["flops_dense"]
    assert type(model.expand) is nn.Conv2d


def test_bad_input_gives_errors_or_listed_skips(digits: DatasetBundle, tmp_path: Path) -> None:
    spec = get_method("tt_decomposition")
    with pytest.raises(ConfigError) as exc:
        config_from_dict(spec.config_cls, {"rank": 0})
    assert exc.value.field == "config.rank"
    with pytest.raises(ConfigError, match="one core"):
        config_from_dict(spec.config_cls, {"modes": 1})
    with pytest.raises(ConfigError, match="no layer named 'nope'"):
        _run(OneByOneNet(), digits, tmp_path, layers="nope")
    model = OneByOneNet()
    res = _run(
        model,
        digits,
        tmp_path,
        layers="dw,stem,expand,project",
        rank=4,
        modes=2,
        min_params=0,
        dense_fallback=False,
    )
    rows = {r["name"]: r for r in res.extras["tensor_train"]["layers"]}
    assert rows["dw"]["action"] == "skipped" and "depthwise" in rows["dw"]["reason"]
    assert rows["stem"]["action"] == "skipped" and "3x3" in rows["stem"]["reason"]
    assert rows["expand"]["action"] == "tt" and rows["project"]["action"] == "tt"
    # a rank above what the modes allow is a listed skip, and the job goes on
    res = _run(
        OneByOneNet(),
        digits,
        tmp_path,
        layers="expand,project",
        rank=40,
        modes=2,
        min_params=0,
        dense_fallback=False,
    )
    rows = {r["name"]: r for r in res.extras["tensor_train"]["layers"]}
    assert (
        rows["expand"]["action"] == "skipped"
        and "larger than this layer allows" in rows["expand"]["reason"]
    )
    # project allows rank 40 but would store more than its dense weight: a listed skip too
    assert rows["project"]["action"] == "skipped" and "would hold" in rows["project"]["reason"]


def test_check_model_refuses_onnx_and_unknown_names() -> None:
    spec = get_method("tt_decomposition")
    cfg = config_from_dict(spec.config_cls, {"layers": "fc9"})
    assert spec.check_model is not None
    with pytest.raises(ConfigError, match="ONNX"):
        spec.check_model(ModelFacts(format="onnx"), config_from_dict(spec.config_cls, {}))
    facts = ModelFacts.from_state(
        ModelState(input_shape=(1, 32, 32), num_classes=10, module=create_model("lenet5"))
    )
    with pytest.raises(ConfigError, match="fc9"):
        spec.check_model(facts, cfg)


def test_accuracy_criterion_measures_on_val(digits: DatasetBundle, tmp_path: Path) -> None:
    model = OneByOneNet()
    res = _run(
        model,
        digits,
        tmp_path,
        rank_criterion="accuracy",
        max_accuracy_drop=100.0,
        layers="expand",
        search_images=32,
        min_params=0,
        dense_fallback=False,
    )
    d = res.extras["tensor_train"]["layers"][0]
    # any accuracy is within a 100-point budget, so bisection climbs to the loosest budget
    assert d["action"] == "tt" and d["error_budget"] == pytest.approx(0.95)
    assert res.metrics["accuracy_measurements"] >= 3


# --- what it leaves: ONNX without Einsum, int8, checkpoints ------------------------------------


def test_export_has_no_einsum_and_ptq_int8_runs(digits: DatasetBundle, tmp_path: Path) -> None:
    model = OneByOneNet()
    _run(
        model,
        digits,
        tmp_path,
        rank=4,
        modes=3,
        min_params=0,
        dense_fallback=False,
        include_classifier=True,
    )
    assert isinstance(model.expand, TTLayer)
    path = tmp_path / "tt.onnx"
    export_onnx(model, (1, 16, 16), path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Einsum" not in ops and "MatMul" in ops
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert np.allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
    ptq = get_method("ptq_int8")
    res = ptq.run(
        _ctx(model, digits, tmp_path / "q"),
        config_from_dict(ptq.config_cls, {"calibration_samples": 16}),
    )
    assert res.model.onnx_path is not None
    q_ops = {n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node}
    assert "QuantizeLinear" in q_ops and "Einsum" not in q_ops
    out = ort.InferenceSession(str(res.model.onnx_path)).run(None, {"input": x})[0]
    assert out.shape == (2, 10)


def test_checkpoint_rebuilds_tt_layers(tmp_path: Path) -> None:
    data = load_digits(size=32).subset(train=64, val=32, test=32, seed=0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1)
    arch = ArchSpec("mobilenet_v2", 10, 1)
    spec = get_method("tt_decomposition")
    cfg = config_from_dict(
        spec.config_cls,
        {
            "finetune_epochs": 0,
            "layers": "features.18.0,features.17.conv.2",
            "rank": 8,
            "dense_fallback": False,
        },
    )
    res = spec.run(_ctx(model, data, tmp_path, arch), cfg)
    module = res.model.module
    original = module.get_submodule("features.18.0")
    assert isinstance(original, TTLayer)
    stem = tmp_path / "ckpt" / "stage"
    stem.parent.mkdir()
    save_checkpoint(res.model, stem)
    loaded = load_checkpoint(stem.with_suffix(".safetensors"))
    assert loaded.module is not None
    rebuilt = loaded.module.get_submodule("features.18.0")
    assert isinstance(rebuilt, TTLayer) and rebuilt.ranks == original.ranks
    x = torch.randn(2, 1, 32, 32)
    module.eval()
    loaded.module.eval()
    assert torch.allclose(module(x), loaded.module(x), atol=1e-5)


def test_thesis001_recipe_fits_mobilenet_v2() -> None:
    import yaml

    from compression.recipe import check_recipe_for_model, parse_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = parse_recipe(
        yaml.safe_load((root / "recipes/thesis001_mobilenet_tt.yaml").read_text())
    )
    assert [s.method for s in recipe.stages] == ["finetune", "tt_decomposition", "ptq_int8"]
    facts = ModelFacts.from_state(
        ModelState(
            input_shape=(1, 32, 32),
            num_classes=10,
            module=create_model("mobilenet_v2", num_classes=10, in_channels=1),
            arch=ArchSpec("mobilenet_v2", 10, 1),
        )
    )
    check_recipe_for_model(recipe, facts)


def test_a_crashed_run_resumes_from_the_tt_checkpoint(tmp_path: Path) -> None:
    """The TT stage's checkpoint rebuilds its layers; the resumed run quantizes that model."""
    from compression.pipeline import run_recipe
    from compression.recipe import parse_recipe

    data = load_digits(size=32).subset(train=64, val=32, test=32, seed=0)
    recipe = parse_recipe(
        {
            "name": "tt-resume",
            "seed": 0,
            "eval": {"latency_runs": 0},
            "stages": [
                {
                    "method": "tt_decomposition",
                    "config": {
                        "rank": 8,
                        "modes": 2,
                        "finetune_epochs": 0,
                        "dense_fallback": False,
                    },
                },
                {"method": "ptq_int8", "config": {"calibration_samples": 8}},
            ],
        }
    )
    torch.manual_seed(0)
    model = ModelState(
        input_shape=data.input_shape,
        num_classes=10,
        module=create_model("lenet5", num_classes=10, in_channels=1),
        arch=ArchSpec("lenet5", 10, 1),
    )
    out = tmp_path / "run"

    def crash(_f: float, _m: str, metrics: dict[str, Any]) -> None:
        if (metrics.get("event"), metrics.get("stage")) == ("stage_start", 1):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(recipe, model, data, out, progress=crash)
    stage0 = load_checkpoint(next((out / "checkpoints").glob("stage_00_*.safetensors")))
    assert stage0.module is not None
    assert any(isinstance(m, TTLayer) for m in stage0.module.modules())
    report = run_recipe(recipe, model, data, out)
    assert report.resumed_from_stage == 1
    assert report.final_format == "onnx"
    # the int8 model agrees with the resumed TT stage's fp32 accuracy within a few points
    assert abs(report.final.accuracy - report.stages[0].metrics.accuracy) <= 10.0
