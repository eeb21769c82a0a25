"""Tucker-2 and CP decomposition: exact chains, skips with reasons, config errors, a real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compression import registry
from compression.checkpoint import load_checkpoint, save_checkpoint
from compression.datasets import DatasetBundle, load_digits
from compression.decompose import cp, tucker2
from compression.errors import ConfigError
from compression.macs import count_macs
from compression.methods import cp_decomposition as cpd
from compression.methods import tucker_decomposition as td
from compression.onnx_export import export_onnx
from compression.pipeline import run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState, StageContext
from compression.zoo import create_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    """A small conv net with the layer kinds the methods must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)  # low-dimensional
        self.big = nn.Conv2d(8, 48, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(48)
        self.wide = nn.Conv2d(48, 48, 3, stride=2, padding=2, dilation=2)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)  # depthwise
        self.pw = nn.Conv2d(48, 32, 1)  # 1x1
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(self.big(x)))
        x = torch.relu(self.wide(x))
        x = torch.relu(self.pw(self.dw(x)))
        out: torch.Tensor = self.head(x.mean((2, 3)))
        return out


def _cfg(cls: type[Any], **values: Any) -> Any:
    return registry.config_from_dict(cls, values)


def test_a_full_rank_tucker_chain_computes_the_same_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 3, stride=2, padding=2, dilation=2, bias=True)
    w = conv.weight.detach().double().numpy()
    t = tucker2(w, (20, 12))
    chain = td.tucker_chain(conv, t.core, t.u_out, t.u_in)
    x = torch.randn(2, 12, 15, 15)
    torch.testing.assert_close(chain(x), conv(x), rtol=1e-4, atol=1e-4)
    assert [c.kernel_size for c in chain] == [(1, 1), (3, 3), (1, 1)]
    assert chain[1].stride == (2, 2) and chain[1].dilation == (2, 2) and chain[2].bias is not None


def test_a_cp_chain_of_an_exact_cp_weight_computes_the_same_conv() -> None:
    rng = np.random.default_rng(0)
    factors = [rng.normal(size=(n, 5)) for n in (16, 12, 3, 3)]
    conv = nn.Conv2d(12, 16, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.einsum("or,ir,yr,xr->oiyx", *factors)))
    f = cp(conv.weight.detach().double().numpy(), 5, n_iter_max=500, tol=1e-12)
    chain = cpd.cp_chain(conv, f)
    assert [c.groups for c in chain] == [1, 5, 5, 1]
    x = torch.randn(2, 12, 14, 14)
    torch.testing.assert_close(chain(x), conv(x), rtol=1e-3, atol=1e-3)


def test_ratio_ranks_hit_the_target_compression() -> None:
    r_out, r_in = td.ratio_ranks(64, 64, 3, 3.0)
    params = 64 * r_in + r_in * r_out * 9 + r_out * 64
    assert 2.9 < 64 * 64 * 9 / params < 3.4


def test_evbmf_ranks_recover_a_low_rank_conv() -> None:
    # Channel modes of rank 6 (out) and 4 (in), plus noise: EVBMF on the unfoldings finds them.
    rng = np.random.default_rng(0)
    core = rng.normal(size=(6, 4, 3, 3))
    u_out, _ = np.linalg.qr(rng.normal(size=(64, 6)))
    u_in, _ = np.linalg.qr(rng.normal(size=(48, 4)))
    w = np.einsum("abyx,oa,ib->oiyx", core, u_out, u_in) + 0.01 * rng.normal(size=(64, 48, 3, 3))
    ranks, how = td.choose_ranks(w, _cfg(td.TuckerDecompositionConfig))
    assert ranks == (6, 4) and how == "EVBMF"
    noise = rng.normal(size=(64, 48, 3, 3))
    assert td.choose_ranks(noise, _cfg(td.TuckerDecompositionConfig))[0] is None


def test_tucker_decomposes_the_big_convs_and_lists_the_others() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 1, 16, 16)
    before = count_macs(model, (1, 16, 16))
    cfg = _cfg(td.TuckerDecompositionConfig, rank_method="ratio", target_ratio=4.0)
    changes, skips = td.decompose_model(model, (1, 16, 16), 10, cfg)
    assert [c.name for c in changes] == ["wide"]  # big: 8 input channels < min_channels 16
    assert changes[0].ranks is not None and changes[0].macs_after < changes[0].macs_before  # type: ignore[operator]
    reasons = {s.name: s.reason for s in skips}
    assert "min_channels" in reasons["stem"] and "min_channels" in reasons["big"]
    assert "depthwise" in reasons["dw"] and "1x1" in reasons["pw"]
    assert isinstance(model.wide, nn.Sequential)
    assert count_macs(model, (1, 16, 16)) < before
    model(x)  # still runs


def test_a_chain_that_saves_no_macs_is_skipped() -> None:
    model = Net().eval()
    cfg = _cfg(td.TuckerDecompositionConfig, rank_method="fixed", rank_out=48, rank_in=48)
    changes, skips = td.decompose_model(model, (1, 16, 16), 10, cfg)
    assert changes == [] and "would cost" in {s.name: s.reason for s in skips}["wide"]
    assert isinstance(model.wide, nn.Conv2d)


def test_bad_ranks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="must be >= 1"):
        _cfg(td.TuckerDecompositionConfig, rank_method="fixed", rank_out=0, rank_in=4)
    with pytest.raises(ConfigError, match="needs rank_out and rank_in"):
        _cfg(td.TuckerDecompositionConfig, rank_method="fixed", rank_out=4)
    with pytest.raises(ConfigError, match="only used with rank_method fixed"):
        _cfg(td.TuckerDecompositionConfig, rank_in=4)
    cfg = _cfg(td.TuckerDecompositionConfig, rank_method="fixed", rank_out=64, rank_in=8)
    with pytest.raises(ConfigError, match=r"rank 64 is larger than wide allows \(48 output"):
        td.decompose_model(Net(), (1, 16, 16), 10, cfg)
    with pytest.raises(ConfigError, match="larger than wide allows"):
        cpd.decompose_model(
            Net(), (1, 16, 16), 10, _cfg(cpd.CpDecompositionConfig, rank_method="fixed", rank=9999)
        )
    with pytest.raises(ConfigError, match="regular expression"):
        td.decompose_model(Net(), (1, 16, 16), 10, _cfg(td.TuckerDecompositionConfig, layers="("))


def test_an_svd_that_does_not_converge_is_a_listed_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    from compression.decompose import tucker2 as real

    calls: list[tuple[int, ...]] = []

    def flaky(w: np.ndarray, ranks: tuple[int, int], **kw: Any) -> Any:
        calls.append(w.shape)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("SVD did not converge")
        return real(w, ranks, **kw)

    monkeypatch.setattr(td, "tucker2", flaky)
    model = Net().eval()
    cfg = _cfg(td.TuckerDecompositionConfig, rank_method="ratio", min_channels=8, target_ratio=4)
    changes, skips = td.decompose_model(model, (1, 16, 16), 10, cfg)
    assert [c.name for c in changes] == ["wide"]  # the job went on with the next conv
    assert "did not converge" in {s.name: s.reason for s in skips}["big"]


def test_cp_decomposes_and_reports_the_guard() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    cfg = _cfg(cpd.CpDecompositionConfig, target_ratio=4.0, svd_init_max_elements=10)
    changes, _ = cpd.decompose_model(model, (1, 16, 16), 10, cfg)
    assert [c.name for c in changes] == ["wide"]
    assert changes[0].note is not None and "random init" in changes[0].note
    rank = changes[0].ranks[0]  # type: ignore[index]
    assert rank == cpd.ratio_rank((48, 48, 3, 3), 4.0)
    model(torch.randn(1, 1, 16, 16))


def test_error_bound_rank_is_the_smallest_within_the_bound() -> None:
    rng = np.random.default_rng(0)
    factors = [rng.normal(size=(n, 6)) for n in (24, 20, 3, 3)]
    w = np.einsum("or,ir,yr,xr->oiyx", *factors) + 0.01 * rng.normal(size=(24, 20, 3, 3))
    f, how = cpd._fit(w, _cfg(cpd.CpDecompositionConfig, rank_method="error", max_error=0.05), 0)
    assert f.out.shape[1] <= 6 and f.rel_error <= 0.05 and how.startswith("error")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=16).subset(train=256, val=128, seed=0)


def _ctx(model: nn.Module, data: DatasetBundle, tmp: Path) -> StageContext:
    state = ModelState(input_shape=(1, 16, 16), num_classes=10, module=model)
    return StageContext(
        model=state, data=data, device=CPU, work_dir=tmp, seed=0,
        report=lambda *a: None, check_cancel=lambda: None,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["tucker_decomposition", "cp_decomposition"])
def test_the_registered_method_runs_and_exports(
    tmp_path: Path, digits: DatasetBundle, method: str
) -> None:
    torch.manual_seed(0)
    spec = registry.get_method(method)
    # CP's first 1x1 runs at the input resolution, before wide's stride 2: it needs a
    # higher ratio than Tucker-2 to cut wide's MACs 1.5x.
    ratio = 3.0 if method == "tucker_decomposition" else 8.0
    cfg = registry.config_from_dict(
        spec.config_cls, {"rank_method": "ratio", "target_ratio": ratio, "epochs": 1}
    )
    result = spec.run(_ctx(Net(), digits, tmp_path), cfg)
    module = result.model.module
    assert module is not None and isinstance(module.wide, nn.Sequential)
    rows = {row.name: row for row in result.layers}
    assert rows["wide"].ranks and str(rows["dw"].note).startswith("skipped: depthwise")
    assert result.metrics["layers_decomposed"] == 1.0 and len(result.history) == 1
    x = torch.randn(3, 1, 16, 16)
    path = export_onnx(module, (1, 16, 16), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(x).numpy()
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_a_decomposed_zoo_model_checkpoints_and_the_pipeline_resumes(
    tmp_path: Path, digits: DatasetBundle
) -> None:
    torch.manual_seed(0)
    module = create_model("resnet20", num_classes=10, in_channels=1)
    state = ModelState(
        input_shape=(1, 16, 16), num_classes=10, module=module, arch=ArchSpec("resnet20", 10, 1)
    )
    recipe = parse_recipe(
        {
            "name": "tucker-resume",
            "seed": 1,
            "eval": {"latency_runs": 2, "warmup": 1, "threads": 1, "rounds": 1},
            "stages": [
                {
                    "method": "tucker_decomposition",
                    "config": {"rank_method": "ratio", "layers": "layer3", "epochs": 1},
                },
                {"method": "finetune", "config": {"epochs": 1}},
            ],
        }
    )
    out = tmp_path / "run"

    def crash(_f: float, _m: str, metrics: dict[str, Any]) -> None:
        if (metrics.get("event"), metrics.get("stage")) == ("stage_end", 0):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(recipe, state, digits, out, progress=crash)
    ckpt = json.loads((out / "state.json").read_text())["completed"][0]["checkpoint"]
    meta = json.loads((out / ckpt).with_suffix(".json").read_text())
    assert {e["path"] for e in meta["structure"]} >= {"layer3.1.conv1", "layer3.1.conv2"}
    loaded = load_checkpoint(out / ckpt)
    assert loaded.module is not None and isinstance(
        loaded.module.get_submodule("layer3.1.conv1"), nn.Sequential
    )
    report = run_recipe(recipe, state, digits, out)  # resumes from the decomposed checkpoint
    assert report.resumed_from_stage == 1 and (out / "final.onnx").is_file()
    assert report.stages[1].metrics.macs == report.stages[0].metrics.macs
    assert (report.stages[0].metrics.macs or 0) < (report.baseline.macs or 0)
    layers = {row["name"]: row for row in report.stages[0].layers}
    assert layers["layer3.1.conv1"]["ranks"] and "Tucker-2" in layers["layer3.1.conv1"]["note"]
    final = load_checkpoint(out / report.stages[1].checkpoint)
    again = save_checkpoint(final, tmp_path / "again")
    assert load_checkpoint(again).module is not None
