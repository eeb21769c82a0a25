"""Writes for sensitivity analyses: create (validated, queued on commit), the runner's state
changes, and turning a finished analysis into a ``channel_pruning`` stage."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from compression.errors import ConfigError
from compression.sensitivity import (
    DEFAULT_RATIOS,
    IMPORTANCES,
    SensitivityResult,
    check_ratios,
    ratios_within,
)
from webapp.accounts.models import Organization, User
from webapp.catalog.models import Dataset, ModelVersion
from webapp.jobs.errors import JobInputError, JobStateError
from webapp.jobs.wizard_checks import pick_problems
from webapp.sensitivity.models import AnalysisStatus, SensitivityAnalysis
from workers.celery import app as celery_app

SENSITIVITY_RUN_TASK = "edgeslim.sensitivity_run"
MAX_ATTEMPTS = 3


def _enqueue(analysis: SensitivityAnalysis) -> None:
    celery_app.send_task(SENSITIVITY_RUN_TASK, args=(analysis.pk,), queue="cpu")


def analysis_create(
    *,
    organization: Organization,
    user: User | None,
    model_version: ModelVersion,
    dataset: Dataset,
    ratios: Any = DEFAULT_RATIOS,
    importance: str = "l1",
    round_to: int = 1,
) -> SensitivityAnalysis:
    """Check the inputs, save the analysis and queue it when the transaction commits.

    Raises:
        JobInputError: a version or data set of another organisation, not ready, not a torch
            model, not fitting each other, or bad ratios / importance / round_to.
    """
    if model_version.organization_id != organization.pk:
        raise JobInputError("no such model version", field="model_version")
    if dataset.organization_id != organization.pk:
        raise JobInputError("no such dataset", field="dataset")
    if not model_version.is_ready:
        raise JobInputError(
            f"model version is {model_version.status}, not ready", field="model_version"
        )
    if not dataset.is_ready:
        raise JobInputError(f"dataset is {dataset.status}, not ready", field="dataset")
    if model_version.format != "torch":
        raise JobInputError(
            f"layer sensitivity prunes channels of a PyTorch model; this version is "
            f"{model_version.format}",
            field="model_version",
        )
    for problem in pick_problems(model_version, dataset):
        raise JobInputError(problem.message, field=problem.field)
    if not isinstance(ratios, (list, tuple)):
        raise JobInputError("must be a list of numbers, e.g. [0.25, 0.5, 0.75]", field="ratios")
    try:
        checked = check_ratios(ratios)
    except ConfigError as exc:
        raise JobInputError(exc.message, field="ratios") from None
    if importance not in IMPORTANCES:
        raise JobInputError(f"must be one of {', '.join(IMPORTANCES)}", field="importance")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or not 1 <= round_to <= 64:
        raise JobInputError("must be an integer from 1 to 64", field="round_to")
    with transaction.atomic():
        analysis = SensitivityAnalysis.objects.create(
            organization=organization,
            model_version=model_version,
            dataset=dataset,
            ratios=list(checked),
            importance=importance,
            round_to=round_to,
            message="queued",
            created_by=user,
        )
        transaction.on_commit(lambda: _enqueue(analysis))
    return analysis


def analysis_start(*, pk: int) -> SensitivityAnalysis | None:
    """Mark the analysis RUNNING and count the attempt; None when there is nothing to run (it
    finished, or earlier attempts used them all up, which fails it)."""
    with transaction.atomic():
        analysis = SensitivityAnalysis.objects.select_for_update().filter(pk=pk).first()
        if analysis is None or analysis.is_terminal:
            return None
        if analysis.attempts >= MAX_ATTEMPTS:
            analysis.status = AnalysisStatus.FAILED
            analysis.error = f"gave up after {analysis.attempts} attempts (the worker died)"
            analysis.finished_at = timezone.now()
            analysis.save(update_fields=["status", "error", "finished_at"])
            return None
        analysis.status = AnalysisStatus.RUNNING
        analysis.attempts = F("attempts") + 1
        analysis.started_at = timezone.now()
        analysis.message = "starting"
        analysis.save(update_fields=["status", "attempts", "started_at", "message"])
    analysis.refresh_from_db()
    return analysis


def analysis_progress(*, pk: int, progress: float, message: str) -> None:
    SensitivityAnalysis.objects.filter(pk=pk, status=AnalysisStatus.RUNNING).update(
        progress=max(0.0, min(1.0, progress)), message=message[:500]
    )


def analysis_finish(*, pk: int, result: dict[str, Any] | None = None, error: str = "") -> None:
    status = AnalysisStatus.FAILED if error else AnalysisStatus.SUCCEEDED
    SensitivityAnalysis.objects.filter(pk=pk).update(
        status=status,
        result=result,
        error=error,
        progress=1.0 if not error else F("progress"),
        message="done" if not error else "failed",
        finished_at=timezone.now(),
    )


def analysis_stage(*, analysis: SensitivityAnalysis, max_drop: float) -> dict[str, Any]:
    """A ``channel_pruning`` stage whose ``layer_ratios`` give each layer the largest ratio
    whose val accuracy drop stays within ``max_drop`` points.

    Raises:
        JobStateError: the analysis has not succeeded.
        JobInputError: a bad tolerance, or one that no layer meets.
    """
    if analysis.status != AnalysisStatus.SUCCEEDED or not analysis.result:
        raise JobStateError(f"the analysis is {analysis.status}, not finished", field="analysis")
    result = SensitivityResult.from_dict(analysis.result)
    try:
        ratios = ratios_within(result, max_drop)
    except ConfigError as exc:
        raise JobInputError(exc.message, field="max_drop") from None
    if not ratios:
        raise JobInputError(
            f"no layer stays within {max_drop:g} points at any ratio; allow a larger drop",
            field="max_drop",
        )
    return {
        "method": "channel_pruning",
        "config": {
            "importance": result.importance,
            "layer_ratios": ratios,
            "round_to": result.round_to,
            "max_layer_ratio": max(0.9, *ratios.values()),
        },
    }
