"""Regression: each goal preset's channel-pruning stage runs on LeNet-5 (no BatchNorm, few
channels), with the preset's own settings and no training, instead of failing on a MAC target
the model cannot reach ("fastest" asked 3x; LeNet-5 stops at 1.7x with channels rounded to 8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.model_facts import ModelFacts
from compression.stage import ModelState, StageContext
from compression.zoo import create_model
from webapp.jobs.presets import PRESETS, ModelProfile, build_preset

GOALS = [key for key in PRESETS if key != "custom"]


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=32).subset(train=64, val=64, seed=0)


def _lenet_profile() -> ModelProfile:
    facts = ModelFacts(
        format="torch", arch="lenet5", input_shape=(1, 32, 32), num_classes=10, has_batchnorm=False
    )
    return ModelProfile(facts=facts, trained=True)


@pytest.mark.parametrize("goal", GOALS)
def test_the_presets_channel_pruning_stage_runs_on_lenet5(goal, digits, tmp_path: Path):
    built = build_preset(goal, _lenet_profile())
    [config] = [s["config"] for s in built.stages if s["method"] == "channel_pruning"]
    overrides: dict[str, Any] = {**config, "sparsity_epochs": 0, "finetune_epochs": 0}
    torch.manual_seed(0)
    ctx = StageContext(
        model=ModelState(
            input_shape=digits.input_shape,
            num_classes=digits.num_classes,
            module=create_model("lenet5", num_classes=10, in_channels=1),
        ),
        data=digits,
        device=torch.device("cpu"),
        work_dir=tmp_path,
        seed=0,
        report=lambda frac, msg, metrics: None,
        check_cancel=lambda: None,
    )
    spec = registry.get_method("channel_pruning")
    result = spec.run(ctx, registry.config_from_dict(spec.config_cls, overrides))
    pruned = result.model.module
    assert pruned is not None
    before = sum(
        p.numel() for p in create_model("lenet5", num_classes=10, in_channels=1).parameters()
    )
    assert sum(p.numel() for p in pruned.parameters()) < before  # it did prune
