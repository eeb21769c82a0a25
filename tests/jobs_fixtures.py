"""Fixtures shared by the jobs, reports and worker tests (imported by their conftest files)."""

from __future__ import annotations

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.accounts.services import api_token_create
from webapp.jobs import services
from webapp.jobs.runner import JobRunner


@pytest.fixture
def org_a():
    user = make_user()
    return make_organization(owner=user), user


@pytest.fixture
def org_b():
    user = make_user()
    return make_organization(owner=user), user


@pytest.fixture
def token_for():
    def make(user) -> dict[str, str]:
        _, key = api_token_create(user=user, name="test")
        return {"HTTP_AUTHORIZATION": f"Token {key}"}

    return make


@pytest.fixture
def finished_job(org_a):
    """A job of organisation A that ran to SUCCEEDED through the real runner (needs committed
    rows: use with ``transactional_db``)."""
    org, user = org_a
    job = services.job_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        queue="cpu",
    )
    outcome = JobRunner(job.pk).run()
    job.refresh_from_db()
    assert outcome.outcome == "succeeded", job.error
    return job


@pytest.fixture(autouse=True)
def _jobs_not_sent_to_a_shared_worker(request, monkeypatch):
    """Tests here call the runner as a plain function; a session-wide Celery worker started for
    the live-stack tests must not take their jobs too. Live-stack tests keep the real queue."""
    if "edgeslim_stack" in request.fixturenames:
        return
    monkeypatch.setattr(services, "_enqueue", lambda job: None)
