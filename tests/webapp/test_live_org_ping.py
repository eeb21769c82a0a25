"""org_ping: the worker → channel layer → browser path, as a plain function and on a real worker."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from factories import make_organization
from ws_testing import communicator, session_cookie_for

from webapp.accounts.models import Membership
from webapp.live.tasks import org_ping

pytestmark = pytest.mark.django_db(transaction=True)


def _cookie_for_new_org():
    org = make_organization()
    return org, session_cookie_for(Membership.objects.get(organization=org).user)


def test_org_ping_called_as_a_function_reaches_the_organisations_socket():
    org, cookie = _cookie_for_new_org()

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await sync_to_async(org_ping)(org.pk, "hello from a test")
        event = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return event

    event = async_to_sync(scenario)()
    assert event["kind"] == "ping"
    assert event["payload"] == {"message": "hello from a test"}


@pytest.mark.slow
def test_a_real_celery_worker_runs_org_ping_and_the_event_reaches_the_socket(celery_worker_process):
    org, cookie = _cookie_for_new_org()

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await sync_to_async(org_ping.delay)(org.pk, "through the queue")
        event = await ws.receive_json_from(timeout=60)
        await ws.disconnect()
        return event

    event = async_to_sync(scenario)()
    assert event["kind"] == "ping"
    assert event["payload"] == {"message": "through the queue"}
    assert "edgeslim.org_ping" in celery_worker_process.log.read_text()
