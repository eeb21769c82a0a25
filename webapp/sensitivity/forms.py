"""Forms of the sensitivity pages: start an analysis, and pick an accuracy-drop tolerance."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from compression.sensitivity import DEFAULT_RATIOS, IMPORTANCES
from webapp.accounts.models import Organization
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs.forms import version_label


class AnalysisForm(forms.Form):
    model_version: forms.ModelChoiceField[Any] = forms.ModelChoiceField(
        queryset=None, empty_label=None, help_text="A ready PyTorch version."
    )
    dataset: forms.ModelChoiceField[Any] = forms.ModelChoiceField(queryset=None, empty_label=None)
    ratios = forms.CharField(
        initial=", ".join(f"{r:g}" for r in DEFAULT_RATIOS),
        max_length=200,
        help_text="Fractions of each layer's channels to remove, comma-separated (at most 10).",
    )
    importance = forms.ChoiceField(
        choices=[(i, i) for i in IMPORTANCES],
        initial="l1",
        help_text="How channels are ranked, as channel_pruning ranks them.",
    )
    round_to = forms.IntegerField(
        min_value=1,
        max_value=64,
        initial=1,
        help_text="Keep channel counts multiples of this, as the pruning stage will.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        versions = catalog_selectors.model_version_list(organization=organization, status="ready")
        field = self.fields["model_version"]
        field.queryset = versions.filter(format="torch").order_by("asset__name", "number")  # type: ignore[attr-defined]
        field.label_from_instance = version_label  # type: ignore[attr-defined]
        self.fields["dataset"].queryset = catalog_selectors.dataset_list(  # type: ignore[attr-defined]
            organization=organization, status="ready"
        )

    def clean_ratios(self) -> list[float]:
        out = []
        for part in str(self.cleaned_data["ratios"]).replace(";", ",").split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise ValidationError(f"“{part.strip()}” is not a number.") from None
        return out


class ToleranceForm(forms.Form):
    max_drop = forms.FloatField(
        min_value=0.0,
        max_value=100.0,
        initial=1.0,
        label="Allowed val accuracy drop per layer (points)",
    )
