"""The dashboard: recent jobs with verdicts, the best version per model, the fleet, what needs
attention, an activity feed read from persisted rows, and an order that fits each role."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from factories import client_for, make_member, make_organization, make_user
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from device_registry.models import DeployableArtifact, Deployment, DeploymentTarget, Device
from webapp.accounts.models import Organization, Role
from webapp.catalog.models import Dataset, ItemStatus, ModelVersion
from webapp.dashboard import activity_feed, best_versions
from webapp.jobs.models import Job, JobEvent, JobStatus

pytestmark = pytest.mark.django_db


def _job(org: Organization, version: ModelVersion, name: str, status: str, **kw) -> Job:
    job = Job.objects.create(
        organization=org,
        name=name,
        model_version=version,
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        status=status,
        **kw,
    )
    for seq, step in enumerate([JobStatus.QUEUED, JobStatus.RUNNING, status], start=1):
        payload = {"status": step, "message": kw.get("message", "") if step == status else ""}
        JobEvent.objects.create(job=job, seq=seq, kind="status", payload=payload, ts=timezone.now())
    return job


def _report(baseline: float, final: float, met: bool) -> dict:
    return {
        "baseline": {"accuracy": baseline},
        "final": {"accuracy": final, "format": "onnx"},
        "targets": {"met": met, "max_accuracy_drop": 1.0, "accuracy_drop": baseline - final},
    }


@pytest.fixture
def lab():
    owner = make_user(username="ada")
    org = make_organization(name="Edge Lab", owner=owner)
    v1 = make_model_version(org, user=owner, name="lenet")
    good = _job(org, v1, "lenet5-slim", JobStatus.SUCCEEDED, report=_report(98.0, 97.5, True))
    ModelVersion.objects.create(
        organization=org,
        asset=v1.asset,
        number=2,
        format="onnx",
        label="int8",
        status=ItemStatus.READY,
        produced_by_job_id=good.pk,
        info={},
    )
    _job(org, v1, "lenet5-tiny", JobStatus.FAILED, message="Out of memory in stage 2")
    now = timezone.now()
    Device.objects.create(
        organization=org, name="pi-kitchen", enrolled_at=now, connection_channel="c", last_seen=now
    )
    offline = Device.objects.create(
        organization=org, name="jetson-lab", enrolled_at=now, last_seen=now - timedelta(hours=3)
    )
    artifact = DeployableArtifact.objects.create(
        organization=org, name="lenet5-int8", file="a.onnx", sha256="0" * 64, size=10
    )
    deployment = Deployment.objects.create(
        organization=org,
        artifact=artifact,
        target_kind="device",
        target_value=str(offline.pk),
        issued_at=0,
        signature="x",
        created_by=owner,
        expires_at=timezone.now() + timedelta(days=1),
    )
    DeploymentTarget.objects.create(deployment=deployment, device=offline)
    return org, owner, good


def test_the_dashboard_shows_jobs_verdicts_best_versions_fleet_and_attention(lab):
    _org, owner, good = lab
    page = client_for(owner).get(reverse("home")).content.decode()

    assert f"#{good.pk} lenet5-slim" in page
    assert '<span class="badge badge-ok">met</span>' in page
    assert ">v1</a>" in page and "98.00%" in page  # v1 (98.0) beats the job's v2 (97.5)
    assert "pi-kitchen" in page and "jetson-lab" in page
    assert "1/2" in page  # devices online / total
    assert "failed: Out of memory in stage 2</li>" in page
    assert "is offline with 1 deployment waiting" in page
    assert "Get started" not in page
    assert "Send a test event" not in page


def test_the_best_version_is_the_one_with_the_highest_measured_test_accuracy(lab):
    org, _owner, _good = lab
    [row] = best_versions(organization=org)

    # v1 was measured at 98.0 (the job's baseline), v2 at 97.5 (the job's final model).
    assert row.version is not None and row.version.number == 1
    assert row.accuracy == pytest.approx(98.0)
    assert row.ready_versions == 2


def test_the_activity_feed_reads_persisted_rows_as_sentences_with_links(lab):
    org, owner, good = lab
    texts = [f"{a.link_text} {a.text}" for a in activity_feed(organization=org)]

    assert f"Job #{good.pk} lenet5-slim finished: targets met" in texts
    assert any(t.endswith("failed: Out of memory in stage 2") for t in texts)
    assert any(t.startswith("Deployment #") and "went out to one device" in t for t in texts)
    # Uploads: a model version (make_model_version) and a refused data set, in red.
    assert any(t.startswith("model lenet") and t.endswith("was uploaded") for t in texts)
    Dataset.objects.create(
        organization=org, name="pets", kind="image_zip", status=ItemStatus.INVALID, created_by=owner
    )
    refused = [a for a in activity_feed(organization=org) if a.link_text == "dataset pets"]
    assert [(a.text, a.badge, a.actor) for a in refused] == [
        ("was uploaded and refused", "err", "ada")
    ]
    fragment = client_for(owner).get(reverse("activity")).content.decode()
    assert f'href="/jobs/{good.pk}/"' in fragment
    assert "finished: targets met" in fragment


def test_the_activity_fragment_shows_only_the_current_organisation(lab):
    # ``lab`` holds another organisation's jobs; none of them may show.
    stranger = make_user(username="mallory")
    make_organization(name="Other", owner=stranger)
    fragment = client_for(stranger).get(reverse("activity")).content.decode()

    assert "lenet5-slim" not in fragment
    assert "Nothing yet" in fragment


def test_get_started_shows_only_while_the_organisation_has_no_jobs():
    owner = make_user(username="newbie")
    make_organization(name="Fresh", owner=owner)
    page = client_for(owner).get(reverse("home")).content.decode()

    assert "Get started" in page
    assert "No jobs yet" in page


@pytest.mark.parametrize(
    ("role", "first", "then", "members"),
    [
        (Role.MANAGER, "Latest results", "Recent jobs", False),
        (Role.ENGINEER, "Recent jobs", "Best version per model", False),
        (Role.ADMIN, "Recent jobs", "Best version per model", True),
    ],
)
def test_each_role_reads_its_own_order(lab, role, first, then, members):
    org, owner, _good = lab
    user = owner if role == Role.ADMIN else make_member(org, role=role)
    page = client_for(user).get(reverse("home")).content.decode()

    assert first in page and then in page
    assert page.index(first) < page.index(then)
    assert ('href="/accounts/organization/"><strong>Members' in page) is members
