"""Recovery without waiting, end to end: a real job worker (prefork, as ``edgeslim up`` runs it)
is ``kill -9``-ed mid-job after its first stage completed; the maintenance worker with Celery
beat inside it (the argv ``edgeslim up`` runs) sends the reaper, which requeues the job once its
lease lapses (not before), and a fresh worker resumes it after the last completed stage. Redis's
visibility timeout stays at its shipped 12 hours, so the broker itself never redelivers the dead
worker's message during the test: only the reaper can have brought the job back.

The lease and the reaper interval are short here (``LEASE_S``, ``REAPER_INTERVAL_S``, through
the same settings ``EDGESLIM_JOB_LEASE_S`` and ``EDGESLIM_REAPER_INTERVAL_S`` an operator sets)
so the test does not sit out the shipped 60 s lease; the requeue is asserted to come between the
lease lapsing and one sweep (plus slack) after it. That the shipped lease plus one sweep stays
well within 2 minutes is checked in ``test_job_reaper.py``.

While the resumed run holds the lease, a second run in this process cannot take it and the
reaper leaves the job alone: never two runs at once.

The worker processes use a broker key prefix of their own, so no other worker of this test
session sees these messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from stack import subprocess_env

from webapp.cli.up import maintenance_worker_argv
from webapp.jobs import reaper, services
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.runner import JobRunner
from workers.celery import app as celery_app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# The visibility timeout keeps its shipped value (an outer environment must not change it); the
# lease and the sweep interval are short, set the way an operator would set them.
SHIPPED = ("CELERY_VISIBILITY_TIMEOUT",)
LEASE_S = 10
REAPER_INTERVAL_S = 2
# Beat's tick, the sweep's own run and a loaded two-core machine, on top of lease + interval.
REQUEUE_SLACK_S = 25


@pytest.fixture
def broker_prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Jobs created here are sent under a key prefix that only this test's workers read."""
    prefix = f"edgeslim-reaper-{uuid.uuid4().hex[:8]}:"

    def enqueue(job: Job) -> None:
        with celery_app.connection_for_write() as conn:
            conn.transport_options.update({"global_keyprefix": prefix})
            celery_app.send_task(
                services.JOB_RUN_TASK, args=(job.pk,), queue=job.queue, connection=conn
            )

    monkeypatch.setattr(services, "_enqueue", enqueue)
    yield prefix
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _env(prefix: str) -> dict[str, str]:
    env = subprocess_env()
    for name in SHIPPED:
        env.pop(name, None)
    env["EDGESLIM_BROKER_PREFIX"] = prefix
    env["EDGESLIM_JOB_LEASE_S"] = str(LEASE_S)
    env["EDGESLIM_REAPER_INTERVAL_S"] = str(REAPER_INTERVAL_S)
    return env


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while " ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)


def _job_worker_argv() -> list[str]:
    # As `edgeslim up` runs it: prefork, one process, queues cpu and gpu.
    name = f"reaper-jobs-{uuid.uuid4().hex[:6]}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "cpu,gpu"]
    return [*argv, "-c", "1", "--prefetch-multiplier", "1", "-l", "INFO", "-n", name]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:  # its pool child may outlive it for a moment
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(predicate, timeout: float, what: str, *logs: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs
            )
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)


def _run_events(job: Job) -> list[tuple[str, int | None, object]]:
    rows = job.events.filter(kind="status").order_by("seq")
    return [(e.payload.get("status"), e.payload.get("attempt"), e.ts) for e in rows]


# Three worker starts, a model load and two training stages on a shared two-core machine: more
# than the suite's default 300 s under load. The timing bounds are asserted on the job's events.
@pytest.mark.timeout(600)
def test_kill_9_mid_job_resumes_through_the_reaper_once_the_lease_lapses(broker_prefix, tmp_path):
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] == 12 * 3600
    env = _env(broker_prefix)
    logs = [tmp_path / "maintenance.log", tmp_path / "first.log", tmp_path / "second.log"]
    maintenance_log, first_log, second_log = logs
    # Both start at once (they are independent); the job is created once both are ready.
    maintenance = _spawn(
        maintenance_worker_argv(sys.executable, tmp_path, f"reaper-{uuid.uuid4().hex[:6]}"),
        env,
        maintenance_log,
    )
    first = _spawn(_job_worker_argv(), env, first_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_ready(maintenance, maintenance_log)
        _wait_ready(first, first_log)
        user = make_user()
        org = make_organization(owner=user)
        recipe = two_stage_recipe()
        # Stage 1 trains long enough to be killed in, and to be watched while it resumes.
        recipe["stages"][1] = {"method": "finetune", "config": {"epochs": 4, "batch_size": 32}}
        job = services.job_create(
            organization=org,
            user=user,
            model_version=make_model_version(org),
            dataset=make_digits(org),
            recipe=recipe,
            queue="cpu",
        )
        _wait_for(
            lambda: Job.objects.get(pk=job.pk).completed_stages >= 1,
            120,
            "stage 0 to complete",
            first_log,
        )
        os.kill(first.pid, signal.SIGKILL)  # the main process; its pool child dies with it
        killed_at = timezone.now()
        first.wait(timeout=10)
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING and job.completed_stages == 1 and job.attempts == 1
        lapses_at = job.lease_expires_at  # the dead run's last renewal
        assert lapses_at is not None
        # A supervisor (compose's restart policy, a person) brings a worker back.
        second = _spawn(_job_worker_argv(), env, second_log)
        _wait_ready(second, second_log)

        def resumed() -> bool:
            row = Job.objects.get(pk=job.pk)
            return (row.attempts == 2 and row.status == JobStatus.RUNNING) or row.is_terminal

        _wait_for(resumed, 150, "the job to resume", maintenance_log, second_log)
        # Never two runs at once: while the resumed run holds the lease, another run is refused
        # and the reaper leaves the job alone.
        held = Job.objects.get(pk=job.pk)
        assert held.status == JobStatus.RUNNING, "the resumed run ended before it was checked"
        assert JobRunner(job.pk).run().outcome == "busy"
        assert job.pk not in reaper.jobs_reap().requeued
        assert Job.objects.get(pk=job.pk).lease_owner == held.lease_owner
        _wait_for(
            lambda: Job.objects.get(pk=job.pk).is_terminal, 300, "the job to finish", second_log
        )
    finally:
        for proc in (first, second, maintenance):
            if proc is not None:
                _stop(proc)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    events = _run_events(job)
    runs = [(status, attempt) for status, attempt, _ in events if status == "RUNNING"]
    assert runs == [("RUNNING", 1), ("RUNNING", 2)]
    # The reaper put it back (the broker's redelivery would have taken 12 hours) ...
    requeued = job.events.filter(kind="status", payload__status="QUEUED", seq__gt=1)
    assert requeued.count() == 1
    assert "stopped renewing the lease" in requeued.get().payload["message"]
    # ... not before the dead run's lease lapsed, and within one sweep (plus slack) after it ...
    resumed_at = next(ts for status, attempt, ts in events if attempt == 2)
    requeued_at = requeued.get().ts
    print(f"kill -> requeued {requeued_at - killed_at}, kill -> resumed {resumed_at - killed_at}")
    assert requeued_at >= lapses_at, (requeued_at, lapses_at)
    bound = timedelta(seconds=LEASE_S + REAPER_INTERVAL_S + REQUEUE_SLACK_S)
    assert requeued_at - killed_at < bound, requeued_at - killed_at
    # ... and the live worker took it at once.
    assert resumed_at - requeued_at < timedelta(seconds=REQUEUE_SLACK_S), resumed_at - requeued_at
    started = list(job.events.filter(kind="stage_started").values_list("payload__stage", flat=True))
    assert started.count(0) == 1 and started[-1] == 1  # stage 0 never ran again
    assert job.report["resumed_from_stage"] == 1
