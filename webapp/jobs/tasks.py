"""The job task: thin. It loads nothing itself; the runner takes the lease and runs the recipe.

``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-job leaves the message unacked,
so the broker redelivers it and the runner resumes after the last completed stage. The DB
lease and attempt counter (not Celery's retry counter) decide whether it may run: a second
delivery while a live run holds the lease waits for that lease instead of running twice.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

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
