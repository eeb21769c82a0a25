"""What the live page and the job list are told: the stage story from persisted events (baseline
apart, endings), human units, the failure reason apart from its traceback, queue position and
the estimate from finished jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import selectors, services
from webapp.jobs.formatting import duration_text, metric_rows, timing_texts
from webapp.jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db


def _job(org, user, *, recipe=None, model_version=None, queue="cpu") -> Job:  # type: ignore[no-untyped-def]
    return services.job_create(
        organization=org,
        user=user,
        model_version=model_version or make_model_version(org),
        dataset=make_digits(org),
        recipe=recipe or two_stage_recipe(),
        queue=queue,
    )


def _event(job: Job, kind: str, **payload) -> None:  # type: ignore[no-untyped-def]
    services.job_event_record(job=job, kind=kind, payload=payload, broadcast=False)


def _set(job: Job, **fields) -> Job:  # type: ignore[no-untyped-def]
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


BASELINE = {"accuracy": 97.31, "val_accuracy": 96.0, "macs": 41_200_000, "onnx_bytes": 1_258_291}


# --- the stage story ----------------------------------------------------------------------------


def test_the_baseline_is_kept_apart_while_stage_one_runs(org_a):
    org, user = org_a
    job = _set(_job(org, user), status=JobStatus.RUNNING)
    _event(job, "stage_started", stage=-1, method="baseline", progress=0.0)
    _event(job, "stage_finished", stage=-1, method="baseline", metrics=BASELINE, progress=0.05)
    _event(job, "stage_started", stage=0, method="finetune", progress=0.05)
    history = selectors.job_history(job=job)
    assert history["baseline"]["status"] == "done"
    assert [s["status"] for s in history["stages"]] == ["running", "pending"]
    assert all(s["metrics"] == {} for s in history["stages"])  # not the baseline's numbers
    shown = {r["label"]: r["value"] for r in history["baseline"]["rows"]}
    assert shown == {
        "Test accuracy": "97.3 %",
        "Val accuracy": "96.0 %",
        "MACs": "41.2 M",
        "ONNX": "1.2 MB",
    }


def test_a_measuring_phase_shows_on_its_stage(org_a):
    org, user = org_a
    job = _set(_job(org, user), status=JobStatus.RUNNING)
    _event(job, "stage_started", stage=0, method="finetune")
    _event(job, "progress", stage=0, phase="measuring", progress=0.4, message="measuring")
    history = selectors.job_history(job=job)
    assert history["stages"][0]["status"] == "measuring"
    assert history["phase"] == {"phase": "measuring", "stage": 0}


@pytest.mark.parametrize(
    ("status", "ended"), [(JobStatus.FAILED, "failed"), (JobStatus.CANCELLED, "cancelled")]
)
def test_a_stage_left_running_ends_with_the_job_and_later_ones_were_not_run(org_a, status, ended):
    org, user = org_a
    job = _job(org, user)
    _event(job, "stage_finished", stage=-1, metrics=BASELINE)
    _event(job, "stage_started", stage=0, method="finetune")
    job = _set(job, status=status, finished_at=timezone.now())
    history = selectors.job_history(job=job)
    assert history["baseline"]["status"] == "done"
    assert [(s["status"], s["label"]) for s in history["stages"]] == [
        (ended, ended),
        ("skipped", "not run"),
    ]


def test_the_reason_comes_first_and_the_traceback_once_behind_details(org_a):
    org, user = org_a
    job = _job(org, user)
    frames = '  File "/app/compression/pipeline.py", line 12, in run\n    raise DatasetError("x")\n'
    _event(job, "log", line="loaded lenet v1")
    _event(
        job,
        "log",
        line="ERROR webapp.jobs.runner: job 1 failed: classes differ\n"
        "Traceback (most recent call last):\n" + frames + "DatasetError: classes differ",
    )
    _event(job, "log", line=frames.rstrip())  # the runner's last frames, logged again
    _event(job, "log", line="DatasetError: classes differ")
    job = _set(job, status=JobStatus.FAILED, error="classes differ", finished_at=timezone.now())
    history = selectors.job_history(job=job)
    assert [entry["line"] for entry in history["log_tail"]] == ["loaded lenet v1"]
    assert len(history["tracebacks"]) == 1 and "raise DatasetError" in history["tracebacks"][0]

    page = client_for(user).get(reverse("jobs:detail", args=[job.pk])).content.decode()
    reason_at = page.index("Why it failed:")
    assert page.index("classes differ") > reason_at
    assert page.index("<details data-job-error-details>") > reason_at
    assert page.count("Traceback (most recent call last)") == 1


def test_metric_rows_use_labels_and_units_and_skip_bookkeeping():
    rows = metric_rows(
        {
            "accuracy": 97.34,
            "params": 61_706,
            "onnx_zip_bytes": 40_518_272,
            "p50_ms": 0.512,
            "duration_s": 75.2,
            "stage_fraction": 1.0,
            "targets_met": True,
            "sparsity": 0.5,
            "p99_ms": None,
        }
    )
    assert [(r["label"], r["value"]) for r in rows] == [
        ("Test accuracy", "97.3 %"),
        ("Parameters", "61.7 k"),
        ("ONNX zipped", "38.6 MB"),
        ("Latency p50", "0.51 ms"),
        ("Took", "1 min 15 s"),
        ("Sparsity", "0.5"),
    ]
    assert duration_text(7300) == "2 h 1 min" and duration_text(None) == "—"


def test_cancel_is_offered_only_while_the_job_is_active_and_the_report_only_when_it_succeeded(
    org_a,
):
    org, user = org_a
    job = _job(org, user)
    c = client_for(user)
    page = c.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "data-cancel-form" in page and "data-confirm=" in page
    assert "data-report-link" not in page
    _set(job, status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    page = c.get(reverse("jobs:live_regions", args=[job.pk])).content.decode()
    assert "data-cancel-form" not in page and "data-report-link" in page
    assert 'data-region="downloads"' in page and "recipe.yaml" in page


# --- queue position, elapsed, estimate -----------------------------------------------------------


def test_queue_position_counts_queued_jobs_of_the_same_queue_oldest_first(org_a, org_b):
    org, user = org_a
    other_org, other_user = org_b
    mv = make_model_version(org)
    foreign = _job(other_org, other_user)  # other organisations share the workers
    first, second = _job(org, user, model_version=mv), _job(org, user, model_version=mv)
    gpu = _job(org, user, model_version=mv)
    _set(gpu, queue="gpu")
    running = _set(_job(org, user, model_version=mv), status=JobStatus.RUNNING)
    _set(running, started_at=timezone.now())
    jobs = [first, second, gpu, running]
    for j in jobs:
        j.refresh_from_db()
    timing = selectors.job_timing_map(organization=org, jobs=jobs)
    assert timing[first.pk].queue_position == 2  # after the other organisation's older job
    assert timing[second.pk].queue_position == 3
    assert timing[gpu.pk].queue_position == 1
    assert timing[running.pk].queue_position is None
    assert timing[first.pk].queued_ahead_running == 1
    assert timing_texts(timing[first.pk])["position"] == "#2 in the queue, 1 running"
    _set(foreign, status=JobStatus.CANCELLED)
    assert selectors.job_timing(job=first).queue_position == 1


def test_there_is_no_estimate_without_history(org_a):
    org, user = org_a
    job = _job(org, user)
    timing = selectors.job_timing(job=job)
    assert (timing.estimate_s, timing.remaining_s, timing.elapsed_s) == (None, None, None)
    assert timing_texts(timing)["estimate"] == "no estimate yet"
    page = client_for(user).get(reverse("jobs:list")).content.decode()
    assert "#1 in the queue" in page and "no estimate yet" in page


def test_the_estimate_is_the_median_of_finished_jobs_with_the_same_stages(org_a):
    org, user = org_a
    mv, now = make_model_version(org), timezone.now()
    for seconds in (60, 120, 300):
        done = _job(org, user, model_version=mv)
        _set(
            done,
            status=JobStatus.SUCCEEDED,
            started_at=now - timedelta(seconds=seconds + 100),
            finished_at=now - timedelta(seconds=100),
        )
    other_stages = _job(org, user, model_version=mv, recipe=two_stage_recipe(stages=["ptq_int8"]))
    _set(other_stages, status=JobStatus.SUCCEEDED, started_at=now - timedelta(hours=5),
         finished_at=now)  # fmt: skip
    failed = _job(org, user, model_version=mv)
    _set(failed, status=JobStatus.FAILED, started_at=now - timedelta(hours=9), finished_at=now)

    running = _job(org, user, model_version=mv)
    _set(running, status=JobStatus.RUNNING, started_at=now - timedelta(seconds=30))
    timing = selectors.job_timing(job=running, now=now)
    assert timing.estimate_s == 120
    assert timing.elapsed_s == pytest.approx(30)
    assert timing.remaining_s == pytest.approx(90)
    assert timing.basis == "median of 3 runs of the same stages on this model"
    assert timing_texts(timing)["remaining"] == "about 1 min 30 s left"

    # Another model with the same stages falls back to the stage history, not this model's.
    elsewhere = _job(org, user)
    fallback = selectors.job_timing(job=elsewhere, now=now)
    assert fallback.estimate_s == 120 and fallback.basis.endswith("of the same stages")
    # Past its estimate, a running job says so rather than a negative time.
    _set(running, started_at=now - timedelta(seconds=500))
    assert timing_texts(selectors.job_timing(job=running, now=now))["remaining"] == (
        "any moment now"
    )
