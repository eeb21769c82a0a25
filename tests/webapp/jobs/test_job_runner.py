"""The runner, called as a plain function: runs, resumes, refuses a second run, cancels, fails
with readable reasons. Rows must be committed (the lease heartbeat has its own connection)."""

from __future__ import annotations

import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from jobs_fixtures import _jobs_not_sent_to_a_shared_worker  # noqa: F401

from compression.errors import DatasetError
from webapp.catalog.models import ModelVersion
from webapp.jobs import selectors, services
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.runner import JobRunner, failure_reason

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def org_user():
    user = make_user()
    return make_organization(owner=user), user


def _job(org, user, recipe=None, **kw) -> Job:
    return services.job_create(
        organization=org,
        user=user,
        model_version=kw.pop("model_version", None) or make_model_version(org),
        dataset=make_digits(org),
        recipe=recipe or two_stage_recipe(),
        queue="cpu",
    )


def _kinds(job: Job, kind: str) -> list[dict]:
    return list(job.events.filter(kind=kind).values_list("payload", flat=True))


def test_a_two_stage_job_runs_to_succeeded_with_report_artifacts_and_versions(org_user):
    org, user = org_user
    job = _job(org, user)
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "succeeded", job.error
    assert job.status == JobStatus.SUCCEEDED
    assert (job.attempts, job.progress, job.completed_stages) == (1, 1.0, 2)
    assert job.lease_owner == "" and job.finished_at is not None
    assert [p["stage"] for p in _kinds(job, "stage_started")] == [-1, 0, 1]  # -1: baseline
    assert [p["stage"] for p in _kinds(job, "stage_finished")] == [-1, 0, 1]
    assert [p["epoch"] for p in _kinds(job, "epoch")] == [1.0]
    assert job.report["stages"][1]["method"] == "ptq_int8"
    labels = {v["label"] for v in job.report["model_versions"]}
    assert labels == {"fp32", "int8"}
    produced = ModelVersion.objects.filter(produced_by_job_id=job.pk)
    assert {v.parent_id for v in produced} == {job.model_version_id}
    assert all(v.status == "ready" and v.recipe == job.recipe for v in produced)
    keys = {a["key"] for a in selectors.job_artifact_list(job=job)}
    assert {"onnx", "onnx_int8", "report", "recipe"} <= keys
    seqs = list(job.events.values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_second_runner_refuses_while_the_first_holds_the_lease(org_user):
    org, user = org_user
    job = _job(org, user)
    assert (
        services.job_lease_acquire(job_id=job.pk, owner="alive", lease_s=30).outcome == "acquired"
    )
    outcome = JobRunner(job.pk, owner="second").run()
    job.refresh_from_db()
    assert outcome.outcome == "busy"
    assert 0 < outcome.retry_in_s <= 30
    assert (job.attempts, job.lease_owner, job.status) == (1, "alive", JobStatus.RUNNING)
    assert not _kinds(job, "stage_started")


class _DiesAfterFirstStage(JobRunner):
    """Simulates the worker dying right after stage 0 is checkpointed."""

    def _progress(self, fraction, message, metrics):
        super()._progress(fraction, message, metrics)
        if metrics.get("event") == "stage_end" and metrics.get("stage") == 0:
            raise KeyboardInterrupt("worker going away")


def test_a_retried_run_resumes_after_the_last_completed_stage(org_user):
    org, user = org_user
    job = _job(org, user)
    with pytest.raises(KeyboardInterrupt):
        _DiesAfterFirstStage(job.pk).run()
    job.refresh_from_db()
    assert (job.status, job.completed_stages, job.lease_owner) == (JobStatus.RUNNING, 1, "")
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "succeeded", job.error
    assert job.attempts == 2
    assert [p["stage"] for p in _kinds(job, "stage_started")] == [-1, 0, 1]  # 0 not rerun
    assert job.report["resumed_from_stage"] == 1


def test_after_max_attempts_the_job_ends_failed_saying_the_worker_died(org_user):
    org, user = org_user
    job = _job(org, user)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        attempts=job.max_attempts,
        lease_owner="dead",
        lease_expires_at=None,
    )
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "done"
    assert job.status == JobStatus.FAILED
    assert f"worker died {job.max_attempts} times" in job.error
    assert job.attempts == job.max_attempts


def test_cancel_stops_a_running_job_within_ten_seconds(org_user):
    org, user = org_user
    recipe = two_stage_recipe()
    recipe["stages"][0]["config"] = {"epochs": 50, "batch_size": 16}
    job = _job(org, user, recipe)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("o", JobRunner(job.pk).run()))
    thread.start()
    deadline = time.monotonic() + 60
    while not job.events.filter(kind="epoch").exists():
        assert time.monotonic() < deadline, "the job never trained"
        time.sleep(0.1)
    asked = time.monotonic()
    services.job_cancel(job=Job.objects.get(pk=job.pk), user=user)
    thread.join(timeout=30)
    took = time.monotonic() - asked
    job.refresh_from_db()
    assert result["o"].outcome == "cancelled"
    assert job.status == JobStatus.CANCELLED
    assert took < 10


def test_a_corrupt_model_fails_with_the_reason_and_another_job_still_succeeds(org_user):
    org, user = org_user
    bad = _job(org, user, model_version=make_model_version(org, corrupt=True))
    good = _job(org, user)
    assert JobRunner(bad.pk).run().outcome == "failed"
    assert JobRunner(good.pk).run().outcome == "succeeded"
    bad.refresh_from_db()
    assert bad.status == JobStatus.FAILED
    # The reason is the loader's own: the garbage's first 8 bytes read as a huge header length.
    assert "safetensors header of" in bad.error, bad.error
    assert "bytes is larger than the 104857600-byte limit" in bad.error, bad.error
    assert _kinds(bad, "log"), "the log tail is kept"


class _SoftLimit(JobRunner):
    def _progress(self, fraction, message, metrics):
        raise SoftTimeLimitExceeded()


def test_a_soft_time_limit_ends_failed_with_a_reason(org_user):
    org, user = org_user
    job = _job(org, user)
    _SoftLimit(job.pk, soft_time_limit_s=60).run()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("time limit of 60 s exceeded")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), "out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory: CUDA"),
        (SoftTimeLimitExceeded(), "time limit of 5 s"),
        (DatasetError("the digits are 1-channel images"), "the digits are 1-channel images"),
        (ValueError("boom"), "ValueError: boom"),
        (OSError(28, "No space left on device"), "disk full"),
    ],
)
def test_failure_reasons_are_readable(exc, expected):
    assert failure_reason(exc, soft_time_limit_s=5).startswith(expected)
