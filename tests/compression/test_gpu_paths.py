"""The CUDA paths: every torch method runs through the real pipeline on a GPU.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.pipeline import run_recipe
from compression.recipe import parse_recipe
from compression.stage import ArchSpec, ModelState
from compression.zoo import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=512, val=256, seed=0)


def _tiny(spec: registry.MethodSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in spec.params():
        if "epochs" in p.name and p.type == "int":
            out[p.name] = max(1, int(p.ge or 0))
        if p.name in ("calibration_samples", "steps"):
            out[p.name] = max(2, int(p.ge or 0))
    return out


@pytest.mark.parametrize(
    "spec",
    [s for s in registry.list_methods() if "torch" in s.scope.inputs],
    ids=lambda s: s.name,
)
def test_every_torch_method_runs_through_the_pipeline_on_cuda(
    spec: registry.MethodSpec, digits: DatasetBundle, tmp_path: Path
) -> None:
    recipe = parse_recipe(
        {
            "name": f"gpu-{spec.name}",
            "stages": [
                {"method": "finetune", "config": {"epochs": 1}},
                {"method": spec.name, "config": _tiny(spec)},
            ],
            "eval": {"latency_runs": 3, "warmup": 1},
        }
    )
    model = ModelState(
        input_shape=digits.input_shape,
        num_classes=10,
        module=create_model("vgg11_bn", num_classes=10, in_channels=1),
        arch=ArchSpec("vgg11_bn", 10, 1),
    )
    report = run_recipe(recipe, model, digits, tmp_path / "run", device="cuda")
    data = report.to_dict()
    assert data["environment"]["device"].startswith("cuda")
    assert len(data["stages"]) == 2
    assert (tmp_path / "run" / "final.onnx").exists()
    # The fine-tuning stage trained on the GPU, epoch by epoch, without diverging.
    history = data["stages"][0]["history"]
    assert [row["epoch"] for row in history] == [1.0]
    assert all(math.isfinite(row["loss"]) for row in history)
