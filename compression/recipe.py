"""Recipes: an ordered list of stages plus targets, validated against the registry before a run.

A recipe is written as YAML or JSON::

    name: vgg-slim
    seed: 0
    targets: {max_accuracy_drop: 0.5}
    eval: {latency_runs: 50, threads: 2}
    stages:
      - method: channel_pruning
        config: {importance: bn_scale, ratio: 0.5}
      - method: ptq_int8
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compression.errors import ConfigError, StageScopeError, UnknownMethodError, quote
from compression.model_facts import ModelFacts
from compression.registry import (
    ModelFormat,
    TaskType,
    config_from_dict,
    config_to_dict,
    get_method,
    task_refusal,
)

if TYPE_CHECKING:
    from compression.stage import ModelState

MAX_RECIPE_CHARS = 256 * 1024
MAX_STAGES = 32
SCHEMA_KEYS = ("name", "seed", "targets", "eval", "stages")


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: a registered method and its validated config."""

    method: str
    config: Any  # the method's frozen config dataclass
    name: str = ""


@dataclass(frozen=True)
class Targets:
    """What the run should achieve; the report says whether it did."""

    max_accuracy_drop: float | None = None  # percentage points below the reference
    target_device: str | None = None  # a device name for on-device benchmarks (informational)
    # What the final model is compared with: the starting model, or the model after stage N
    # (an untrained zoo model's first stage trains it, so "stage:0" is the honest reference).
    reference: str = "baseline"


@dataclass(frozen=True)
class EvalSettings:
    """How every state is measured (latency with ONNX Runtime on the CPU)."""

    latency_runs: int = 50  # timed runs per round
    warmup: int = 10
    threads: int = 2
    batch_size: int = 1
    rounds: int = 5  # interleaved rounds; the report gives the median and IQR across them


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    targets: Targets = field(default_factory=Targets)
    eval: EvalSettings = field(default_factory=EvalSettings)
    seed: int = 0
    name: str = "recipe"


def _int(value: Any, where: str, *, ge: int, le: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"must be an integer, got {quote(value)}")
    if not ge <= value <= le:
        raise ConfigError(where, f"must be between {ge} and {le}, got {value}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _refuse_unknown(data: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key; known keys: {', '.join(known)}")


class _AliasRefused(Exception):
    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor, line)
        self.anchor = anchor
        self.line = line


def _no_alias_loader() -> type:
    """A safe YAML loader that refuses aliases (``*name``, and ``<<: *name`` merges).

    An alias repeats a node without repeating its text, so a few hundred bytes of nested
    aliases ("billion laughs") stand for millions of values that every later step (validation,
    error messages, storage) would walk. Anchors alone are harmless and allowed.
    """
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _AliasRefused(str(event.anchor)[:40], event.start_mark.line + 1)
            return super().compose_node(parent, index)

    return NoAliasLoader


def _load_text(text: str) -> Any:
    import yaml

    if len(text) > MAX_RECIPE_CHARS:
        raise ConfigError("recipe", f"is longer than {MAX_RECIPE_CHARS} characters")
    try:
        # JSON is YAML, so one parser reads both.
        return yaml.load(text, Loader=_no_alias_loader())
    except _AliasRefused as exc:
        raise ConfigError(
            "recipe",
            f"line {exc.line} uses the YAML alias *{exc.anchor}; aliases are not accepted in "
            "recipes: write the value out",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("recipe", f"is not valid YAML or JSON: {str(exc)[:300]}") from None


def parse_recipe(data: Mapping[str, Any] | str) -> Recipe:
    """Validate a recipe (a mapping, or YAML/JSON text) against the method registry.

    Raises:
        ConfigError: with the field path, e.g. ``stages[1].config.ratio``.
    """
    if isinstance(data, str):
        data = _load_text(data)
    if not isinstance(data, Mapping):
        raise ConfigError("recipe", "must be a mapping with a 'stages' list")
    data = {str(k): v for k, v in data.items()}
    _refuse_unknown(data, SCHEMA_KEYS, "")

    name = data.get("name", "recipe")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError("name", "must be a non-empty string of at most 200 characters")
    seed = _int(data.get("seed", 0), "seed", ge=0, le=2**31 - 1)

    t = _mapping(data.get("targets"), "targets")
    _refuse_unknown(t, ("max_accuracy_drop", "target_device", "reference"), "targets")
    drop = t.get("max_accuracy_drop")
    if drop is not None:
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 100:
            raise ConfigError(
                "targets.max_accuracy_drop", f"must be a number from 0 to 100, got {quote(drop)}"
            )
        drop = float(drop)
    device = t.get("target_device")
    if device is not None and not isinstance(device, str):
        raise ConfigError("targets.target_device", f"must be a string, got {quote(device)}")
    reference = t.get("reference", "baseline")
    raw_stage_count = len(data["stages"]) if isinstance(data.get("stages"), list) else 0
    if reference != "baseline":
        index = (
            reference.split(":", 1)[1]
            if isinstance(reference, str) and reference.startswith("stage:")
            else ""
        )
        if not index.isdigit() or int(index) >= max(raw_stage_count - 1, 0):
            raise ConfigError(
                "targets.reference",
                f"must be 'baseline' or 'stage:N' naming a stage before the last, got {quote(reference)}",
            )
    targets = Targets(max_accuracy_drop=drop, target_device=device, reference=str(reference))

    e = _mapping(data.get("eval"), "eval")
    _refuse_unknown(e, ("latency_runs", "warmup", "threads", "batch_size", "rounds"), "eval")
    defaults = EvalSettings()
    evals = EvalSettings(
        latency_runs=_int(
            e.get("latency_runs", defaults.latency_runs), "eval.latency_runs", ge=0, le=100_000
        ),
        warmup=_int(e.get("warmup", defaults.warmup), "eval.warmup", ge=0, le=10_000),
        threads=_int(e.get("threads", defaults.threads), "eval.threads", ge=1, le=256),
        batch_size=_int(e.get("batch_size", defaults.batch_size), "eval.batch_size", ge=1, le=4096),
        rounds=_int(e.get("rounds", defaults.rounds), "eval.rounds", ge=1, le=100),
    )

    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError("stages", "must be a non-empty list of {method, config}")
    if len(raw_stages) > MAX_STAGES:
        raise ConfigError("stages", f"has {len(raw_stages)} stages; at most {MAX_STAGES}")
    stages = []
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]"
        if isinstance(raw, str):
            raw = {"method": raw}  # "- ptq_int8" is shorthand for a stage with defaults
        s = _mapping(raw, where)
        _refuse_unknown(s, ("method", "config", "name"), where)
        method = s.get("method")
        if not isinstance(method, str) or not method:
            raise ConfigError(f"{where}.method", "is required (a registered method name)")
        try:
            spec = get_method(method)
        except UnknownMethodError as exc:
            raise ConfigError(f"{where}.method", str(exc)) from None
        config = config_from_dict(
            spec.config_cls, _mapping(s.get("config"), f"{where}.config"), where=f"{where}.config"
        )
        stage_name = s.get("name") or method
        if not isinstance(stage_name, str):
            raise ConfigError(f"{where}.name", "must be a string")
        stages.append(Stage(method=method, config=config, name=stage_name))
    return Recipe(stages=tuple(stages), targets=targets, eval=evals, seed=seed, name=name)


def load_recipe_file(path: Path | str) -> Recipe:
    """Parse a ``.yaml``/``.yml``/``.json`` recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("recipe", f"cannot read {path}: {exc}") from None
    return parse_recipe(text)


def stage_formats(recipe: Recipe, model_format: ModelFormat) -> list[ModelFormat]:
    """The model format going into each stage (and, last, the format that comes out)."""
    formats = [model_format]
    for stage in recipe.stages:
        formats.append(get_method(stage.method).output_format(formats[-1]))
    return formats


def validate_recipe_for_model(recipe: Recipe, model_format: ModelFormat, task: TaskType) -> None:
    """Walk the stages and check each one accepts the model as it will be at that point.

    Raises:
        StageScopeError: e.g. ``stages[1] (channel_pruning): needs a torch model but the model
            is ONNX at that point``.
    """
    fmt = model_format
    for i, stage in enumerate(recipe.stages):
        spec = get_method(stage.method)
        label = f"stages[{i}] ({stage.method})"
        if fmt not in spec.scope.inputs:
            need = " or ".join(_format_word(f) for f in sorted(spec.scope.inputs))
            raise StageScopeError(
                f"{label}: needs {need} model but the model is {_format_name(fmt)} at that point"
            )
        if task not in spec.scope.tasks:
            raise StageScopeError(f"{label}: {task_refusal(stage.method, spec.scope.tasks, task)}")
        fmt = spec.output_format(fmt)


def check_recipe_for_model(recipe: Recipe, facts: ModelFacts) -> None:
    """Check every stage fits the model as it will be at that point, before anything runs.

    First the scope (:func:`validate_recipe_for_model`), then each method's ``check_model``
    hook with the facts as they stand after the stages before it (after ``ptq_int8`` the model
    is ONNX, with BatchNorm folded away).

    Raises:
        StageScopeError: a stage does not accept the model's format or task at that point.
        ConfigError: a method refuses the model; the field names the stage and the config field
            (``stages[0].config.importance``) and the message names the method and what to use.
    """
    validate_recipe_for_model(recipe, facts.format, facts.task)
    for i, stage in enumerate(recipe.stages):
        spec = get_method(stage.method)
        if spec.check_model is not None:
            try:
                spec.check_model(facts, stage.config)
            except ConfigError as exc:
                raise ConfigError(
                    f"stages[{i}].{exc.field}", f"{stage.method}: {exc.message}"
                ) from None
        facts = facts.converted_to(spec.output_format(facts.format))


def check_recipe_for_state(recipe: Recipe, state: ModelState) -> None:
    """:func:`check_recipe_for_model` on the facts of a live model (what a run starts from)."""
    check_recipe_for_model(recipe, ModelFacts.from_state(state))


def _format_name(fmt: str) -> str:
    return "ONNX" if fmt == "onnx" else "a torch model" if fmt == "torch" else fmt


def _format_word(fmt: str) -> str:
    return "an ONNX" if fmt == "onnx" else "a torch"


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data; ``parse_recipe(recipe_to_dict(r)) == r``."""
    return {
        "name": recipe.name,
        "seed": recipe.seed,
        "targets": {
            "max_accuracy_drop": recipe.targets.max_accuracy_drop,
            "target_device": recipe.targets.target_device,
            "reference": recipe.targets.reference,
        },
        "eval": {
            "latency_runs": recipe.eval.latency_runs,
            "warmup": recipe.eval.warmup,
            "threads": recipe.eval.threads,
            "batch_size": recipe.eval.batch_size,
            "rounds": recipe.eval.rounds,
        },
        "stages": [
            {"method": s.method, "name": s.name, "config": config_to_dict(s.config)}
            for s in recipe.stages
        ],
    }


def recipe_to_yaml(recipe: Recipe) -> str:
    import yaml

    return str(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def recipe_hash(recipe: Recipe) -> str:
    """A stable digest of what shapes the models (seed and stages), used to resume safely.

    Targets, measurement settings and the name are left out: changing them does not make the
    checkpoints of completed stages wrong.
    """
    data = recipe_to_dict(recipe)
    canonical = json.dumps(
        {"seed": data["seed"], "stages": data["stages"]}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
