"""Goal presets for the wizard: a starting list of stages per goal, tuned for the model in hand.

Presets only pick methods and a few parameters; every value stays editable in the per-stage
forms and in the review's YAML, and the recipe is validated against the registry on submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GoalPreset:
    key: str
    title: str
    description: str
    stages: tuple[tuple[str, dict[str, Any]], ...]


PRESETS: dict[str, GoalPreset] = {
    p.key: p
    for p in [
        GoalPreset(
            "smallest",
            "Smallest",
            "Remove half the channels, fine-tune to recover, then quantize to int8: the smallest "
            "file, usually at a small accuracy cost.",
            (
                ("channel_pruning", {"ratio": 0.5, "sparsity_epochs": 1, "finetune_epochs": 2}),
                ("finetune", {"epochs": 2}),
                ("ptq_int8", {"mode": "static"}),
            ),
        ),
        GoalPreset(
            "fastest",
            "Fastest on a device",
            "Cut MACs by 3x with channel pruning (fewer MACs is what makes a CPU or NPU faster), "
            "fine-tune, then quantize with settings suited to the chosen device.",
            (
                (
                    "channel_pruning",
                    {"target_mac_reduction": 3.0, "sparsity_epochs": 1, "finetune_epochs": 2},
                ),
                ("finetune", {"epochs": 2}),
                ("ptq_int8", {"mode": "static"}),
            ),
        ),
        GoalPreset(
            "balanced",
            "Balanced",
            "A gentle cut (30% of channels) and a longer fine-tune: most of the speed-up at "
            "nearly no accuracy cost; no quantization.",
            (
                ("channel_pruning", {"ratio": 0.3, "sparsity_epochs": 1, "finetune_epochs": 2}),
                ("finetune", {"epochs": 3}),
            ),
        ),
        GoalPreset(
            "custom",
            "Custom stages",
            "Pick the stages yourself, in order.",
            (),
        ),
    ]
}


def preset_stages(key: str, *, target_device: str = "") -> list[dict[str, Any]]:
    """The preset's stages as recipe entries (``{"method", "config"}``), copied."""
    preset = PRESETS[key]
    stages: list[dict[str, Any]] = [{"method": m, "config": dict(cfg)} for m, cfg in preset.stages]
    if key == "fastest":
        for stage in stages:
            if stage["method"] == "ptq_int8":
                # ARM CPUs and NPUs run int8 activations natively; x86 without VNNI overflows
                # int16 accumulators with full-range weights (ORT's own advice).
                arm = any(w in target_device.lower() for w in ("arm", "pi", "jetson", "phone"))
                stage["config"].update(
                    {"activation_type": "int8" if arm else "uint8", "reduce_range": not arm}
                )
    return stages
