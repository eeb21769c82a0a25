"""Writes for sweeps: create (the grid checked before anything is saved), cancel, and the shared
baseline's lifecycle (measuring, measured: queue the children; failed: fail them).

Keyword-only and typed; the sweep views, the API and the baseline runner call these.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from compression.errors import ConfigError
from compression.sweep import SweepGrid, parse_grid
from webapp.accounts.models import Organization, User
from webapp.catalog.models import Dataset, ModelVersion
from webapp.jobs import services as job_services
from webapp.jobs.errors import JobInputError, JobStateError
from webapp.jobs.models import Job, JobStatus, Sweep, SweepBaseline
from webapp.jobs.recipes import recipe_check
from workers.celery import app as celery_app

logger = logging.getLogger(__name__)

# The Celery task that measures a sweep's baseline (webapp/jobs/tasks.py), sent by name.
SWEEP_BASELINE_TASK = "edgeslim.sweep_baseline"
PREFER_CHOICES = ("latency", "accuracy", "size")


def sweep_send(*, sweep_id: int, kind: str, payload: dict[str, Any] | None = None) -> None:
    """Tell the sweep's live pages something changed (after commit); never raises."""

    def send() -> None:
        try:
            layer = get_channel_layer()
            if layer is not None:
                async_to_sync(layer.group_send)(
                    job_services.sweep_group_name(sweep_id),
                    {"type": job_services.SWEEP_EVENT_TYPE, "kind": kind, **(payload or {})},
                )
        except Exception:  # the broker being down must not fail the sweep
            logger.warning("sweep %s: broadcasting %s failed", sweep_id, kind, exc_info=True)

    transaction.on_commit(send)


def grid_check(recipe: dict[str, Any] | str, grid: Any) -> SweepGrid:
    """The grid expanded against ``recipe``, or :class:`JobInputError` naming ``grid``."""
    try:
        return parse_grid(recipe, grid)
    except ConfigError as exc:
        if not exc.field.startswith("grid"):
            raise JobInputError(exc.message, field=f"recipe.{exc.field}") from None
        # "grid.lr" or "grid (lr=7): stages[0].config.lr": the part after "grid" says where.
        where = exc.field[4:].lstrip(".").strip()
        message = f"{where}: {exc.message}" if where else exc.message
        raise JobInputError(message, field="grid") from None


def constraints_clean(raw: Any) -> dict[str, Any]:
    """``{max_accuracy_drop, device, max_p50_ms, prefer}`` checked (numbers >= 0), blanks out.

    Raises:
        JobInputError: a value that is not a number, negative, or an unknown ``prefer``.
    """
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        raise JobInputError("must be an object", field="constraints")
    unknown = set(raw) - {"max_accuracy_drop", "device", "max_p50_ms", "prefer"}
    if unknown:
        raise JobInputError(
            f"unknown constraint(s): {', '.join(sorted(unknown))}; use max_accuracy_drop, "
            "device, max_p50_ms and prefer",
            field="constraints",
        )
    out: dict[str, Any] = {}
    for key in ("max_accuracy_drop", "max_p50_ms"):
        value = raw.get(key)
        if value in (None, ""):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise JobInputError(
                f"must be a number, not {value!r}", field=f"constraints.{key}"
            ) from None
        if not number >= 0:
            raise JobInputError("must be 0 or more", field=f"constraints.{key}")
        out[key] = number
    device = str(raw.get("device") or "").strip()
    if device:
        out["device"] = device[:200]
    prefer = str(raw.get("prefer") or "").strip()
    if prefer:
        if prefer not in PREFER_CHOICES:
            raise JobInputError(
                f"must be one of {', '.join(PREFER_CHOICES)}", field="constraints.prefer"
            )
        out["prefer"] = prefer
    return out


def sweep_create(
    *,
    organization: Organization,
    user: User | None,
    model_version: ModelVersion,
    dataset: Dataset,
    recipe: dict[str, Any] | str,
    grid: Any,
    name: str = "",
    constraints: dict[str, Any] | None = None,
    queue: str = "auto",
) -> Sweep:
    """Check the recipe and the grid, save the Sweep and one child Job per grid point, and
    queue the baseline measurement on commit (the children follow once it is measured).

    Raises:
        JobInputError: the model, data set, recipe, grid or constraints are unusable; nothing
            is saved or queued.
    """
    checked = recipe_check(recipe, model_version=model_version, dataset=dataset)
    if (dataset.task or "classification") != "classification":
        # The sweep's shared baseline is measured by sweep_runner, which reads classification
        # data sets only so far: refuse here rather than fail the baseline later.
        raise JobInputError(
            f"{dataset.name!r} is a {dataset.task} data set; sweeps run on classification "
            "data sets only so far (run single jobs on it)",
            field="dataset",
        )
    expanded = grid_check(checked.data, grid)
    cleaned = constraints_clean(constraints)
    name = (name or checked.name or f"sweep of {model_version.asset.name}").strip()[:200]
    with transaction.atomic():
        sweep = Sweep.objects.create(
            organization=organization,
            name=name,
            model_version=model_version,
            dataset=dataset,
            recipe=checked.data,
            recipe_yaml=checked.yaml,
            grid=expanded.to_dict(),
            constraints=cleaned,
            queue=job_services._queue_for(queue),
            message="queued: the baseline is measured first",
            created_by=user,
        )
        for point in expanded.points:
            # job_create checks each child against the model too (a method's check_model hook).
            job_services.job_create(
                organization=organization,
                user=user,
                model_version=model_version,
                dataset=dataset,
                recipe=point.recipe,
                name=f"{name} [{point.label}]",
                queue=sweep.queue,
                sweep=sweep,
                sweep_point=point.values,
            )
        transaction.on_commit(lambda: _enqueue_baseline(sweep))
    return sweep


def _enqueue_baseline(sweep: Sweep) -> None:
    celery_app.send_task(SWEEP_BASELINE_TASK, args=(sweep.pk,), queue=sweep.queue)


def sweep_cancel(*, sweep: Sweep, user: User | None = None) -> Sweep:
    """Cancel every child that has not finished, and the baseline if it is still measured.

    Raises:
        JobStateError: nothing is left to cancel.
    """
    with transaction.atomic():
        locked = Sweep.objects.select_for_update().get(pk=sweep.pk)
        active = list(
            Job.objects.filter(sweep=locked).exclude(
                status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
            )
        )
        if locked.cancel_requested or (
            not active and locked.baseline_status in (SweepBaseline.DONE, SweepBaseline.FAILED)
        ):
            raise JobStateError("the sweep has nothing left to cancel", field="status")
        locked.cancel_requested = True
        locked.message = "cancelling…"
        locked.save(update_fields=["cancel_requested", "message"])
        for job in active:
            job_services.job_cancel(job=job, user=user)
        sweep_send(sweep_id=locked.pk, kind="status", payload={"message": locked.message})
    return locked


# --- the shared baseline (called by webapp/jobs/sweep_runner.py) -------------------------------


def sweep_baseline_start(*, sweep_id: int) -> Sweep | None:
    """Mark the baseline as being measured; ``None`` when there is nothing to measure (already
    measured, failed, or the sweep was cancelled)."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().filter(pk=sweep_id).first()
        if sweep is None or sweep.baseline_status in (SweepBaseline.DONE, SweepBaseline.FAILED):
            return None
        if sweep.cancel_requested:
            _baseline_failed(sweep, "cancelled before the baseline was measured", cancelled=True)
            return None
        sweep.baseline_status = SweepBaseline.MEASURING
        sweep.message = "measuring the baseline"
        sweep.save(update_fields=["baseline_status", "message"])
        sweep_send(sweep_id=sweep.pk, kind="status", payload={"message": sweep.message})
    return sweep


def sweep_baseline_progress(*, sweep_id: int, fraction: float, message: str) -> bool:
    """Write the measurement's progress; returns whether the sweep was cancelled."""
    Sweep.objects.filter(pk=sweep_id).update(
        progress=max(0.0, min(1.0, float(fraction))), message=message[:500]
    )
    sweep_send(sweep_id=sweep_id, kind="progress", payload={"progress": fraction})
    return bool(
        Sweep.objects.filter(pk=sweep_id).values_list("cancel_requested", flat=True).first()
    )


def sweep_baseline_done(*, sweep_id: int, baseline: dict[str, Any]) -> Sweep:
    """Store the measured baseline and queue every child still waiting for it."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().get(pk=sweep_id)
        sweep.baseline = baseline
        sweep.baseline_status = SweepBaseline.DONE
        sweep.progress = 1.0
        sweep.message = "baseline measured; running the children"
        sweep.error = ""
        sweep.save(update_fields=["baseline", "baseline_status", "progress", "message", "error"])
        for job in Job.objects.filter(sweep=sweep, status=JobStatus.QUEUED).order_by("id"):
            job_services.job_enqueue(job=job)
        sweep_send(sweep_id=sweep.pk, kind="status", payload={"message": sweep.message})
    return sweep


def _baseline_failed(sweep: Sweep, reason: str, *, cancelled: bool = False) -> None:
    sweep.baseline_status = SweepBaseline.FAILED
    sweep.error = "" if cancelled else reason
    sweep.message = reason if cancelled else "the baseline could not be measured"
    sweep.save(update_fields=["baseline_status", "error", "message"])
    for job in Job.objects.filter(sweep=sweep, status=JobStatus.QUEUED):
        if cancelled:
            job_services.job_cancel(job=job)
        else:
            job_services.job_fail_queued(
                job_id=job.pk, error=f"the sweep's shared baseline could not be measured: {reason}"
            )
    sweep_send(sweep_id=sweep.pk, kind="status", payload={"message": sweep.message})


def sweep_baseline_failed(*, sweep_id: int, reason: str, cancelled: bool = False) -> None:
    """The baseline could not be measured (or was cancelled): the waiting children end too."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().get(pk=sweep_id)
        _baseline_failed(sweep, reason, cancelled=cancelled)
