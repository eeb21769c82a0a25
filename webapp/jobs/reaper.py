"""The jobs reaper: put back the jobs whose worker died, without waiting for the broker.

A run holds a lease on its Job row and renews it about once a second (``webapp/jobs/runner.py``).
A worker killed whole (``kill -9``, out of memory, a lost host) stops renewing it, and Redis would
hand its unacked message to another worker only after the visibility timeout (12 hours, which
must outlast the longest job). Celery beat sends :data:`JOBS_REAP_TASK` every
``EDGESLIM_REAPER_INTERVAL_S`` (15 s) to the maintenance queue; :func:`jobs_reap` requeues each
RUNNING job whose lease lapsed, so with the shipped 60 s lease a killed worker's job is back on its
queue within 75 s and the next worker resumes it after its last completed stage.

Never two runs at once: the reaper only touches a job whose lease has lapsed (under a row lock),
and a worker takes the job only through ``job_lease_acquire``, which answers ``busy`` while
another run's lease is live. A run whose lease was reaped while it still lived (a stalled
process) finds it lost on its next renewal and stops without writing an outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import models, transaction
from django.utils import timezone

from webapp.jobs import services
from webapp.jobs.models import Job, JobEventKind, JobStatus

logger = logging.getLogger(__name__)

# The Celery task (webapp/jobs/tasks.py) that beat sends by name (settings.CELERY_BEAT_SCHEDULE).
JOBS_REAP_TASK = "edgeslim.jobs_reap"


@dataclass(frozen=True)
class ReapResult:
    """What one sweep did: jobs put back on their queue, ended FAILED (attempts used up) or
    ended CANCELLED (a cancel was asked while their worker was gone)."""

    requeued: list[int]
    failed: list[int]
    cancelled: list[int]


def jobs_reap(*, now: datetime | None = None, limit: int = 200) -> ReapResult:
    """Settle every RUNNING job whose lease has lapsed or was given back.

    Each job is settled in its own transaction under a row lock (``skip_locked``: a job that a
    run is touching right now is left to the next sweep). A requeued job goes back to QUEUED with
    no lease, a status event says why, and its task is sent on commit; the worker that takes it
    counts attempt n+1 and resumes after the last completed stage. A job with every attempt used
    ends FAILED; one whose cancel was asked ends CANCELLED. A live lease is never touched.
    """
    now = now or timezone.now()
    lapsed = Job.objects.filter(status=JobStatus.RUNNING).filter(
        models.Q(lease_expires_at__isnull=True) | models.Q(lease_expires_at__lte=now)
    )
    requeued: list[int] = []
    failed: list[int] = []
    cancelled: list[int] = []
    for job_id in list(lapsed.order_by("pk").values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True)
                .filter(pk=job_id, status=JobStatus.RUNNING)
                .first()
            )
            if job is None or (
                job.lease_owner and job.lease_expires_at and job.lease_expires_at > now
            ):
                continue  # locked, finished or renewed since the query
            lost = f"its worker stopped renewing the lease during attempt {job.attempts}"
            if job.cancel_requested:
                services._finish(job, status=JobStatus.CANCELLED, message=f"cancelled ({lost})")
                cancelled.append(job.pk)
            elif job.attempts >= job.max_attempts:
                services._finish(
                    job,
                    status=JobStatus.FAILED,
                    message="failed",
                    error=f"worker died {job.attempts} times; gave up after "
                    f"{job.max_attempts} attempts",
                )
                failed.append(job.pk)
            else:
                job.status = JobStatus.QUEUED
                job.lease_owner = ""
                job.lease_expires_at = None
                job.message = f"requeued: {lost}"
                job.save(update_fields=["status", "lease_owner", "lease_expires_at", "message"])
                services.job_event_record(
                    job=job,
                    kind=JobEventKind.STATUS,
                    payload={"status": job.status, "message": job.message},
                )
                logger.warning("job %s: %s; requeued on %s", job.pk, lost, job.queue)
                transaction.on_commit(lambda job=job: services._enqueue(job))  # type: ignore[misc]
                requeued.append(job.pk)
    return ReapResult(requeued=requeued, failed=failed, cancelled=cancelled)
