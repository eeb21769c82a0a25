"""recipes/thesis003_chain.yaml runs end to end on a VGG (every stage for one epoch, tiny data):
the backbone shrinks, pruning shrinks it further, and the result is an int8 ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import yaml

from compression.checkpoint import load_checkpoint
from compression.datasets import load_digits
from compression.errors import ConfigError
from compression.model_facts import ModelFacts
from compression.pipeline import run_recipe
from compression.recipe import check_recipe_for_model, parse_recipe
from compression.registry import get_method
from compression.stage import ArchSpec, ModelState
from compression.zoo import CifarVGG, create_model

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "thesis003_chain.yaml"


def tiny_chain() -> dict[str, Any]:
    """The shipped recipe with one epoch per training phase and no latency rounds."""
    recipe: dict[str, Any] = yaml.safe_load(RECIPE.read_text())
    for stage in recipe["stages"]:
        config = stage.setdefault("config", {})
        for p in get_method(stage["method"]).params():
            if p.name.endswith("epochs"):
                config[p.name] = min(int(config.get(p.name, p.default)), 1)
    recipe["eval"] = {"latency_runs": 0}
    return recipe


# vgg11_bn's layout (8 convs, 5 pools) at a quarter of its widths: the same structure for every
# stage, and checkpoints rebuild it as the zoo's vgg11_bn resized, the way they rebuild a pruned
# one. The channel pruning's dynamic importance inverts a C x C correlation matrix per feature
# map at every sub-step of its MAC search; at full width (C up to 512) that alone took ~150 s.
_NARROW_VGG11 = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]


def _vgg(in_channels: int = 1, *, narrow: bool = False) -> ModelState:
    torch.manual_seed(0)
    module = (
        CifarVGG(_NARROW_VGG11, num_classes=10, in_channels=in_channels)
        if narrow
        else create_model("vgg11_bn", num_classes=10, in_channels=in_channels)
    )
    return ModelState(
        input_shape=(in_channels, 32, 32),
        num_classes=10,
        module=module,
        arch=ArchSpec("vgg11_bn", 10, in_channels),
    )


def test_the_chain_fits_a_vgg_and_refuses_a_model_without_convolutions() -> None:
    recipe = parse_recipe(yaml.safe_load(RECIPE.read_text()))
    methods = [s.method for s in recipe.stages]
    assert methods[:3] == ["finetune", "backbone_swap", "channel_pruning"]
    assert recipe.stages[2].config.importance == "dynamic"
    assert "qat_int8" in methods
    check_recipe_for_model(recipe, ModelFacts.from_state(_vgg()))
    lenet = create_model("lenet300_100", num_classes=10, in_channels=1)
    facts = ModelFacts.from_module(lenet, arch="lenet300_100", num_classes=10)
    with pytest.raises(ConfigError, match="backbone_swap"):
        check_recipe_for_model(recipe, facts)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # six stages; on a busy 2-core machine far over the suite's 300 s
def test_the_chain_runs_end_to_end_on_vgg(tmp_path: Path) -> None:
    data = load_digits(size=32).subset(train=96, val=48, test=48, seed=0)
    report = run_recipe(parse_recipe(tiny_chain()), _vgg(narrow=True), data, tmp_path / "run")
    stages = {s.method: s for s in report.stages}
    trained = stages["finetune"].metrics
    swapped = stages["backbone_swap"]
    pruned = stages["channel_pruning"].metrics
    assert trained.macs is not None and swapped.metrics.macs is not None
    assert pruned.macs is not None
    assert swapped.metrics.macs < trained.macs / 5  # depthwise separable + SE
    assert pruned.macs < swapped.metrics.macs
    assert swapped.method_metrics["swapped_convs"] == 7
    assert len(swapped.layers) == 7 and all(c["macs_after"] for c in swapped.layers)
    assert report.final_format == "onnx"
    # final.onnx is the fp32 export; the int8 graph that fusion optimised is the compressed file
    # (ORT's offline pass turns its Q/DQ pairs into QLinear* operators).
    final = onnx.load(str(tmp_path / "run" / "final.compressed.onnx"))
    ops = {n.op_type for n in final.graph.node}
    assert "QLinearConv" in ops or "QuantizeLinear" in ops, ops
    # The swapped (and the pruned) stage checkpoints rebuild their models.
    for method in ("backbone_swap", "channel_pruning"):
        state = load_checkpoint(tmp_path / "run" / stages[method].checkpoint)
        assert state.module is not None
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            assert state.module(x).shape == (2, 10)
