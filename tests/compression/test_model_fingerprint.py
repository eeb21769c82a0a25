"""The resume identity's model fingerprint covers every state-dict tensor, 0-dim ones included."""

from __future__ import annotations

import torch
from torch import nn

from compression.pipeline import model_fingerprint
from compression.stage import ModelState


def _bn_state() -> ModelState:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    module(torch.zeros(1, 1, 8, 8))
    return ModelState(input_shape=(1, 8, 8), num_classes=10, module=module)


def test_it_fingerprints_a_model_with_batchnorm_counters() -> None:
    state = _bn_state()
    before = model_fingerprint(state)
    assert len(before) == 64
    bn = state.module[1]  # type: ignore[index]
    bn.num_batches_tracked += 1  # a 0-dim int64 buffer
    assert model_fingerprint(state) != before
