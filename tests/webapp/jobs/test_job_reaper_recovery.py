"""Recovery without waiting, end to end, with the shipped defaults: a real job worker (prefork,
as ``edgeslim up`` runs it) is ``kill -9``-ed mid-job after its first stage completed; the
maintenance worker with Celery beat inside it (the argv ``edgeslim up`` runs) sends the reaper,
which requeues the job once its lease lapses, and a fresh worker resumes it after the last
completed stage within 2 minutes of the kill. Redis's visibility timeout stays at its shipped
12 hours, so the broker itself never redelivers the dead worker's message during the test.

While the resumed run holds the lease, a second run in this process cannot take it and the
reaper leaves the job alone: never two runs at once.

The worker processes use a broker key prefix of their own, so no other worker of this test
session sees these messages; lease, reaper interval and visibility timeout are the shipped ones.
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

# Settings whose shipped values this test relies on; an outer environment must not change them.
SHIPPED = ("CELERY_VISIBILITY_TIMEOUT", "EDGESLIM_JOB_LEASE_S", "EDGESLIM_REAPER_INTERVAL_S")


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
    return env


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while " ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)
    return proc


def _job_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # As `edgeslim up` runs it: prefork, one process, queues cpu and gpu.
    name = f"reaper-jobs-{uuid.uuid4().hex[:6]}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "cpu,gpu"]
    argv += ["-c", "1", "--prefetch-multiplier", "1", "-l", "INFO", "-n", name]
    return _start(argv, env, log)


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
# than the suite's default 300 s under load. The 2-minute bound is asserted on the job's events.
@pytest.mark.timeout(600)
def test_kill_9_mid_job_resumes_through_the_reaper_within_two_minutes(broker_prefix, tmp_path):
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] == 12 * 3600
    env = _env(broker_prefix)
    logs = [tmp_path / "maintenance.log", tmp_path / "first.log", tmp_path / "second.log"]
    maintenance_log, first_log, second_log = logs
    maintenance = _start(
        maintenance_worker_argv(sys.executable, tmp_path, f"reaper-{uuid.uuid4().hex[:6]}"),
        env,
        maintenance_log,
    )
    first = _job_worker(env, first_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        user = make_user()
        org = make_organization(owner=user)
        recipe = two_stage_recipe()
        # Stage 1 trains long enough to be killed in, and to be watched while it resumes.
        recipe["stages"][1] = {"method": "finetune", "config": {"epochs": 6, "batch_size": 32}}
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
        # A supervisor (compose's restart policy, a person) brings a worker back.
        second = _job_worker(env, second_log)

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
            lambda: Job.objects.get(pk=job.pk).is_terminal, 180, "the job to finish", second_log
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
    # ... and attempt 2 began within 2 minutes of the kill.
    resumed_at = next(ts for status, attempt, ts in events if attempt == 2)
    requeued_at = requeued.get().ts
    print(f"kill -> requeued {requeued_at - killed_at}, kill -> resumed {resumed_at - killed_at}")
    assert resumed_at - killed_at < timedelta(minutes=2), resumed_at - killed_at
    started = list(job.events.filter(kind="stage_started").values_list("payload__stage", flat=True))
    assert started.count(0) == 1 and started[-1] == 1  # stage 0 never ran again
    assert job.report["resumed_from_stage"] == 1
