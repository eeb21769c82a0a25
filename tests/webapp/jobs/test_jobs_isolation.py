"""Organisation B cannot see A's jobs, events, reports, artifacts or job sockets through any URL,
API endpoint or websocket group (RELIABILITY item 27)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse
from factories import client_for
from scoping import assert_other_org_gets_404
from ws_testing import communicator, session_cookie_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_another_organisation_sees_nothing_of_a_job(finished_job, org_b, token_for):
    _, user_b = org_b
    pk = finished_job.pk
    page_urls = [
        reverse("jobs:detail", args=[pk]),
        reverse("jobs:artifact", args=[pk, "onnx"]),
        reverse("jobs:artifact", args=[pk, "recipe"]),
        reverse("jobs:edit_as_new", args=[pk]),
        reverse("reports:detail", args=[pk]),
    ]
    b = client_for(user_b)
    assert_other_org_gets_404(b, page_urls, methods=("get",))
    assert_other_org_gets_404(
        b,
        [reverse("jobs:cancel", args=[pk]), reverse("jobs:duplicate", args=[pk])],
        methods=("post",),
    )
    assert f"#{pk}" not in b.get(reverse("jobs:list")).content.decode()
    assert f"#{pk}" not in b.get(reverse("reports:index")).content.decode()

    headers = token_for(user_b)
    api = Client()
    assert api.get(reverse("api:jobs-list"), **headers).json() == []
    for name, args in [
        ("api:jobs-detail", [pk]),
        ("api:jobs-events", [pk]),
        ("api:jobs-report", [pk]),
        ("api:jobs-artifacts", [pk]),
        ("api:jobs-artifact", [pk, "onnx"]),
        ("api:jobs-artifact", [pk, "report"]),
    ]:
        assert api.get(reverse(name, args=args), **headers).status_code == 404, name
    for name in ("api:jobs-cancel", "api:jobs-duplicate"):
        assert api.post(reverse(name, args=[pk]), **headers).status_code == 404, name
    # B cannot start a job on A's model either.
    created = api.post(
        reverse("api:jobs-list"),
        data={
            "model_version": finished_job.model_version_id,
            "dataset": finished_job.dataset_id,
            "recipe": {"stages": ["ptq_int8"]},
        },
        content_type="application/json",
        **headers,
    )
    assert created.status_code == 400 and created.json()["field"] == "model_version"


def test_another_organisations_member_cannot_join_a_jobs_socket(finished_job, org_a, org_b):
    _, user_a = org_a
    _, user_b = org_b

    cookie_a, cookie_b = session_cookie_for(user_a), session_cookie_for(user_b)

    async def connect(cookie):
        comm = communicator(f"/ws/jobs/{finished_job.pk}/", cookie=cookie)
        connected, code = await comm.connect()
        if connected:
            await comm.disconnect()
        return connected, code

    # One event loop for all three sockets: the channel layer binds its Redis locks to the
    # loop that first used it.
    async def scenario():
        return await connect(cookie_a), await connect(cookie_b), await connect(None)

    member, foreigner, anonymous = async_to_sync(scenario)()
    assert member[0] is True
    assert foreigner == (False, 4403)
    assert anonymous[1] == 4401
