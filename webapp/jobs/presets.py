"""Goal presets for the wizard, built for the model in hand from what its inspection says.

A preset is a goal ("smallest", "fastest", "balanced") turned into stages that fit the model:
channel scores from BatchNorm scales only when the model has BatchNorm (filter norms
otherwise), a training stage first when the weights are untrained (and the report then
compares against the trained model), and only methods that accept the model's format and task
(an ONNX version gets int8 quantization only). Every value stays editable in the per-stage
forms and the review's YAML, and the recipe is checked against the model before it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compression.model_facts import ModelFacts
from compression.registry import ModelFormat, get_method
from webapp.catalog.models import ModelVersion
from webapp.jobs.recipes import model_facts_for_version

# The training stage put first for untrained weights: AdamW reaches a usable digit classifier
# in a few epochs where SGD at the finetune default needs many more.
TRAIN_FIRST: tuple[str, dict[str, Any]] = (
    "finetune",
    {"epochs": 3, "optimizer": "adam", "lr": 0.002, "batch_size": 64},
)
# Words in a device's name, hardware or tags that mean an ARM CPU or an NPU (int8 activations
# run natively there; x86 without VNNI overflows int16 accumulators with full-range weights).
ARM_WORDS = ("arm", "aarch64", "raspberry", "pi", "jetson", "phone", "android", "npu", "rk3")


@dataclass(frozen=True)
class GoalPreset:
    """A goal as the goal step lists it; its stages depend on the model (:func:`build_preset`)."""

    key: str
    title: str
    description: str


PRESETS: dict[str, GoalPreset] = {
    p.key: p
    for p in [
        GoalPreset(
            "smallest",
            "Smallest",
            "Remove half the channels, fine-tune to recover, then quantize to int8: the smallest "
            "file, usually at a small accuracy cost.",
        ),
        GoalPreset(
            "fastest",
            "Fastest on a device",
            "Cut MACs by 3x with channel pruning, or as far as the model allows (fewer MACs is "
            "what makes a CPU or NPU faster), fine-tune, then quantize with settings suited to "
            "the chosen device.",
        ),
        GoalPreset(
            "balanced",
            "Balanced",
            "A gentle cut (30% of channels) and a longer fine-tune: most of the speed-up at "
            "nearly no accuracy cost; no quantization.",
        ),
        GoalPreset("custom", "Custom stages", "Pick the stages yourself, in order."),
    ]
}


@dataclass(frozen=True)
class ModelProfile:
    """What the presets need to know about a model version."""

    facts: ModelFacts
    trained: bool  # False: random weights, so a training stage comes first


@dataclass(frozen=True)
class BuiltPreset:
    """A goal preset as offered for one model: its stages, or why it is not offered."""

    preset: GoalPreset
    stages: list[dict[str, Any]] = field(default_factory=list)
    reference: str = "baseline"  # "stage:0" when the first stage trains untrained weights
    unavailable: str = ""  # a reason, when no stage of this goal fits the model

    @property
    def key(self) -> str:
        return self.preset.key

    @property
    def methods(self) -> list[str]:
        return [s["method"] for s in self.stages]


def version_is_trained(version: ModelVersion) -> bool:
    """Whether a version's weights were trained: uploads and job results are; a built-in sample
    is when its build recorded training (``info["trained"]``, or the older ``info["builtin"]``);
    a new model from the zoo (``info["zoo"]["untrained"]``) is not."""
    info = version.info or {}
    zoo = info.get("zoo")
    if isinstance(zoo, dict) and zoo.get("untrained"):
        return False
    if not version.is_builtin:
        return True
    trained = info.get("trained")
    if isinstance(trained, dict) and int(trained.get("epochs") or 0) > 0:
        return True
    builtin = info.get("builtin")
    return isinstance(builtin, dict) and int(builtin.get("trained_epochs") or 0) > 0


def model_profile_for_version(version: ModelVersion) -> ModelProfile:
    return ModelProfile(facts=model_facts_for_version(version), trained=version_is_trained(version))


def device_is_arm(*words: str) -> bool:
    """Whether a device described by ``words`` (name, hardware, tags) is an ARM CPU or an NPU."""
    text = " ".join(words).lower().replace("-", " ").replace("_", " ")
    tokens = set(text.split())
    return any(w in tokens or (len(w) > 3 and w in text) for w in ARM_WORDS)


# A detector's training stage: AdamW at a detector's learning rate, in small batches (the
# detection loop's own defaults, docs/detection.md); more epochs than a digit classifier needs.
TRAIN_FIRST_DETECTION: tuple[str, dict[str, Any]] = (
    "finetune",
    {"epochs": 10, "optimizer": "adam", "lr": 0.001, "batch_size": 16},
)
FINETUNE_DETECTION: dict[str, Any] = {
    "epochs": 3,
    "optimizer": "adam",
    "lr": 0.0005,
    "batch_size": 16,
}


def _goal_stages(key: str, facts: ModelFacts, *, arm: bool) -> list[tuple[str, dict[str, Any]]]:
    bn = facts.has_batchnorm is True
    detector = facts.task == "detection"
    # Network slimming needs BatchNorm scales to rank channels; filter norms work on anything.
    prune: dict[str, Any] = {
        "importance": "bn_scale" if bn else "l2",
        "sparsity_epochs": 1 if bn else 0,
        # channel_pruning fine-tunes no detector (a later finetune stage does): none asked for.
        "finetune_epochs": 0 if detector else 2,
    }
    if detector:
        if bn:  # a detector's sparsity epoch trains with its detection loss and optimizer
            prune.update({k: FINETUNE_DETECTION[k] for k in ("optimizer", "lr", "batch_size")})
        stages = _goal_stages_base(key, prune, arm=arm)
        return [(m, dict(FINETUNE_DETECTION) if m == "finetune" else c) for m, c in stages]
    return _goal_stages_base(key, prune, arm=arm)


def _goal_stages_base(
    key: str, prune: dict[str, Any], *, arm: bool
) -> list[tuple[str, dict[str, Any]]]:
    if key == "smallest":
        return [
            ("channel_pruning", {**prune, "ratio": 0.5}),
            ("finetune", {"epochs": 2}),
            ("ptq_int8", {"mode": "static"}),
        ]
    if key == "fastest":
        return [
            # A small model (LeNet-5: 1.7x at most with channels rounded to 8) cannot reach
            # 3x; the preset then prunes as far as the layer floors allow, and the report
            # shows the factor reached, instead of failing the job.
            (
                "channel_pruning",
                {**prune, "target_mac_reduction": 3.0, "allow_mac_shortfall": True},
            ),
            ("finetune", {"epochs": 2}),
            (
                "ptq_int8",
                {
                    "mode": "static",
                    "activation_type": "int8" if arm else "uint8",
                    "reduce_range": not arm,
                },
            ),
        ]
    if key == "balanced":
        return [("channel_pruning", {**prune, "ratio": 0.3}), ("finetune", {"epochs": 3})]
    return []


def _fits(method: str, fmt: ModelFormat, facts: ModelFacts) -> bool:
    scope = get_method(method).scope
    return fmt in scope.inputs and facts.task in scope.tasks


def build_preset(key: str, profile: ModelProfile, *, arm: bool = False) -> BuiltPreset:
    """The preset ``key`` for the model in ``profile``.

    Stages whose method does not accept the model's format or task at that point are left out
    (an ONNX model keeps only ``ptq_int8``); a goal with nothing left is offered with a reason
    instead of stages. ``arm``: the "fastest" target is an ARM CPU or an NPU.
    """
    preset = PRESETS[key]
    if key == "custom":
        return BuiltPreset(preset)
    facts = profile.facts
    wanted = _goal_stages(key, facts, arm=arm)
    fmt: ModelFormat = facts.format
    stages: list[dict[str, Any]] = []
    reference = "baseline"
    train_first = TRAIN_FIRST_DETECTION if facts.task == "detection" else TRAIN_FIRST
    if not profile.trained and _fits(train_first[0], fmt, facts):
        stages.append({"method": train_first[0], "config": dict(train_first[1])})
        reference = "stage:0"  # compare with the trained model, not with random weights
    for method, config in wanted:
        if _fits(method, fmt, facts):
            stages.append({"method": method, "config": dict(config)})
            fmt = get_method(method).output_format(fmt)
    core = stages[1:] if reference == "stage:0" else stages
    if not core:
        kind = "ONNX" if facts.format == "onnx" else facts.task
        return BuiltPreset(
            preset, unavailable=f"none of its methods accepts {_article(kind)} {kind} model"
        )
    return BuiltPreset(preset, stages=stages, reference=reference)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word.startswith("ONNX") else "a"


def presets_for_model(profile: ModelProfile, *, arm: bool = False) -> list[BuiltPreset]:
    """Every goal preset as offered for this model (custom last)."""
    return [build_preset(key, profile, arm=arm) for key in PRESETS]
