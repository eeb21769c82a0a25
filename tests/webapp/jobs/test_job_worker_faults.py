"""Faults with a real Celery worker subprocess on the test database and Redis broker:
``kill -9`` mid-job resumes from the last completed stage on redelivery (never two runs at
once), and cancel ends a running job within 10 s.

The workers here consume a queue of their own, so a session-wide worker started for other
tests never takes these jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from stack import subprocess_env

from webapp.jobs import services
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.tasks import job_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

VISIBILITY_S = 3
LEASE_S = 3


@pytest.fixture
def queue(monkeypatch):
    name = f"faults-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(
        services, "_enqueue", lambda job: job_run.apply_async(args=(job.pk,), queue=name)
    )
    return name


def _start_worker(queue: str, log: Path) -> subprocess.Popen[bytes]:
    env = subprocess_env()
    env.update(CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_S), EDGESLIM_JOB_LEASE_S=str(LEASE_S))
    out = log.open("ab")
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", queue]
    argv += ["-c", "1", "-P", "solo", "-l", "INFO", "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat", "-n", f"{queue}-{uuid.uuid4().hex[:4]}@%h"]
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (
            log.read_text(errors="replace")[-3000:] if log else ""
        )
        time.sleep(0.1)


def _job(recipe) -> Job:
    user = make_user()
    org = make_organization(owner=user)
    return services.job_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=recipe,
        queue="cpu",
    )


def test_kill_9_mid_job_resumes_after_the_last_completed_stage(queue, tmp_path):
    log = tmp_path / "worker.log"
    recipe = two_stage_recipe()
    recipe["stages"][1] = {"method": "finetune", "config": {"epochs": 2, "batch_size": 64}}
    first = _start_worker(queue, log)
    try:
        job = _job(recipe)
        _wait_for(
            lambda: Job.objects.get(pk=job.pk).completed_stages >= 1,
            90,
            "stage 1 to complete",
            log,
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING and job.completed_stages == 1
        time.sleep(VISIBILITY_S + 0.5)  # the broker redelivers unacked messages this old
        second = _start_worker(queue, log)
        try:
            _wait_for(lambda: Job.objects.get(pk=job.pk).is_terminal, 120, "the job to finish", log)
        finally:
            _stop(second)
    finally:
        _stop(first)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    started = list(job.events.filter(kind="stage_started").values_list("payload__stage", flat=True))
    # Stage 0 ran once; stage 1 (killed mid-way, or before it began) ran after the kill.
    assert started.count(0) == 1 and started[-1] == 1
    assert job.report["resumed_from_stage"] == 1
    runs = list(
        job.events.filter(kind="status", payload__status="RUNNING").values_list(
            "payload__attempt", flat=True
        )
    )
    assert runs == [1, 2]


def test_cancel_ends_a_running_job_within_ten_seconds(queue, tmp_path):
    log = tmp_path / "worker.log"
    recipe = two_stage_recipe()
    recipe["stages"][0]["config"] = {"epochs": 100, "batch_size": 16}
    worker = _start_worker(queue, log)
    try:
        job = _job(recipe)
        _wait_for(lambda: job.events.filter(kind="epoch").exists(), 90, "training", log)
        asked = time.monotonic()
        services.job_cancel(job=Job.objects.get(pk=job.pk))
        _wait_for(lambda: Job.objects.get(pk=job.pk).is_terminal, 10, "the cancel", log)
        took = time.monotonic() - asked
    finally:
        _stop(worker)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert took < 10
    assert job.lease_owner == ""
