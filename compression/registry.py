"""The method registry: every compression method is a plug-in with a frozen, typed config.

The wizard's forms, the REST API's schema, the CLI's recipe validation and the docs' method
table are all generated from what is registered here, so a method's parameters are written once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

from compression.errors import ConfigError, StageScopeError, UnknownMethodError, quote

if TYPE_CHECKING:
    from compression.model_facts import ModelFacts

ModelFormat = Literal["torch", "onnx"]
MAPPING_TYPE = "dict[str, float]"
TaskType = Literal["classification", "detection"]

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])
# ``check_model(facts, config)`` raises ConfigError (field relative to the stage, e.g.
# ``config.importance``) when the method cannot run on the model as far as it is known.
ModelCheck = Callable[["ModelFacts", Any], None]


def param(
    default: Any,
    *,
    help: str,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare one config field: its default, its bounds or choices, and one line of help."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """One config field as the forms, the API schema and the docs see it."""

    name: str
    type: str  # "int" | "float" | "bool" | "str" | "dict[str, float]"
    default: Any
    help: str
    optional: bool = False
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class MethodScope:
    """What a method accepts and what it leaves behind."""

    inputs: frozenset[ModelFormat]
    tasks: frozenset[TaskType]
    output: ModelFormat | None  # None: the output format equals the input format


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    summary: str
    config_cls: type[Any]
    scope: MethodScope
    run: Callable[..., Any]  # (ctx: StageContext, config) -> StageResult
    check_model: ModelCheck | None = None  # refuses a model before anything runs

    def params(self) -> list[ParamSpec]:
        return config_params(self.config_cls)

    def output_format(self, input_format: ModelFormat) -> ModelFormat:
        return self.scope.output or input_format


_METHODS: dict[str, MethodSpec] = {}


def task_refusal(
    method: str, tasks: frozenset[TaskType] | tuple[TaskType, ...], task: TaskType
) -> str:
    """The message refusing a ``task`` model to a method declared for ``tasks``."""
    allowed = " and ".join(sorted(tasks))
    return (
        f"{method} supports {allowed} models; the model is a {task} model "
        f"(methods for {task}: {', '.join(m.name for m in list_methods(task=task)) or 'none'})"
    )


def _task_guard(
    name: str, tasks: frozenset[TaskType], fn: Callable[..., Any]
) -> Callable[..., Any]:
    """``fn`` refusing, before it does anything, a model of a task the method does not support
    (the recipe check refuses it earlier; this covers a direct call)."""

    def run(ctx: Any, config: Any) -> Any:
        task: Any = getattr(getattr(ctx, "model", None), "task", "classification")
        if task not in tasks:
            raise StageScopeError(task_refusal(name, tasks, task))
        return fn(ctx, config)

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    run.__doc__ = fn.__doc__
    return run


def register_method(
    name: str,
    *,
    config: type[Any],
    summary: str,
    inputs: tuple[ModelFormat, ...] = ("torch",),
    tasks: tuple[TaskType, ...] = ("classification",),  # the model tasks it works on
    output: ModelFormat | None = None,
    check_model: ModelCheck | None = None,
) -> Callable[[F], F]:
    """Register ``run(ctx, config) -> StageResult`` as the method ``name``.

    ``check_model(facts, config)`` is called by :func:`compression.recipe.check_recipe_for_model`
    before a job is queued or a run starts; it raises :class:`ConfigError` for a model the
    method cannot work on (its field is relative to the stage, e.g. ``config.importance``).
    """
    if not dataclasses.is_dataclass(config) or not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{name}: config must be a frozen dataclass")
    config_params(config)  # fail at import time on an undeclared field

    def decorator(fn: F) -> F:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        scope = MethodScope(frozenset(inputs), frozenset(tasks), output)
        _METHODS[name] = MethodSpec(
            name=name,
            summary=summary,
            config_cls=config,
            scope=scope,
            run=_task_guard(name, scope.tasks, fn),
            check_model=check_model,
        )
        return fn

    return decorator


def _ensure_builtin_methods() -> None:
    # Importing the package registers the built-in methods; deferred so that importing the
    # registry alone stays cheap and free of cycles.
    import compression.methods  # noqa: F401


def get_method(name: str) -> MethodSpec:
    _ensure_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise UnknownMethodError(f"unknown method {quote(name)}; known methods: {known}") from None


def list_methods(task: TaskType | None = None) -> list[MethodSpec]:
    """Every registered method by name; with ``task``, only those declared for that task
    (``tasks=`` of :func:`register_method`), which is what the wizard, API and CLI offer."""
    _ensure_builtin_methods()
    return [
        _METHODS[k] for k in sorted(_METHODS) if task is None or task in _METHODS[k].scope.tasks
    ]


# --- configs -------------------------------------------------------------------------------

_TYPE_NAMES: dict[Any, str] = {
    int: "int",
    float: "float",
    bool: "bool",
    str: "str",
    # A name -> number map (e.g. channel_pruning's per-layer ratios); bounds apply to each value.
    dict[str, float]: MAPPING_TYPE,
}
# Most entries a mapping parameter takes, and the longest key.
MAX_MAPPING_ENTRIES = 1000
MAX_MAPPING_KEY = 300


def _field_type(cls: type[Any], f: dataclasses.Field[Any]) -> tuple[str, bool]:
    hints = typing.get_type_hints(cls)
    tp = hints[f.name]
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) != len(get_args(tp))
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
        tp = args[0]
    if get_origin(tp) is Literal:
        values = get_args(tp)
        tp = type(values[0])
    if tp not in _TYPE_NAMES:
        raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
    return _TYPE_NAMES[tp], optional


def config_params(cls: type[Any]) -> list[ParamSpec]:
    """Describe a config class field by field."""
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with param(..., help=...)")
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: every field needs a default")
        type_name, optional = _field_type(cls, f)
        hints = typing.get_type_hints(cls)
        choices = f.metadata.get("choices")
        lit = hints[f.name]
        if get_origin(lit) in (typing.Union, types.UnionType):
            lit = next(a for a in get_args(lit) if a is not type(None))
        if choices is None and get_origin(lit) is Literal:
            choices = get_args(lit)
        out.append(
            ParamSpec(
                name=f.name,
                type=type_name,
                default=f.default,
                help=f.metadata["help"],
                optional=optional,
                ge=f.metadata.get("ge"),
                le=f.metadata.get("le"),
                gt=f.metadata.get("gt"),
                lt=f.metadata.get("lt"),
                choices=tuple(choices) if choices is not None else None,
            )
        )
    return out


def _coerce_mapping(p: ParamSpec, value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a mapping of names to numbers, got {quote(value)}")
    if len(value) > MAX_MAPPING_ENTRIES:
        raise ConfigError(where, f"has {len(value)} entries; at most {MAX_MAPPING_ENTRIES}")
    number = dataclasses.replace(p, type="float", optional=False)
    out: dict[str, float] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_MAPPING_KEY:
            raise ConfigError(
                where, f"keys must be names (1-{MAX_MAPPING_KEY} characters), got {quote(key)}"
            )
        out[key] = _coerce(number, item, f"{where}.{key}")
    return out


def _coerce(p: ParamSpec, value: Any, where: str) -> Any:
    if value is None:
        if p.optional:
            return None
        raise ConfigError(where, "must not be null")
    if p.type == MAPPING_TYPE:
        return _coerce_mapping(p, value, where)
    if p.type == "bool":
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {quote(value)}")
        return value
    if p.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(where, f"must be an integer, got {quote(value)}")
    elif p.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"must be a number, got {quote(value)}")
        value = float(value)
        if value != value:  # NaN
            raise ConfigError(where, "must be a number, got NaN")
    elif p.type == "str" and not isinstance(value, str):
        raise ConfigError(where, f"must be a string, got {quote(value)}")
    if p.choices is not None and value not in p.choices:
        allowed = ", ".join(repr(c) for c in p.choices)
        raise ConfigError(where, f"must be one of {allowed}, got {quote(value)}")
    if p.ge is not None and value < p.ge:
        raise ConfigError(where, f"must be >= {p.ge}, got {quote(value)}")
    if p.le is not None and value > p.le:
        raise ConfigError(where, f"must be <= {p.le}, got {quote(value)}")
    if p.gt is not None and value <= p.gt:
        raise ConfigError(where, f"must be > {p.gt}, got {quote(value)}")
    if p.lt is not None and value >= p.lt:
        raise ConfigError(where, f"must be < {p.lt}, got {quote(value)}")
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, *, where: str = "config") -> C:
    """Validate ``data`` against ``cls`` and build it; errors name the offending field."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(where, "must be a mapping")
    specs = {p.name: p for p in config_params(cls)}
    unknown = sorted(set(data) - set(specs))
    if unknown:
        known = ", ".join(specs) or "(none)"
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown parameter; known parameters: {known}")
    values = {k: _coerce(specs[k], v, f"{where}.{k}") for k, v in data.items()}
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()  # cross-field checks; raises ConfigError
    return obj


def config_to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def config_json_schema(cls: type[Any]) -> dict[str, Any]:
    """A JSON Schema for one config class (used by the REST API and the wizard)."""
    json_types = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    props: dict[str, Any] = {}
    for p in config_params(cls):
        s: dict[str, Any] = {"default": p.default, "description": p.help}
        # A mapping's bounds apply to its values.
        bounded: dict[str, Any] = s
        if p.type == MAPPING_TYPE:
            bounded = {"type": "number"}
            s.update(type="object", additionalProperties=bounded, maxProperties=MAX_MAPPING_ENTRIES)
        else:
            s["type"] = json_types[p.type]
        if p.optional:
            s["type"] = [s["type"], "null"]
        if p.choices is not None:
            s["enum"] = list(p.choices)
        for key, attr in (("minimum", p.ge), ("maximum", p.le)):
            if attr is not None:
                bounded[key] = attr
        if p.gt is not None:
            bounded["exclusiveMinimum"] = p.gt
        if p.lt is not None:
            bounded["exclusiveMaximum"] = p.lt
        props[p.name] = s
    return {"type": "object", "properties": props, "additionalProperties": False}
