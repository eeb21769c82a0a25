"""The "Job N queued." notice is shown once: on the page the launch redirects to, never by the
live regions the page swaps in while the job runs, and not again on the next visit."""

from __future__ import annotations

import pytest
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from webapp.jobs import services
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db


def test_the_queued_notice_shows_once_and_never_in_the_live_regions(org_a):
    org, user = org_a
    original = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    c = client_for(user)
    launched = c.post(reverse("jobs:duplicate", args=[original.pk]))
    copy = Job.objects.exclude(pk=original.pk).get(organization=org)
    assert launched["Location"] == reverse("jobs:detail", args=[copy.pk])
    notice = f"Job {copy.pk} queued (a copy of job {original.pk})."

    regions = c.get(reverse("jobs:live_regions", args=[copy.pk])).content.decode()
    assert notice not in regions  # the partial neither shows nor consumes it
    first = c.get(launched["Location"]).content.decode()
    assert first.count(notice) == 1
    assert notice not in c.get(reverse("jobs:live_regions", args=[copy.pk])).content.decode()
    assert notice not in c.get(launched["Location"]).content.decode()
