"""The jobs reaper on rows, against the real database and broker: a RUNNING job whose lease lapsed
is requeued (its message lands on its queue in Redis) and the next run takes attempt 2; a live
lease is left alone and a second run is refused; used-up attempts end FAILED, an asked cancel
CANCELLED; the sweeps are routed to the maintenance queue and beat sends them."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import reaper, services
from webapp.jobs import tasks as job_tasks
from webapp.jobs.models import Job, JobStatus
from workers.celery import MAINTENANCE_QUEUE
from workers.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[redis.Redis, str]]:
    """Jobs are sent to the real broker under a key prefix no worker reads, so the test can see
    the messages on the queue lists."""
    prefix = f"edgeslim-reap-{uuid.uuid4().hex[:8]}:"

    def enqueue(job: Job) -> None:
        with celery_app.connection_for_write() as conn:
            conn.transport_options.update({"global_keyprefix": prefix})
            celery_app.send_task(
                services.JOB_RUN_TASK, args=(job.pk,), queue=job.queue, connection=conn
            )

    monkeypatch.setattr(services, "_enqueue", enqueue)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _sent(broker: tuple[redis.Redis, str], queue: str = "cpu") -> list[tuple[str, list[int]]]:
    """(task name, args) of each message waiting on ``queue`` in the broker."""
    client, prefix = broker
    out = []
    for raw in client.lrange(f"{prefix}{queue}", 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out


@pytest.fixture
def running_job() -> Job:
    """A job that took its lease once (attempt 1 of 3) on a worker called ``dead``."""
    user = make_user()
    org = make_organization(owner=user)
    job = services.job_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        queue="cpu",
    )
    assert services.job_lease_acquire(job_id=job.pk, owner="dead", lease_s=60).outcome == (
        "acquired"
    )
    Job.objects.filter(pk=job.pk).update(completed_stages=1)
    return Job.objects.get(pk=job.pk)


def _lapse(job: Job, **fields: object) -> None:
    Job.objects.filter(pk=job.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1), **fields
    )


def test_a_running_job_whose_lease_lapsed_is_requeued_and_resumes_as_attempt_two(
    running_job, broker, django_capture_on_commit_callbacks
):
    _lapse(running_job)

    with django_capture_on_commit_callbacks(execute=True):
        result = reaper.jobs_reap()

    assert result.requeued == [running_job.pk] and not result.failed
    job = Job.objects.get(pk=running_job.pk)
    assert job.status == JobStatus.QUEUED and job.lease_owner == "" and job.lease_expires_at is None
    assert job.message == "requeued: its worker stopped renewing the lease during attempt 1"
    assert job.completed_stages == 1  # the run resumes after it
    last = job.events.order_by("-seq").first()
    assert last is not None and last.payload["status"] == "QUEUED"
    assert _sent(broker) == [("edgeslim.job_run", [job.pk])]
    # The worker that takes the message counts attempt 2 under its own lease.
    lease = services.job_lease_acquire(job_id=job.pk, owner="second", lease_s=60)
    assert lease.outcome == "acquired" and lease.job is not None and lease.job.attempts == 2
    # A second sweep finds nothing to do: the job is queued, then held.
    with django_capture_on_commit_callbacks(execute=True):
        assert reaper.jobs_reap().requeued == []
    assert len(_sent(broker)) == 1


def test_a_live_lease_is_left_alone_and_a_second_run_cannot_take_it(
    running_job, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        result = reaper.jobs_reap()

    assert result == reaper.ReapResult(requeued=[], failed=[], cancelled=[])
    job = Job.objects.get(pk=running_job.pk)
    assert job.status == JobStatus.RUNNING and job.lease_owner == "dead" and job.attempts == 1
    assert _sent(broker) == []
    busy = services.job_lease_acquire(job_id=job.pk, owner="second", lease_s=60)
    assert busy.outcome == "busy" and busy.retry_in_s > 50


def test_a_lease_given_back_on_shutdown_is_requeued(
    running_job, broker, django_capture_on_commit_callbacks
):
    services.job_lease_release(job_id=running_job.pk, owner="dead")

    with django_capture_on_commit_callbacks(execute=True):
        assert reaper.jobs_reap().requeued == [running_job.pk]
    assert _sent(broker) == [("edgeslim.job_run", [running_job.pk])]


def test_a_job_whose_attempts_are_used_up_fails_and_an_asked_cancel_ends_it(
    running_job, broker, django_capture_on_commit_callbacks
):
    _lapse(running_job, attempts=3)
    user = running_job.created_by
    other = services.job_create(
        organization=running_job.organization,
        user=user,
        model_version=running_job.model_version,
        dataset=running_job.dataset,
        recipe=two_stage_recipe(),
        queue="cpu",
    )
    services.job_lease_acquire(job_id=other.pk, owner="dead-too", lease_s=60)
    _lapse(other, cancel_requested=True)

    with django_capture_on_commit_callbacks(execute=True):
        result = reaper.jobs_reap()

    assert result.failed == [running_job.pk] and result.cancelled == [other.pk]
    assert result.requeued == []
    failed = Job.objects.get(pk=running_job.pk)
    assert failed.status == JobStatus.FAILED and "gave up after 3 attempts" in failed.error
    assert Job.objects.get(pk=other.pk).status == JobStatus.CANCELLED
    assert _sent(broker) == []


def test_the_task_runs_the_sweep(running_job, broker, django_capture_on_commit_callbacks):
    _lapse(running_job)
    with django_capture_on_commit_callbacks(execute=True):
        assert job_tasks.jobs_reap() == {
            "requeued": [running_job.pk],
            "failed": [],
            "cancelled": [],
        }


def test_beat_sends_the_sweeps_to_the_maintenance_queue() -> None:
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert celery_app.conf.beat_schedule == schedule
    tasks = {entry["task"]: entry for entry in schedule.values()}
    assert set(tasks) == {
        "edgeslim.jobs_reap",
        "catalog.inspections_reap",
        "catalog.uploads_cleanup",
        "devices.deployments_expire",
    }
    assert tasks["edgeslim.jobs_reap"]["schedule"] == settings.EDGESLIM_REAPER_INTERVAL_S == 15
    # The shipped lease plus one sweep leaves a dead worker's job requeued well within 2 minutes.
    assert settings.EDGESLIM_JOB_LEASE_S + settings.EDGESLIM_REAPER_INTERVAL_S <= 90
    celery_app.loader.import_default_modules()  # every app's tasks.py, as a worker imports them
    for name in tasks:
        assert name in celery_app.tasks
        route = celery_app.amqp.router.route({}, name, (), {})
        assert route["queue"].name == MAINTENANCE_QUEUE
