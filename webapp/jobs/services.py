"""Writes for jobs: create (validated, then queued on commit), cancel, duplicate, events and the
lease a run holds. Keyword-only and typed; views, the API, the CLI's server side and the runner
call these."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from webapp.accounts.models import Organization, User
from webapp.catalog.models import Dataset, ModelVersion
from webapp.jobs.errors import JobInputError, JobStateError
from webapp.jobs.models import Job, JobEvent, JobEventKind, JobQueue, JobStatus, Sweep
from webapp.jobs.recipes import RecipeCheck, recipe_check
from webapp.live.services import org_event_send
from workers.celery import app as celery_app

logger = logging.getLogger(__name__)

JOB_EVENT_TYPE = "job.event"
# The Celery task that runs a job (webapp/jobs/tasks.py). Services send it by name: they never
# import the task module, which imports the runner, which imports these services.
JOB_RUN_TASK = "edgeslim.job_run"


def job_group_name(job_id: int) -> str:
    """The channel-layer group of one job's live pages: ``job.<id>``."""
    return f"job.{int(job_id)}"


SWEEP_EVENT_TYPE = "sweep.event"


def sweep_group_name(sweep_id: int) -> str:
    """The channel-layer group of one sweep's live pages: ``sweep.<id>``."""
    return f"sweep.{int(sweep_id)}"


# --- create, cancel, duplicate ---------------------------------------------------------------


def _queue_for(wants: str) -> str:
    """``gpu`` when the job may use CUDA (``auto`` or ``gpu``) and a GPU worker has reported in,
    else ``cpu``: a job is never left waiting on a queue nobody consumes."""
    from webapp.jobs.selectors import gpu_worker_available

    if wants not in {"auto", "gpu", "cpu"}:
        raise JobInputError("must be one of auto, gpu, cpu", field="queue")
    if wants != "cpu" and gpu_worker_available():
        return JobQueue.GPU
    return JobQueue.CPU


def _enqueue(job: Job) -> None:
    celery_app.send_task(JOB_RUN_TASK, args=(job.pk,), queue=job.queue)


def job_create(
    *,
    organization: Organization,
    user: User | None,
    model_version: ModelVersion,
    dataset: Dataset,
    recipe: dict[str, Any] | str,
    name: str = "",
    target_device: str = "",
    duplicated_from: Job | None = None,
    queue: str = "auto",
    sweep: Sweep | None = None,
    sweep_point: dict[str, Any] | None = None,
) -> Job:
    """Validate ``recipe`` for the model and data set, save the Job and queue it on commit.

    A sweep's child (``sweep``) is saved but not queued: the sweep queues its children once
    their shared baseline is measured (``webapp.jobs.sweep_services``).

    Raises:
        JobInputError: the model, data set or recipe is unusable; ``field`` names where.
    """
    if model_version.organization_id != organization.pk:
        raise JobInputError("no such model version", field="model_version")
    if dataset.organization_id != organization.pk:
        raise JobInputError("no such dataset", field="dataset")
    if not model_version.is_ready:
        raise JobInputError(
            f"model version is {model_version.status}, not ready"
            + (f": {model_version.error}" if model_version.error else ""),
            field="model_version",
        )
    if not dataset.is_ready:
        raise JobInputError(
            f"dataset is {dataset.status}, not ready"
            + (f": {dataset.error}" if dataset.error else ""),
            field="dataset",
        )
    checked: RecipeCheck = recipe_check(recipe, model_version=model_version, dataset=dataset)
    queue_name = _queue_for(queue)
    target_device = target_device or checked.recipe.targets.target_device or ""
    name = (name or checked.name or f"{model_version.asset.name} v{model_version.number}").strip()
    with transaction.atomic():
        job = Job.objects.create(
            organization=organization,
            name=name[:200],
            model_version=model_version,
            dataset=dataset,
            recipe=checked.data,
            recipe_yaml=checked.yaml,
            target_device=target_device.strip()[:200],
            queue=queue_name,
            status=JobStatus.QUEUED,
            message="queued",
            max_attempts=settings.EDGESLIM_JOB_MAX_ATTEMPTS,
            stage_count=len(checked.data.get("stages", [])),
            created_by=user,
            duplicated_from=duplicated_from,
            sweep=sweep,
            sweep_point=sweep_point,
        )
        job_event_record(job=job, kind=JobEventKind.STATUS, payload={"status": job.status})
        if sweep is None:
            transaction.on_commit(lambda: _enqueue(job))
    return job


def job_enqueue(*, job: Job) -> None:
    """Queue a saved job on commit (a sweep's children, once their baseline is measured)."""
    transaction.on_commit(lambda: _enqueue(job))


def job_duplicate(*, job: Job, user: User | None) -> Job:
    """A new job with the same model, data set and recipe (validated again: the registry or the
    model may have changed since)."""
    return job_create(
        organization=job.organization,
        user=user,
        model_version=job.model_version,
        dataset=job.dataset,
        recipe=job.recipe,
        name=f"{job.name} (copy)",
        target_device=job.target_device,
        duplicated_from=job,
    )


def job_cancel(*, job: Job, user: User | None = None) -> Job:
    """Cancel: a queued job ends CANCELLED at once; a running one is flagged and its run stops
    at its next cancel check (within about a second of a batch).

    Raises:
        JobStateError: the job has already finished.
    """
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.is_terminal:
            raise JobStateError(f"the job has already finished ({locked.status})", field="status")
        if locked.status == JobStatus.QUEUED and not _lease_is_live(locked):
            _finish(locked, status=JobStatus.CANCELLED, message="cancelled before it started")
        else:
            locked.cancel_requested = True
            locked.message = "cancelling…"
            locked.save(update_fields=["cancel_requested", "message"])
            job_event_record(
                job=locked, kind=JobEventKind.LOG, payload={"line": "cancel requested"}
            )
    return locked


# --- events -----------------------------------------------------------------------------------


def _next_seq(job_id: int) -> int:
    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET event_seq = event_seq + 1 WHERE id = %s RETURNING event_seq",
            [job_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"job {job_id} does not exist")
    return int(row[0])


def job_event_message(event: JobEvent) -> dict[str, Any]:
    """The JSON a live page receives for ``event`` (and renders from history)."""
    return {
        "job_id": event.job_id,
        "seq": event.seq,
        "kind": event.kind,
        "payload": event.payload,
        "ts": event.ts.isoformat(),
    }


def job_event_record(
    *, job: Job, kind: str, payload: dict[str, Any], broadcast: bool = True
) -> JobEvent:
    """Persist one event with the job's next ``seq`` and send it to ``job.<id>``.

    Status and stage events also go to the organisation's group, for list pages. A failed
    broadcast is logged, never raised: the event is already stored and pages catch up on load.
    """
    if kind not in JobEventKind.values:
        raise ValueError(f"unknown job event kind {kind!r}")
    event = JobEvent.objects.create(
        job_id=job.pk, seq=_next_seq(job.pk), kind=kind, payload=payload, ts=timezone.now()
    )
    job.event_seq = event.seq
    if broadcast:
        message = job_event_message(event)

        def send() -> None:
            try:
                layer = get_channel_layer()
                if layer is not None:
                    async_to_sync(layer.group_send)(
                        job_group_name(job.pk), {"type": JOB_EVENT_TYPE, **message}
                    )
                if layer is not None and job.sweep_id and kind == JobEventKind.STATUS:
                    # A sweep's page redraws its chart when a child starts or ends.
                    async_to_sync(layer.group_send)(
                        sweep_group_name(job.sweep_id),
                        {"type": SWEEP_EVENT_TYPE, "kind": "child", "job_id": job.pk, **payload},
                    )
                if kind in (JobEventKind.STATUS, JobEventKind.STAGE_FINISHED):
                    org_event_send(
                        organization_id=job.organization_id,
                        kind="job",
                        payload={"job_id": job.pk, "event": kind, **payload},
                    )
            except Exception:  # the broker being down must not fail the job
                logger.warning(
                    "job %s: broadcasting event %s failed", job.pk, event.seq, exc_info=True
                )

        transaction.on_commit(send)
    return event


# --- the lease a run holds ----------------------------------------------------------------------


def lease_owner_name() -> str:
    import os
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _lease_is_live(job: Job) -> bool:
    return bool(
        job.lease_owner
        and job.lease_expires_at is not None
        and job.lease_expires_at > timezone.now()
    )


@dataclass(frozen=True)
class LeaseResult:
    """What ``job_lease_acquire`` decided: ``acquired`` (run it), ``busy`` (another live run
    holds it; ``retry_in_s`` until its lease lapses) or ``done`` (nothing to run)."""

    outcome: str
    job: Job | None = None
    retry_in_s: float = 0.0


def job_lease_acquire(*, job_id: int, owner: str, lease_s: float | None = None) -> LeaseResult:
    """Take the job's lease for ``owner`` atomically, counting an attempt.

    Never two runs at once: while another owner's lease is unexpired this answers ``busy``. A
    job whose earlier runs all died (``attempts == max_attempts``) ends FAILED here.
    """
    lease_s = float(lease_s or settings.EDGESLIM_JOB_LEASE_S)
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_terminal:
            return LeaseResult("done", job)
        if _lease_is_live(job) and job.lease_owner != owner:
            assert job.lease_expires_at is not None
            wait = (job.lease_expires_at - timezone.now()).total_seconds()
            return LeaseResult("busy", job, retry_in_s=max(wait, 0.5))
        if job.cancel_requested:
            _finish(job, status=JobStatus.CANCELLED, message="cancelled")
            return LeaseResult("done", job)
        if job.attempts >= job.max_attempts:
            _finish(
                job,
                status=JobStatus.FAILED,
                message="failed",
                error=f"worker died {job.attempts} times; gave up after {job.max_attempts} attempts",
            )
            return LeaseResult("done", job)
        now = timezone.now()
        job.attempts += 1
        job.lease_owner = owner
        job.lease_expires_at = now + timedelta(seconds=lease_s)
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now
        job.message = "starting" if job.attempts == 1 else f"resuming (attempt {job.attempts})"
        job.error = ""
        job.save(
            update_fields=[
                "attempts",
                "lease_owner",
                "lease_expires_at",
                "status",
                "started_at",
                "message",
                "error",
            ]
        )
        job_event_record(
            job=job,
            kind=JobEventKind.STATUS,
            payload={"status": job.status, "attempt": job.attempts, "message": job.message},
        )
    return LeaseResult("acquired", job)


def job_progress_update(
    *,
    job_id: int,
    owner: str,
    progress: float | None = None,
    message: str | None = None,
    completed_stages: int | None = None,
    lease_s: float | None = None,
) -> tuple[bool, bool]:
    """Write progress and renew the lease, only while ``owner`` holds it.

    Returns:
        ``(still_owner, cancel_requested)``; a run that lost its lease must stop.
    """
    lease_s = float(lease_s or settings.EDGESLIM_JOB_LEASE_S)
    fields: dict[str, Any] = {"lease_expires_at": timezone.now() + timedelta(seconds=lease_s)}
    if progress is not None:
        fields["progress"] = max(0.0, min(1.0, float(progress)))
    if message is not None:
        fields["message"] = message[:500]
    if completed_stages is not None:
        fields["completed_stages"] = completed_stages
    updated = Job.objects.filter(pk=job_id, lease_owner=owner, status=JobStatus.RUNNING).update(
        **fields
    )
    if not updated:
        return False, False
    cancel = Job.objects.filter(pk=job_id).values_list("cancel_requested", flat=True).first()
    return True, bool(cancel)


def _finish(
    job: Job,
    *,
    status: str,
    message: str,
    error: str = "",
    report: dict[str, Any] | None = None,
) -> Job:
    job.status = status
    job.message = message[:500]
    job.error = error
    job.finished_at = timezone.now()
    job.lease_owner = ""
    job.lease_expires_at = None
    fields = ["status", "message", "error", "finished_at", "lease_owner", "lease_expires_at"]
    if status == JobStatus.SUCCEEDED:
        job.progress = 1.0
        job.completed_stages = job.stage_count
        fields += ["progress", "completed_stages"]
    if report is not None:
        job.report = report
        fields.append("report")
    job.save(update_fields=fields)
    payload: dict[str, Any] = {"status": status, "message": job.message}
    if error:
        payload["error"] = error
    job_event_record(job=job, kind=JobEventKind.STATUS, payload=payload)
    return job


def job_fail_queued(*, job_id: int, error: str) -> Job | None:
    """End a job that has not started FAILED with ``error`` (a sweep child whose shared
    baseline could not be measured); ``None`` if it already started or finished."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_terminal or _lease_is_live(job):
            return None
        return _finish(job, status=JobStatus.FAILED, message="failed", error=error)


def job_finish(
    *,
    job_id: int,
    owner: str,
    status: str,
    message: str,
    error: str = "",
    report: dict[str, Any] | None = None,
) -> Job | None:
    """End the run ``owner`` holds with a terminal ``status``; ``None`` if it lost the lease."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.lease_owner != owner or job.is_terminal:
            return None
        return _finish(job, status=status, message=message, error=error, report=report)


def job_lease_release(*, job_id: int, owner: str) -> None:
    """Give the lease back without finishing (a run interrupted by its own worker's shutdown)."""
    Job.objects.filter(pk=job_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
