"""The job socket replays persisted events after a seq, then relays live ones in order."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from jobs_factories import make_digits, make_model_version, two_stage_recipe
from ws_testing import communicator, session_cookie_for

from webapp.jobs import services

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_late_page_gets_the_missed_events_then_live_ones(org_a):
    org, user = org_a
    job = services.job_create(
        organization=org,
        user=user,
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe=two_stage_recipe(),
        queue="cpu",
    )
    for i in range(3):
        services.job_event_record(job=job, kind="log", payload={"line": f"line {i}"})
    # The page rendered up to seq 2 (status + line 0); it missed lines 1 and 2.

    cookie = session_cookie_for(user)

    async def scenario():
        comm = communicator(f"/ws/jobs/{job.pk}/?after=2", cookie=cookie)
        connected, _ = await comm.connect()
        assert connected
        replayed = [await comm.receive_json_from(timeout=5) for _ in range(2)]
        from channels.db import database_sync_to_async

        await database_sync_to_async(services.job_event_record)(
            job=job, kind="progress", payload={"progress": 0.5, "message": "half"}
        )
        live = await comm.receive_json_from(timeout=5)
        await comm.send_json_to({"type": "ping"})
        pong = await comm.receive_json_from(timeout=5)
        await comm.send_to(text_data="x" * 2000)
        closed = await comm.receive_output(timeout=5)
        await comm.disconnect()
        return replayed, live, pong, closed

    replayed, live, pong, closed = async_to_sync(scenario)()
    assert [(e["seq"], e["payload"]["line"]) for e in replayed] == [(3, "line 1"), (4, "line 2")]
    assert (live["seq"], live["kind"], live["payload"]["progress"]) == (5, "progress", 0.5)
    assert pong["kind"] == "pong"
    assert closed["type"] == "websocket.close" and closed["code"] == 4400
