"""Sweep grids: one recipe run over every combination of up to two stage parameters.

Pure recipe logic (no Django): a grid is checked against the method registry's config
dataclasses and expanded into one validated recipe per point before anything runs, so the web
app, its API and the CLI refuse a bad grid the same way.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compression.errors import ConfigError
from compression.recipe import parse_recipe, recipe_to_dict
from compression.registry import get_method

MAX_SWEEP_POINTS = 64
MAX_SWEEP_PARAMS = 2


@dataclass(frozen=True)
class GridAxis:
    """One swept parameter: ``stage`` (its index in the recipe), ``param`` and its values."""

    stage: int
    method: str
    param: str
    values: tuple[Any, ...]

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.param}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "method": self.method,
            "param": self.param,
            "values": list(self.values),
        }


@dataclass(frozen=True)
class SweepPoint:
    """One child of a sweep: its values by parameter name and its full, validated recipe."""

    index: int
    values: dict[str, Any]
    recipe: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class SweepGrid:
    axes: tuple[GridAxis, ...]
    points: tuple[SweepPoint, ...]

    def to_dict(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.axes]


def _split_key(key: str) -> tuple[int | None, str]:
    """``"importance"`` or ``"0.importance"`` (stage index first)."""
    head, dot, tail = key.partition(".")
    if dot and head.isdigit():
        return int(head), tail
    return None, key


def _axes_from(grid: Any) -> list[tuple[str, Any]]:
    """Accept ``{"param": [values]}`` or ``[{"param": ..., "values": [...], "stage": n}]``."""
    if isinstance(grid, Mapping):
        return [(str(k), v) for k, v in grid.items()]
    if isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        out = []
        for i, item in enumerate(grid):
            if not isinstance(item, Mapping) or "param" not in item or "values" not in item:
                raise ConfigError(
                    f"grid[{i}]",
                    "each grid entry needs 'param' and 'values' (and may name 'stage')",
                )
            stage = item.get("stage")
            key = f"{stage}.{item['param']}" if stage is not None else str(item["param"])
            out.append((key, item["values"]))
        return out
    raise ConfigError(
        "grid", "must map a stage parameter to its values, e.g. {importance: [l1, bn_scale]}"
    )


def parse_grid(recipe: Mapping[str, Any] | str, grid: Any) -> SweepGrid:
    """Check ``grid`` against ``recipe``'s stages and the registry, and expand it.

    Raises:
        ConfigError: no parameter, more than two, a parameter no stage's method has, an empty
            or repeated value list, more than :data:`MAX_SWEEP_POINTS` points, or a value the
            method's config refuses (the field names the point and the parameter).
    """
    base = recipe_to_dict(parse_recipe(recipe))
    stages = base["stages"]
    raw = _axes_from(grid)
    if not raw:
        raise ConfigError("grid", "name at least one parameter to sweep")
    if len(raw) > MAX_SWEEP_PARAMS:
        raise ConfigError(
            "grid",
            f"a sweep varies at most {MAX_SWEEP_PARAMS} parameters; got {len(raw)} "
            f"({', '.join(k for k, _ in raw)})",
        )
    axes: list[GridAxis] = []
    for key, values in raw:
        index, param = _split_key(key)
        if index is not None and not 0 <= index < len(stages):
            raise ConfigError(
                f"grid.{key}", f"the recipe has {len(stages)} stage(s); there is no stage {index}"
            )
        candidates = [index] if index is not None else list(range(len(stages)))
        having = [
            i
            for i in candidates
            if param in {p.name for p in get_method(stages[i]["method"]).params()}
        ]
        if not having:
            where = [stages[i]["method"] for i in candidates]
            known = sorted(
                {p.name for i in candidates for p in get_method(stages[i]["method"]).params()}
            )
            raise ConfigError(
                f"grid.{key}",
                f"{' / '.join(where)} has no parameter {param!r}; it has: {', '.join(known)}",
            )
        if len(having) > 1:
            raise ConfigError(
                f"grid.{key}",
                f"stages {', '.join(map(str, having))} all have {param!r}; name one as "
                f"'<stage>.{param}' (e.g. '{having[0]}.{param}')",
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(f"grid.{key}", "must be a list of values")
        if not values:
            raise ConfigError(f"grid.{key}", "give at least one value")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"grid.{key}", "a value is listed twice")
        stage = having[0]
        if any(a.stage == stage and a.param == param for a in axes):
            raise ConfigError(f"grid.{key}", "this parameter is already swept")
        axes.append(GridAxis(stage, stages[stage]["method"], param, tuple(values)))
    count = 1
    for a in axes:
        count *= len(a.values)
    if count > MAX_SWEEP_POINTS:
        sizes = " x ".join(str(len(a.values)) for a in axes)
        raise ConfigError(
            "grid", f"{sizes} = {count} points; a sweep runs at most {MAX_SWEEP_POINTS}"
        )
    named_twice = len({a.param for a in axes}) != len(axes)
    points: list[SweepPoint] = []
    for n, combo in enumerate(itertools.product(*(a.values for a in axes))):
        child = json.loads(json.dumps(base))
        point: dict[str, Any] = {}
        for a, value in zip(axes, combo, strict=True):
            child["stages"][a.stage]["config"][a.param] = value
            point[a.key if named_twice else a.param] = value
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        child["name"] = f"{base.get('name') or 'sweep'} [{label}]"[:200]
        try:
            parsed = parse_recipe(child)
        except ConfigError as exc:
            raise ConfigError(f"grid ({label}): {exc.field}", exc.message) from None
        points.append(SweepPoint(n, point, recipe_to_dict(parsed)))
    return SweepGrid(tuple(axes), tuple(points))
