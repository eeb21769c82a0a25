"""Wizard forms. The per-stage parameter forms are generated from the method registry: each
config field becomes a form field with its help text, bounds or choices, and its default."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from compression.registry import ParamSpec, get_method, list_methods
from webapp.accounts.models import Organization
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs.presets import PRESETS

MAX_CUSTOM_STAGES = 5


def _ready_versions(org: Organization) -> Any:
    return catalog_selectors.model_version_list(organization=org, status="ready")


def _ready_datasets(org: Organization) -> Any:
    return catalog_selectors.dataset_list(organization=org, status="ready")


class PickForm(forms.Form):
    """Step 1: the model version and the dataset (ready ones of this organisation only)."""

    model_version: forms.ModelChoiceField[Any] = forms.ModelChoiceField(
        queryset=None, empty_label=None
    )
    dataset: forms.ModelChoiceField[Any] = forms.ModelChoiceField(queryset=None, empty_label=None)

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_version"].queryset = _ready_versions(organization)  # type: ignore[attr-defined]
        self.fields["dataset"].queryset = _ready_datasets(organization)  # type: ignore[attr-defined]
        self.fields["model_version"].label_from_instance = lambda v: (  # type: ignore[attr-defined]
            f"{v.asset.name} v{v.number}" + (f" ({v.label})" if v.label else "") + f" · {v.format}"
        )


def _method_choices(blank: bool) -> list[tuple[str, str]]:
    choices = [(m.name, f"{m.name}: {m.summary}") for m in list_methods()]
    return ([("", "—")] if blank else []) + choices


class GoalForm(forms.Form):
    """Step 2: a goal preset, or custom stages in order."""

    goal = forms.ChoiceField(
        choices=[(p.key, p.title) for p in PRESETS.values()],
        widget=forms.RadioSelect,
        initial="smallest",
    )
    target_device = forms.CharField(
        required=False,
        max_length=200,
        help_text="For “fastest”: the device you will deploy to (e.g. raspberry-pi-4, x86).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for i in range(MAX_CUSTOM_STAGES):
            self.fields[f"stage_{i}"] = forms.ChoiceField(
                choices=_method_choices(blank=True),
                required=False,
                label=f"Custom stage {i + 1}",
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("goal") == "custom" and not self.custom_stages():
            raise ValidationError("Pick at least one stage for a custom recipe.")
        return data

    def custom_stages(self) -> list[str]:
        return [
            self.cleaned_data[f"stage_{i}"]
            for i in range(MAX_CUSTOM_STAGES)
            if self.cleaned_data.get(f"stage_{i}")
        ]


def field_for_param(p: ParamSpec, initial: Any) -> forms.Field:
    """One registry parameter as a Django form field (help text, bounds, choices, default)."""
    help_text = p.help
    required = not p.optional
    field: forms.Field
    if p.choices is not None:
        field = forms.TypedChoiceField(
            choices=([("", "— none —")] if p.optional else []) + [(c, str(c)) for c in p.choices],
            coerce=_coercer(type(p.choices[0])),
            empty_value=None,
            required=required,
        )
    elif p.type == "bool":
        field = forms.BooleanField(required=False)
    elif p.type == "int":
        field = forms.IntegerField(
            required=required,
            min_value=int(p.ge) if p.ge is not None else None,
            max_value=int(p.le) if p.le is not None else None,
        )
    elif p.type == "float":
        field = forms.FloatField(required=required, min_value=p.ge, max_value=p.le)
        bounds = []
        if p.gt is not None:
            bounds.append(f"> {p.gt:g}")
            gt = p.gt
            field.validators.append(_exclusive(lambda v, b=gt: v > b, f"must be > {gt:g}"))
        if p.lt is not None:
            bounds.append(f"< {p.lt:g}")
            lt = p.lt
            field.validators.append(_exclusive(lambda v, b=lt: v < b, f"must be < {lt:g}"))
        if bounds:
            help_text += f" ({', '.join(bounds)})"
    else:
        field = forms.CharField(required=False, max_length=500)
    field.help_text = help_text
    field.label = p.name.replace("_", " ")
    field.initial = initial
    return field


def _coercer(kind: type[Any]) -> Any:
    def coerce(value: Any) -> Any:
        return kind(value)

    return coerce


def _exclusive(check: Any, message: str) -> Any:
    def validate(value: Any) -> None:
        if value is not None and not check(value):
            raise ValidationError(message)

    return validate


class StageConfigForm(forms.Form):
    """The parameters of one stage, generated from the method's registered config."""

    def __init__(
        self, *args: Any, method: str, initial_config: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.method = method
        self.spec = get_method(method)
        values = initial_config or {}
        for p in self.spec.params():
            self.fields[p.name] = field_for_param(p, values.get(p.name, p.default))

    def config(self) -> dict[str, Any]:
        """The cleaned values; blanks of optional parameters become null (the default)."""
        out: dict[str, Any] = {}
        for p in self.spec.params():
            value = self.cleaned_data.get(p.name)
            if p.type == "str" and p.choices is None and value == "":
                value = None if p.optional else ""
            out[p.name] = value
        return out


def stage_forms(stages: list[dict[str, Any]], data: Any = None) -> list[StageConfigForm]:
    return [
        StageConfigForm(data, method=s["method"], initial_config=s.get("config"), prefix=f"s{i}")
        for i, s in enumerate(stages)
    ]


class TargetsForm(forms.Form):
    """Step 4: what the run should achieve and what it is called."""

    name = forms.CharField(max_length=200, required=False, help_text="A name for the job.")
    max_accuracy_drop = forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=100.0,
        help_text="The largest accuracy drop allowed, in percentage points (blank: no limit).",
    )
    target_device = forms.CharField(
        required=False,
        max_length=200,
        help_text="Optional: the device the result is meant for (shown in the report).",
    )


class ReviewForm(forms.Form):
    """Step 5: the recipe as YAML, editable; validated on submit."""

    recipe_yaml = forms.CharField(widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false"}))


class RecipeFileForm(PickForm):
    """Launch from a recipe file (YAML or JSON)."""

    recipe_file = forms.FileField(help_text="A .yaml, .yml or .json recipe (at most 256 KiB).")

    def clean_recipe_file(self) -> str:
        f = self.cleaned_data["recipe_file"]
        if f.size > 256 * 1024:
            raise ValidationError("The recipe file is larger than 256 KiB.")
        try:
            return str(f.read().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValidationError("The recipe file is not UTF-8 text.") from exc
