"""The analysis task: thin; the runner does the work (``acks_late``: a killed worker's
analysis is redelivered and redone)."""

from __future__ import annotations

from webapp.sensitivity.runner import analysis_run
from webapp.sensitivity.services import SENSITIVITY_RUN_TASK
from workers.celery import app


@app.task(name=SENSITIVITY_RUN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def sensitivity_run(analysis_id: int) -> str:
    return analysis_run(analysis_id)
