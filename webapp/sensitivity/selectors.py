"""Reads for sensitivity analyses, always scoped to one organisation."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404

from compression.sensitivity import SensitivityResult
from webapp.accounts.models import Organization
from webapp.sensitivity.models import SensitivityAnalysis


def analysis_list(*, organization: Organization) -> Any:
    return SensitivityAnalysis.objects.filter(organization=organization).select_related(
        "model_version__asset", "dataset"
    )


def analysis_get(*, organization: Organization, pk: int) -> SensitivityAnalysis:
    """The analysis, or 404 (also for another organisation's id)."""
    found: SensitivityAnalysis = get_object_or_404(analysis_list(organization=organization), pk=pk)
    return found


def analysis_result(analysis: SensitivityAnalysis) -> SensitivityResult | None:
    return SensitivityResult.from_dict(analysis.result) if analysis.result else None


def analysis_rows(result: SensitivityResult) -> list[dict[str, Any]]:
    """One row per layer (module order): each ratio's channels left, val accuracy and drop."""
    return [
        {
            "name": layer.name,
            "kind": layer.kind,
            "channels": layer.channels,
            "cells": [
                {"ratio": r, "kept": kept, "val_acc": acc, "drop": drop}
                for r, kept, acc, drop in zip(
                    result.ratios, layer.kept, layer.val_acc, result.drop(layer), strict=True
                )
            ],
        }
        for layer in result.layers
    ]
