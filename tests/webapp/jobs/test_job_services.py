"""job_create validates before anything is saved or queued; cancel, duplicate and events."""

from __future__ import annotations

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import services
from webapp.jobs.errors import JobInputError, JobStateError
from webapp.jobs.models import Job, JobEvent, JobStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def org_user():
    user = make_user()
    org = make_organization(owner=user)
    return org, user


def _create(org, user, recipe, **kw):
    return services.job_create(
        organization=org,
        user=user,
        model_version=kw.pop("model_version", None) or make_model_version(org),
        dataset=kw.pop("dataset", None) or make_digits(org),
        recipe=recipe,
        **kw,
    )


def test_it_saves_a_valid_recipe_canonically_and_queues_it_on_commit(
    org_user, django_capture_on_commit_callbacks
):
    org, user = org_user
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = _create(org, user, two_stage_recipe())
    assert job.status == JobStatus.QUEUED
    assert job.queue == "cpu"  # no GPU worker has reported in
    assert job.stage_count == 2
    assert job.recipe["stages"][0]["config"]["lr"] == 0.01  # defaults filled in
    assert "method: finetune" in job.recipe_yaml
    assert job.name == "finetune-then-int8"
    assert len(callbacks) >= 1  # the enqueue waits for the commit
    assert list(job.events.values_list("seq", "kind")) == [(1, "status")]


def test_yaml_text_is_accepted_too(org_user):
    org, user = org_user
    job = _create(org, user, "stages:\n  - method: finetune\n    config: {epochs: 1}\n")
    assert job.recipe["stages"][0]["method"] == "finetune"


@pytest.mark.parametrize(
    ("stages", "field"),
    [
        (
            [{"method": "channel_pruning", "config": {"ratio": 2.0}}],
            "recipe.stages[0].config.ratio",
        ),
        ([{"method": "finetune", "config": {"epochs": 0}}], "recipe.stages[0].config.epochs"),
        ([{"method": "finetune", "config": {"nope": 1}}], "recipe.stages[0].config.nope"),
        ([{"method": "no_such_method"}], "recipe.stages[0].method"),
        ([{"method": "ptq_int8"}, {"method": "finetune"}], "recipe.stages[1]"),
        ([], "recipe.stages"),
    ],
)
def test_an_invalid_recipe_is_refused_before_it_is_saved_or_queued_naming_the_field(
    org_user, django_capture_on_commit_callbacks, stages, field
):
    org, user = org_user
    mv, ds = make_model_version(org), make_digits(org)
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        pytest.raises(JobInputError) as err,
    ):
        _create(org, user, {"stages": stages}, model_version=mv, dataset=ds)
    assert err.value.field == field
    assert field in str(err.value)
    assert not Job.objects.exists()
    assert not JobEvent.objects.exists()
    assert callbacks == []


def test_broken_yaml_is_refused_naming_the_recipe(org_user):
    org, user = org_user
    with pytest.raises(JobInputError) as err:
        _create(org, user, "stages: [unclosed")
    assert err.value.field == "recipe"
    assert "YAML" in err.value.message


def test_another_organisations_model_or_dataset_is_refused(org_user):
    org, user = org_user
    other = make_organization()
    with pytest.raises(JobInputError) as err:
        _create(org, user, two_stage_recipe(), model_version=make_model_version(other))
    assert err.value.field == "model_version"
    with pytest.raises(JobInputError) as err:
        _create(org, user, two_stage_recipe(), dataset=make_digits(other))
    assert err.value.field == "dataset"
    assert not Job.objects.exists()


def test_a_model_that_is_not_ready_is_refused(org_user):
    org, user = org_user
    mv = make_model_version(org)
    mv.status, mv.error = "invalid", "not a safetensors file"
    mv.save()
    with pytest.raises(JobInputError, match="not a safetensors file"):
        _create(org, user, two_stage_recipe(), model_version=mv)


def test_a_dataset_with_other_classes_is_refused(org_user):
    org, user = org_user
    ds = make_digits(org)
    ds.num_classes = 3
    ds.save()
    with pytest.raises(JobInputError) as err:
        _create(org, user, two_stage_recipe(), dataset=ds)
    assert err.value.field == "dataset"


def test_cancelling_a_queued_job_ends_it_at_once(org_user):
    org, user = org_user
    job = _create(org, user, two_stage_recipe())
    job = services.job_cancel(job=job, user=user)
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at is not None
    with pytest.raises(JobStateError):
        services.job_cancel(job=job, user=user)


def test_cancelling_a_running_job_flags_it_for_the_runner(org_user):
    org, user = org_user
    job = _create(org, user, two_stage_recipe())
    lease = services.job_lease_acquire(job_id=job.pk, owner="w1")
    assert lease.outcome == "acquired"
    job = services.job_cancel(job=job, user=user)
    assert job.status == JobStatus.RUNNING
    assert job.cancel_requested is True


def test_duplicate_copies_model_dataset_and_recipe(org_user):
    org, user = org_user
    job = _create(org, user, two_stage_recipe())
    copy = services.job_duplicate(job=job, user=user)
    assert copy.pk != job.pk
    assert copy.duplicated_from_id == job.pk
    assert copy.recipe == job.recipe
    assert (copy.model_version_id, copy.dataset_id) == (job.model_version_id, job.dataset_id)


def test_event_seqs_are_consecutive_per_job(org_user):
    org, user = org_user
    a = _create(org, user, two_stage_recipe())
    b = _create(org, user, two_stage_recipe())
    for i in range(3):
        services.job_event_record(job=a, kind="log", payload={"line": str(i)})
    services.job_event_record(job=b, kind="log", payload={"line": "b"})
    assert list(a.events.values_list("seq", flat=True)) == [1, 2, 3, 4]
    assert list(b.events.values_list("seq", flat=True)) == [1, 2]
    with pytest.raises(ValueError):
        services.job_event_record(job=a, kind="bogus", payload={})


def test_a_live_lease_is_never_shared(org_user):
    org, user = org_user
    job = _create(org, user, two_stage_recipe())
    assert services.job_lease_acquire(job_id=job.pk, owner="w1").outcome == "acquired"
    second = services.job_lease_acquire(job_id=job.pk, owner="w2")
    assert second.outcome == "busy"
    assert second.retry_in_s > 0
    job.refresh_from_db()
    assert (job.attempts, job.lease_owner) == (1, "w1")
