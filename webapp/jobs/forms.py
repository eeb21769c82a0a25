"""Wizard forms. The per-stage parameter forms are generated from the method registry: each
config field becomes a form field with its help text, bounds or choices, and its default."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q

from compression.registry import MAPPING_TYPE, ParamSpec, get_method, list_methods
from webapp.accounts.models import Organization
from webapp.catalog import selectors as catalog_selectors
from webapp.catalog.models import ModelVersion
from webapp.jobs.presets import PRESETS, BuiltPreset
from webapp.jobs.wizard_checks import pick_problems

MAX_CUSTOM_STAGES = 5
BASIC_PARAMS = 4  # parameters of each method shown before "Advanced"


def _ready_versions(org: Organization, *, derived: bool, keep: int | None) -> Any:
    """Ready versions; versions a job produced only when asked for (or the one already picked),
    so the picker does not grow by two entries per job."""
    qs = catalog_selectors.model_version_list(organization=org, status="ready")
    if not derived:
        keep_q = Q(pk=keep) if keep else Q(pk__in=[])
        qs = qs.filter(Q(produced_by_job_id__isnull=True) | keep_q)
    return qs.order_by("-is_builtin", "asset__name", "number")


def _ready_datasets(org: Organization) -> Any:
    return catalog_selectors.dataset_list(organization=org, status="ready")


def version_label(v: ModelVersion) -> str:
    """How the picker names a version: model, number, label, format, and where it came from."""
    zoo = (v.info or {}).get("zoo") if isinstance(v.info, dict) else None
    origin = "built-in" if v.is_builtin else (
        f"from job {v.produced_by_job_id}" if v.produced_by_job_id
        else "new from the zoo, untrained" if isinstance(zoo, dict) and zoo.get("untrained")
        else "uploaded"
    )  # fmt: skip
    label = f" ({v.label})" if v.label else ""
    task = f" · {v.task}" if v.task and v.task != "classification" else ""
    return f"{v.asset.name} v{v.number}{label} · {v.format}{task} · {origin}"


class PickForm(forms.Form):
    """Step 1: the model version and the dataset (ready ones of this organisation only), refused
    here when they do not fit together (classes, channels, task) or no method fits the model."""

    model_version: forms.ModelChoiceField[Any] = forms.ModelChoiceField(
        queryset=None, empty_label=None
    )
    dataset: forms.ModelChoiceField[Any] = forms.ModelChoiceField(queryset=None, empty_label=None)

    def __init__(
        self, *args: Any, organization: Organization, derived: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        picked = (kwargs.get("initial") or {}).get("model_version")
        versions = _ready_versions(organization, derived=derived, keep=picked)
        self.fields["model_version"].queryset = versions  # type: ignore[attr-defined]
        self.fields["dataset"].queryset = _ready_datasets(organization)  # type: ignore[attr-defined]
        self.fields["model_version"].label_from_instance = version_label  # type: ignore[attr-defined]
        self.fields["model_version"].help_text = (
            "Uploaded and built-in versions; versions your jobs produced are listed with "
            "“Show derived versions”."
            if not derived
            else "Every ready version, including those your jobs produced."
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        version, dataset = data.get("model_version"), data.get("dataset")
        if version is not None and dataset is not None:
            for problem in pick_problems(version, dataset):
                self.add_error(problem.field, problem.message)
        return data


def methods_for_model(task: str | None = None, fmt: str | None = None) -> list[str]:
    """Methods a stage of a recipe on a ``task`` model in format ``fmt`` can use: those whose
    registry scope includes the task, and for an ONNX model those that take ONNX (a torch
    model's later stages may follow an ONNX-making one, so every format stays offered there;
    the recipe check refuses a wrong order before launch)."""
    out = []
    for m in list_methods():
        if task is not None and task not in m.scope.tasks:
            continue
        if fmt == "onnx" and "onnx" not in m.scope.inputs:
            continue
        out.append(m.name)
    return out


def _method_choices(
    blank: bool, *, task: str | None = None, fmt: str | None = None
) -> list[tuple[str, str]]:
    allowed = set(methods_for_model(task, fmt))
    choices = [(m.name, f"{m.name}: {m.summary}") for m in list_methods() if m.name in allowed]
    return ([("", "—")] if blank else []) + choices


class GoalForm(forms.Form):
    """Step 2: a goal preset built for the model (those that cannot run on it are refused), or
    custom stages in order, offering only the methods whose scope includes the model's task
    (and, for an ONNX model, its format); the target device is one of the organisation's
    registered devices."""

    goal = forms.ChoiceField(
        choices=[(p.key, p.title) for p in PRESETS.values()],
        widget=forms.RadioSelect,
        initial="smallest",
    )
    target_device = forms.ChoiceField(
        required=False,
        choices=[("", "— no particular device —")],
        help_text="The registered device you will deploy to: “fastest” tunes int8 quantization "
        "for it, and the report names it.",
    )

    def __init__(
        self,
        *args: Any,
        presets: list[BuiltPreset] | None = None,
        devices: list[tuple[str, str]] | None = None,
        task: str | None = None,
        fmt: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.presets = {p.key: p for p in presets or []}
        device_field: forms.ChoiceField = self.fields["target_device"]  # type: ignore[assignment]
        device_field.choices = [("", "— no particular device —"), *(devices or [])]
        for i in range(MAX_CUSTOM_STAGES):
            self.fields[f"stage_{i}"] = forms.ChoiceField(
                choices=_method_choices(blank=True, task=task, fmt=fmt),
                required=False,
                label=f"Custom stage {i + 1}",
                help_text=f"Methods that work on {task} models." if task and i == 0 else "",
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("goal") == "custom" and not self.custom_stages():
            raise ValidationError("Pick at least one stage for a custom recipe.")
        built = self.presets.get(data.get("goal") or "")
        if built is not None and built.unavailable:
            self.add_error(
                "goal", f"“{built.preset.title}” does not fit this model: {built.unavailable}."
            )
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
    elif p.type == MAPPING_TYPE:
        # A JSON object of names to numbers; the recipe check validates names and values.
        field = forms.JSONField(
            required=False, widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"})
        )
        help_text += ' (JSON, e.g. {"features.3": 0.5}; blank: none)'
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
        params = self.spec.params()
        for p in params:
            self.fields[p.name] = field_for_param(p, values.get(p.name, p.default))
        # Basic: the method's first few parameters, and any the preset (or the user) set to
        # something other than its default; the rest wait behind "Advanced".
        self.basic_names = {p.name for p in params[:BASIC_PARAMS]} | {
            p.name for p in params if p.name in values and values[p.name] != p.default
        }

    @property
    def basic_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name in self.basic_names]

    @property
    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in self.basic_names]

    @property
    def advanced_has_errors(self) -> bool:
        return self.is_bound and any(f.errors for f in self.advanced_fields)

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

    def __init__(self, *args: Any, task: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if task == "detection":  # the contract: accuracy holds mAP@0.5 in percent
            field = self.fields["max_accuracy_drop"]
            field.label = "Max mAP@0.5 drop"
            field.help_text = (
                "The largest test mAP@0.5 drop allowed, in percentage points (blank: no limit)."
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
