"""The job tasks: thin. ``job_run`` loads nothing itself (the runner takes the lease and runs
the recipe); ``jobs_reap`` calls the reaper's sweep (``webapp/jobs/reaper.py``).

``acks_late`` + ``reject_on_worker_lost``: a job whose pool process dies mid-job is redelivered
at once. A worker killed whole (``kill -9`` of the main process, a lost host) leaves its message
unacked until Redis's visibility timeout (hours): the reaper, which beat sends every
``EDGESLIM_REAPER_INTERVAL_S``, requeues such a job as soon as its lease lapses, and the runner
resumes after the last completed stage. The DB lease and attempt counter (not Celery's retry
counter) decide whether a delivery may run: one that arrives while a live run holds the lease
waits for that lease instead of running twice.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from webapp.jobs import reaper
from webapp.jobs.reaper import JOBS_REAP_TASK
from webapp.jobs.runner import job_run as run_job
from webapp.jobs.services import JOB_RUN_TASK
from webapp.jobs.sweep_runner import sweep_baseline_run
from webapp.jobs.sweep_services import SWEEP_BASELINE_TASK
from workers.celery import app


@app.task(
    name=JOB_RUN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=settings.EDGESLIM_JOB_SOFT_TIME_LIMIT_S,
    time_limit=settings.EDGESLIM_JOB_HARD_TIME_LIMIT_S,
)
def job_run(self: Any, job_id: int) -> str:
    """Run job ``job_id``; returns the outcome (``succeeded``, ``failed``, ``cancelled``, …)."""
    outcome = run_job(job_id, soft_time_limit_s=settings.EDGESLIM_JOB_SOFT_TIME_LIMIT_S)
    if outcome.outcome == "busy":
        # Another run holds the lease (a redelivery while the first run is alive, or a dead
        # worker's lease not yet lapsed): look again when that lease would have expired.
        job_run.apply_async(
            args=(job_id,),
            countdown=outcome.retry_in_s + 0.5,
            queue=(self.request.delivery_info or {}).get("routing_key") or "cpu",
        )
    return outcome.outcome


@app.task(
    name=SWEEP_BASELINE_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=settings.EDGESLIM_JOB_SOFT_TIME_LIMIT_S,
    time_limit=settings.EDGESLIM_JOB_HARD_TIME_LIMIT_S,
)
def sweep_baseline(sweep_id: int) -> str:
    """Measure sweep ``sweep_id``'s shared baseline once, then queue its children."""
    return sweep_baseline_run(sweep_id)


@app.task(name=JOBS_REAP_TASK, ignore_result=True)
def jobs_reap() -> dict[str, list[int]]:
    """The reaper's jobs sweep (Celery beat, maintenance queue): requeue jobs whose lease lapsed."""
    result = reaper.jobs_reap()
    return {"requeued": result.requeued, "failed": result.failed, "cancelled": result.cancelled}
