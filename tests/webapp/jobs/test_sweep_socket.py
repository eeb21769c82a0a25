"""The sweep socket: a member hears a child start and end; another organisation is refused."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from jobs_factories import make_digits, make_model_version
from ws_testing import communicator, session_cookie_for

from webapp.jobs import services, sweep_services
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_member_hears_children_change_and_another_organisation_is_refused(
    org_a, org_b, monkeypatch
):
    monkeypatch.setattr(sweep_services, "_enqueue_baseline", lambda sweep: None)
    org, user = org_a
    sweep = sweep_services.sweep_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe={"stages": [{"method": "finetune", "config": {"epochs": 1}}]},
        grid={"lr": [0.01, 0.02]},
        queue="cpu",
    )
    child = Job.objects.filter(sweep=sweep).order_by("id").first()
    assert child is not None

    async def listen(cookie: str):
        comm = communicator(f"/ws/sweeps/{sweep.pk}/", cookie=cookie)
        connected, code = await comm.connect()
        if not connected:
            return connected, code, []
        await database_sync_to_async(services.job_cancel)(job=child)
        await database_sync_to_async(sweep_services.sweep_baseline_progress)(
            sweep_id=sweep.pk, fraction=0.5, message="measuring"
        )
        got = [await comm.receive_json_from(timeout=5) for _ in range(2)]
        await comm.disconnect()
        return connected, code, got

    # One event loop for both sockets: the channel layer binds its Redis locks to the loop that
    # first used it, and a consumer left on a second loop's teardown could hang there.
    async def scenario(foreign_cookie: str, member_cookie: str):
        return await listen(foreign_cookie), await listen(member_cookie)

    foreign, member = async_to_sync(scenario)(
        session_cookie_for(org_b[1]), session_cookie_for(user)
    )
    connected, code, _ = foreign
    assert not connected and code == 4403
    connected, _, got = member
    assert connected
    assert got[0]["kind"] == "child" and got[0]["job_id"] == child.pk
    assert got[0]["status"] == "CANCELLED"
    assert got[1] == {"kind": "progress", "progress": 0.5}
