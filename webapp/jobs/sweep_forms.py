"""The wizard's "run as a sweep" option on the review step: up to two stage parameters with
their values (comma separated, typed by the registry), and the recommendation's constraints."""

from __future__ import annotations

from typing import Any

from django import forms

from compression.registry import get_method
from compression.sweep import MAX_SWEEP_POINTS


def _param_choices(stages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    choices = [("", "— a single job, no sweep —")]
    for i, stage in enumerate(stages):
        method = stage.get("method", "")
        try:
            params = get_method(method).params()
        except Exception:  # an unknown method: the recipe check reports it
            continue
        for p in params:
            if p.type in ("int", "float", "str", "bool"):
                choices.append((f"{i}.{p.name}", f"stage {i + 1} {method}: {p.name}"))
    return choices


def _typed(stages: list[dict[str, Any]], key: str, text: str) -> list[Any]:
    """Comma-separated values, each converted to the parameter's type."""
    index, _, name = key.partition(".")
    spec = next(p for p in get_method(stages[int(index)]["method"]).params() if p.name == name)
    out: list[Any] = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        try:
            if spec.type == "int":
                out.append(int(raw))
            elif spec.type == "float":
                out.append(float(raw))
            elif spec.type == "bool":
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                out.append(raw.lower() in ("true", "1", "yes"))
            else:
                out.append(raw)
        except ValueError:
            raise forms.ValidationError(f"{raw!r} is not a {spec.type} value of {name}.") from None
    return out


class SweepForm(forms.Form):
    """Blank parameter 1: launch one job. Set: launch a sweep over the grid."""

    param_1 = forms.ChoiceField(required=False, label="Sweep parameter 1")
    values_1 = forms.CharField(
        required=False,
        max_length=1000,
        help_text="Comma separated, e.g. 2, 4, 8, 16 or l1, bn_scale.",
    )
    param_2 = forms.ChoiceField(required=False, label="Sweep parameter 2")
    values_2 = forms.CharField(required=False, max_length=1000)
    max_accuracy_drop = forms.FloatField(
        required=False, min_value=0, help_text="Recommend only versions losing at most this (pt)."
    )
    device = forms.ChoiceField(required=False, label="Latency measured on")
    max_p50_ms = forms.FloatField(
        required=False, min_value=0, help_text="… and whose p50 there is at most this (ms)."
    )

    def __init__(
        self, *args: Any, stages: list[dict[str, Any]], devices: list[tuple[str, str]], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.stages = stages
        choices = _param_choices(stages)
        self.fields["param_1"].choices = choices  # type: ignore[attr-defined]
        self.fields["param_2"].choices = choices  # type: ignore[attr-defined]
        self.fields["device"].choices = [("", "the host (worker CPU)"), *devices]  # type: ignore[attr-defined]
        self.fields["param_1"].help_text = (
            f"Run the recipe once per combination (at most {MAX_SWEEP_POINTS}), sharing one "
            "baseline measurement; the sweep page draws the Pareto front as points finish."
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        grid: dict[str, list[Any]] = {}
        for n in ("1", "2"):
            key, text = data.get(f"param_{n}") or "", data.get(f"values_{n}") or ""
            if not key:
                if text.strip():
                    self.add_error(f"param_{n}", "Pick the parameter these values are for.")
                continue
            try:
                values = _typed(self.stages, key, text)
            except forms.ValidationError as exc:
                self.add_error(f"values_{n}", exc)
                continue
            if not values:
                self.add_error(f"values_{n}", "Give at least one value.")
            elif key in grid:
                self.add_error(f"param_{n}", "This parameter is already swept.")
            else:
                grid[key] = values
        if not grid and data.get("param_2"):
            self.add_error("param_1", "Pick the first parameter first.")
        data["grid"] = grid
        return data

    def constraints(self) -> dict[str, Any]:
        d = self.cleaned_data
        return {
            k: d.get(k)
            for k in ("max_accuracy_drop", "device", "max_p50_ms")
            if d.get(k) not in (None, "")
        }
