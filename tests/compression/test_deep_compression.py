"""weight_coding as a stage, and Deep Compression end to end through the pipeline."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression import registry
from compression.checkpoint import sha256_file
from compression.container import decode_container
from compression.datasets import DatasetBundle, load_digits
from compression.methods.weight_coding import CodingVerificationError, deep_compression_table
from compression.pipeline import run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState, StageContext, StageResult
from compression.zoo import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=256, val=128, seed=0)


def make_ctx(module: nn.Module, data: DatasetBundle, work_dir: Path) -> StageContext:
    return StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=10, module=module),
        data=data,
        device=CPU,
        work_dir=work_dir,
        seed=0,
        report=lambda *_: None,
        check_cancel=lambda: None,
    )


def run(name: str, ctx: StageContext, **overrides: Any) -> StageResult:
    spec = registry.get_method(name)
    result = spec.run(ctx, registry.config_from_dict(spec.config_cls, overrides))
    assert isinstance(result, StageResult)
    return result


class TinyBNNet(nn.Module):
    """Conv-BN-ReLU twice and a linear head: BatchNorm that an export would fold."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


def shared_model(module: nn.Module, data: DatasetBundle, tmp_path: Path, bits: int = 4) -> None:
    """Prune half of every weight and share the rest in place (no training: fast)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(m.weight.abs() > m.weight.abs().flatten().median())
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding would matter
                assert m.running_var is not None
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    run("weight_sharing", make_ctx(module, data, tmp_path / "ws"), conv_bits=bits, fc_bits=bits,
        finetune_epochs=0)  # fmt: skip


def test_coding_a_shared_lenet_writes_a_verified_container_and_the_papers_table(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    module = create_model("lenet5", num_classes=10, in_channels=1)
    shared_model(module, digits, tmp_path)
    before = copy.deepcopy(module.state_dict())
    result = run("weight_coding", make_ctx(module, digits, tmp_path / "wc"))
    # Lossless: the model handed on is untouched.
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    container = result.artifacts["container"]
    assert container.is_file() and container.suffix == ".esdc"
    table = result.extras["deep_compression"]
    assert table["totals"]["container_bytes"] == container.stat().st_size
    assert result.metrics["container_bytes"] == container.stat().st_size
    ver = table["verification"]
    assert ver["predictions_equal"] and ver["tensors_bit_identical"]
    assert ver["samples"] == len(digits.test) and ver["max_abs_logit_diff"] == 0.0
    names = {row["name"] for row in table["layers"]}
    assert {"features.3.weight", "classifier.1.weight"} <= names
    for row in table["layers"]:
        assert row["stored_as"] == "shared"
        assert row["weight_bits"] <= 4
        assert row["bytes_shared"] < row["bytes_pruned"] < row["bytes_dense_fp32"]
        if row["weights"] >= 1000:  # a tiny layer's section header and tables outweigh Huffman
            assert row["bytes_huffman"] < row["bytes_shared"]
        assert 0.4 < row["kept"] <= 0.55
    w = table["ratios"]["whole_model"]
    assert 1.0 < w["pruned"] < w["shared"] < w["container"]
    # The whole-model container ratio counts every byte of the file.
    dense = table["totals"]["whole_model_bytes"]["dense_fp32"]
    assert w["container"] == pytest.approx(dense / container.stat().st_size)
    # The decoded container predicts like the torch model.
    decoded = decode_container(container, tmp_path / "decoded")
    import onnxruntime as ort

    x = torch.randn(5, *digits.input_shape)
    sess = ort.InferenceSession(str(decoded.onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), atol=1e-4)


def test_batchnorm_is_not_folded_so_shared_convs_stay_shared(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    module = TinyBNNet()
    shared_model(module, digits, tmp_path, bits=3)
    result = run("weight_coding", make_ctx(module, digits, tmp_path / "wc"), min_elements=16)
    rows = {row["name"]: row for row in result.extras["deep_compression"]["layers"]}
    convs = [r for r in rows.values() if r["kind"] == "conv"]
    assert len(convs) == 2
    assert all(r["stored_as"] == "shared" and r["codebook_size"] <= 8 for r in convs)


def test_a_decoder_that_changes_one_weight_fails_the_stage(
    digits: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compression.container as container_mod

    real = container_mod.decode_container

    def corrupting(src: Any, out_dir: Any, **kw: Any) -> Any:
        decoded = real(src, out_dir, **kw)
        assert decoded.data_path is not None
        data = bytearray(decoded.data_path.read_bytes())
        i = next(i for i in range(0, len(data), 4) if any(data[i : i + 4]))
        data[i + 3] ^= 0x01  # flip one bit of the first non-zero weight's exponent
        decoded.data_path.write_bytes(bytes(data))
        return decoded

    monkeypatch.setattr(container_mod, "decode_container", corrupting)
    module = create_model("lenet5", num_classes=10, in_channels=1)
    shared_model(module, digits, tmp_path)
    with pytest.raises(CodingVerificationError, match="bit for bit"):
        run("weight_coding", make_ctx(module, digits, tmp_path / "wc"))


def test_the_table_totals_add_up() -> None:
    stream = {"symbols": 10, "distinct": 2, "entropy_bits_per_symbol": 1.0, "entropy_bytes": 1.25,
              "coded_bytes": 4, "table_bytes": 2}  # fmt: skip
    layer = {"name": "fc.weight", "kind": "fc", "shape": [10, 10], "stored_as": "shared",
             "weights": 100, "nonzero": 10, "codebook_size": 2, "codebook_bits": 1,
             "index_bits": 5, "entries": 12, "filler_entries": 2, "bytes_dense_fp32": 400,
             "bytes_pruned": 48, "bytes_shared": 19, "bytes_huffman": 15,
             "values": stream, "gaps": stream}  # fmt: skip
    stats = {"layers": [layer, {**layer, "name": "fc2.weight"}], "bytes_dense_fp32": 800,
             "params_bytes_fp32": 840, "bytes_pruned": 96, "bytes_shared": 38,
             "bytes_huffman": 30, "total_bytes": 100, "header_bytes": 20, "graph_bytes": 50,
             "version": 1, "sha256": "0" * 64, "decoded_bytes": 900}  # fmt: skip
    t = deep_compression_table(stats)
    assert t["totals"]["kept"] == pytest.approx(0.1)
    assert t["totals"]["other_fp32_bytes"] == 40
    assert t["totals"]["whole_model_bytes"] == {
        "dense_fp32": 840, "pruned": 136, "shared": 78, "container": 100}  # fmt: skip
    assert t["ratios"]["weights_only"]["huffman"] == pytest.approx(800 / 30)
    assert t["ratios"]["whole_model"]["container"] == pytest.approx(8.4)
    row = t["layers"][0]
    assert row["kept"] == pytest.approx(0.1)
    assert row["weight_bits_huffman"] == pytest.approx(3.2)  # 4 bytes over 10 weights
    assert row["ratio_pruned"] == pytest.approx(400 / 48)


def test_the_pipeline_carries_the_container_and_the_table_into_report_json(
    digits: DatasetBundle, tmp_path: Path
) -> None:
    recipe = parse_recipe(
        {
            "name": "dc-tiny",
            "seed": 0,
            "eval": {"latency_runs": 0},
            "stages": [
                {"method": "magnitude_pruning",
                 "config": {"sparsity": 0.8, "steps": 1, "finetune_epochs": 1}},
                {"method": "weight_sharing", "config": {"fc_bits": 4, "finetune_epochs": 1}},
                {"method": "weight_coding"},
            ],
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = ModelState(
        input_shape=digits.input_shape,
        num_classes=10,
        module=create_model("lenet300_100", num_classes=10, in_channels=1),
        arch=ArchSpec("lenet300_100", 10, 1),
    )
    out = tmp_path / "run"
    run_recipe(recipe, model, digits, out)
    report = json.loads((out / "report.json").read_text())
    dc = report["deep_compression"]
    assert dc["stage"] == 2
    arts = {a["kind"]: a for a in report["artifacts"]}
    assert arts["container"]["path"] == "final.esdc"
    assert arts["container"]["bytes"] == dc["totals"]["container_bytes"]
    assert (
        arts["container"]["sha256"] == sha256_file(out / "final.esdc") == dc["container"]["sha256"]
    )
    assert report["stages"][2]["extras"]["deep_compression"]["layers"] == dc["layers"]
    assert 0.15 < dc["totals"]["kept"] < 0.25
    # Every weight layer is shared at 4 bits (fc) and carries the paper's columns.
    assert [row["weight_bits"] for row in dc["layers"]] == [4, 4, 4]
    # A second run in the same folder resumes and reports the same table.
    again = run_recipe(recipe, model, digits, out)
    assert again.deep_compression is not None
    assert again.deep_compression["layers"] == dc["layers"]
    assert (out / "final.esdc").is_file()
