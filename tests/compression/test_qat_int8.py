"""qat_int8: the simulation is ORT's int8 model, the learned ranges reach the QDQ file, and the
accuracy reported is the int8 ONNX model's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization.quant_utils import compute_scale_zp
from torch import nn
from torch.nn.utils import parametrize

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError, StageScopeError
from compression.evaluation import accuracy_onnx
from compression.fusion import find_conv_bn_pairs, fold_conv_bn
from compression.methods import qat_int8
from compression.model_facts import ModelFacts
from compression.onnx_export import export_onnx
from compression.pipeline import run_recipe
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.stage import ArchSpec, ModelState, StageContext
from compression.training import train
from compression.zoo import create_model

CPU = torch.device("cpu")


class SmallBNNet(nn.Module):
    """conv-BN-ReLU, max-pool, a residual add, global pooling and a linear head: every kind of
    point ORT quantizes in a CNN, small enough for seconds on two cores."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.relu(self.bn(self.conv(x)) + x)
        out: torch.Tensor = self.fc(torch.flatten(self.gap(x), 1))
        return out


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=16).subset(train=256, val=128, test=160, seed=0)


@pytest.fixture(scope="module")
def trained(digits: DatasetBundle) -> nn.Module:
    torch.manual_seed(0)
    model = SmallBNNet()
    train(
        model, digits, _ctx(model, digits, Path("/nonexistent")), epochs=3, lr=0.05, batch_size=16
    )
    return model.eval()


def _ctx(module: nn.Module | None, data: DatasetBundle, work: Path) -> StageContext:
    state = ModelState(input_shape=data.input_shape, num_classes=10, module=module)
    return StageContext(
        model=state,
        data=data,
        device=CPU,
        work_dir=work,
        seed=0,
        report=lambda *a: None,
        check_cancel=lambda: None,
    )


def _cfg(**kw: object) -> qat_int8.QatInt8Config:
    spec = registry.get_method("qat_int8")
    return registry.config_from_dict(spec.config_cls, kw)  # type: ignore[no-any-return]


# --- the quantizer's arithmetic is ORT's ---------------------------------------------------------


@pytest.mark.parametrize("lo,hi", [(-1.5, 3.0), (0.0, 6.0), (0.2, 0.9), (-4.0, -1.0), (0.0, 0.0)])
def test_activation_parameters_equal_ort_compute_scale_zp(lo: float, hi: float) -> None:
    zero, scale = compute_scale_zp(
        np.array(lo, np.float32), np.array(hi, np.float32), np.uint8(0), np.uint8(255)
    )
    s, z = qat_int8.act_qparams(lo, hi)
    assert (float(s), int(z)) == (float(scale), int(zero))


def test_weight_scales_equal_the_ones_ort_writes_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3)
    for reduce_range in (True, False):
        ours = qat_int8.weight_scales(conv.weight, reduce_range)
        qmax = 64 if reduce_range else 127
        expected = conv.weight.detach().abs().amax(dim=(1, 2, 3)).double().numpy() / qmax
        np.testing.assert_allclose(ours, expected.astype(np.float32), rtol=1e-6)


def test_module_of_node_reads_exported_scopes() -> None:
    resnet = create_model("resnet20", num_classes=10, in_channels=1)
    assert qat_int8.module_of_node(resnet, "/layer1/layer1.0/relu_1/Relu") == ("layer1.0.relu", 1)
    assert qat_int8.module_of_node(resnet, "/layer2/layer2.0/shortcut/shortcut.0/Conv") == (
        "layer2.0.shortcut.0",
        0,
    )
    assert qat_int8.module_of_node(resnet, "/Flatten") is None
    vgg = create_model("vgg11_bn", num_classes=10, in_channels=1)
    assert qat_int8.module_of_node(vgg, "/features/features.2/Relu") == ("features.2", 0)
    assert qat_int8.module_of_node(vgg, "/nothing/here/Conv") is None


# --- the simulation is the int8 model ------------------------------------------------------------


def test_fake_quant_forward_matches_the_int8_model_onnx_runtime_runs(
    trained: nn.Module, digits: DatasetBundle, tmp_path: Path
) -> None:
    """Calibrate the hooked module, then compare its fake-quant logits with ORT's QDQ model
    quantized with the same ranges: the simulation must be the deployed arithmetic."""
    module = copy.deepcopy(trained).eval()
    cfg = _cfg(calibration_samples=64)
    ctx = _ctx(module, digits, tmp_path)
    pairs = find_conv_bn_pairs(module)
    assert {(p.conv, p.bn) for p in pairs} == {("stem.0", "stem.1"), ("conv", "bn")}
    folded = copy.deepcopy(module)
    fold_conv_bn(folded, pairs)
    fp32 = export_onnx(folded, digits.input_shape, tmp_path / "dry_fp32.onnx")
    pre = qat_int8._quantize(fp32, tmp_path / "dry_int8.onnx", ctx, cfg, 8)
    plan = qat_int8.plan_points(
        module, onnx.load(str(pre)), onnx.load(str(tmp_path / "dry_int8.onnx")), pairs, 0.01
    )
    assert plan.calibrated == []  # every point ORT quantizes is simulated
    assert plan.model_input is not None
    # conv+BN+ReLU at the ReLU, the folded conv feeding the add at its BN, the add at the ReLU
    # that ORT removes, the pooling, the logits; MaxPool and Flatten share their input's scale.
    assert set(plan.outputs) == {("stem.2", 0), ("bn", 0), ("relu", 0), ("gap", 0), ("fc", 0)}
    assert plan.inputs == {}
    fqs = []
    for name in plan.weights:
        fq = qat_int8.WeightFakeQuant(True)
        parametrize.register_parametrization(module.get_submodule(name), "weight", fq)
        fqs.append(fq)
    hooks = qat_int8._Hooks(module, plan)
    qat_int8._calibrate(module, ctx, plan, cfg.calibration_samples)
    for q in plan.quantizers():
        q.mode, q.enabled = "frozen", True
    for fq in fqs:
        fq.enabled = True
    x = torch.from_numpy(np.concatenate(digits.calibration_arrays(64, seed=1), axis=0))
    with torch.no_grad():
        simulated = module(x).numpy()
    hooks.remove()
    for name in plan.weights:
        parametrize.remove_parametrizations(module.get_submodule(name), "weight", False)
    fold_conv_bn(module, pairs)
    fp32 = export_onnx(module, digits.input_shape, tmp_path / "fp32.onnx")
    overrides, learned = qat_int8.overrides_for(plan, module, True)
    out = tmp_path / "int8.onnx"
    qat_int8._quantize(fp32, out, ctx, cfg, 8, overrides)
    assert qat_int8.check_overrides(out, learned) == []
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    step = learned["logits"][0]  # one quantization step of the logits
    # Equal up to float rounding of a few values onto the neighbouring step.
    assert np.mean(np.abs(simulated - deployed) <= 1.01 * step) >= 0.97
    assert np.mean(simulated.argmax(1) == deployed.argmax(1)) >= 0.95
    # Without the simulation the float model is further from the int8 one than the simulation.
    with torch.no_grad():
        float_logits = trained(x).numpy()
    assert np.abs(simulated - deployed).mean() < np.abs(float_logits - deployed).mean()


# --- the stage -----------------------------------------------------------------------------------


def test_qat_stage_writes_a_qdq_model_with_the_learned_ranges_and_measures_it_in_ort(
    trained: nn.Module, digits: DatasetBundle, tmp_path: Path
) -> None:
    ctx = _ctx(copy.deepcopy(trained), digits, tmp_path)
    cfg = _cfg(epochs=1, bn_update_epochs=0, observer_update_epochs=1, calibration_samples=32)
    result = registry.get_method("qat_int8").run(ctx, cfg)
    out = result.model.onnx_path
    assert result.model.format == "onnx" and out is not None and out.is_file()
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ, like ptq_int8's
    # The learned ranges are the ones in the file (honoured overrides).
    learned = json.loads(result.artifacts["qat_ranges"].read_text())
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    assert learned and len(learned) == result.metrics["simulated_tensors"]
    for tensor, qp in learned.items():
        assert float(inits[f"{tensor}_scale"]) == qp["scale"]
        assert int(inits[f"{tensor}_zero_point"]) == qp["zero_point"]
    # The weights' per-channel scales are the simulated ones, too.
    weight_scales = [
        v for k, v in inits.items() if k.endswith("_scale") and v.ndim == 1 and v.size == 8
    ]
    assert weight_scales
    # The int8 accuracy comes from ONNX Runtime on the int8 file.
    assert result.metrics["val_acc_int8"] == pytest.approx(accuracy_onnx(out, digits.val_loader()))
    assert result.metrics["fused_pairs"] == 2
    assert result.metrics["calibrated_points"] == 0
    assert result.metrics["size_bytes_after"] > 0  # (8-channel layers: scales outweigh the gain)
    assert len(result.history) == 1


def test_qat_through_the_pipeline_reports_the_int8_model_test_accuracy(
    trained: nn.Module, digits: DatasetBundle, tmp_path: Path
) -> None:
    recipe = parse_recipe(
        {
            "name": "qat",
            "stages": [
                {
                    "method": "qat_int8",
                    "config": {
                        "epochs": 1,
                        "bn_update_epochs": 1,
                        "observer_update_epochs": 1,
                        "calibration_samples": 16,
                    },
                }
            ],
            "eval": {"latency_runs": 0},
        }
    )
    model = ModelState(
        input_shape=digits.input_shape,
        num_classes=10,
        module=copy.deepcopy(trained),
        arch=ArchSpec("smallbn", 10, 1),
    )
    # A non-zoo module cannot be checkpointed as torch, but the stage's output is ONNX.
    report = run_recipe(recipe, model, digits, tmp_path / "run")
    final = tmp_path / "run" / "final.int8.onnx"
    assert final.is_file() and report.final_format == "onnx"
    assert report.final.accuracy == pytest.approx(accuracy_onnx(final, digits.test_loader()))
    assert (tmp_path / "run" / "final.onnx").is_file()  # the QAT-trained fp32 model


# --- bad input -------------------------------------------------------------------------------


def test_check_model_refuses_an_onnx_model() -> None:
    facts = ModelFacts(format="onnx", arch="resnet20")
    with pytest.raises(ConfigError) as info:
        qat_int8.check_model(facts, _cfg())
    assert "needs a torch model" in info.value.message and "ptq_int8" in info.value.message
    qat_int8.check_model(ModelFacts(format="torch"), _cfg())  # a torch model is fine
    recipe = parse_recipe({"name": "x", "stages": [{"method": "qat_int8"}]})
    with pytest.raises(StageScopeError):
        check_recipe_for_model(recipe, facts)


def test_phase_lengths_longer_than_the_training_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(epochs=2, bn_update_epochs=3)
    assert info.value.field == "config.bn_update_epochs"
    with pytest.raises(ConfigError) as info:
        _cfg(epochs=1, observer_update_epochs=2)
    assert info.value.field == "config.observer_update_epochs"
