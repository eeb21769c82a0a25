"""The browser socket /ws/org/: who may connect, which group they join, what they receive."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from factories import make_organization, make_user
from ws_testing import communicator, session_cookie_for

from webapp.accounts.models import Membership
from webapp.live.consumers import CLOSE_BAD_MESSAGE, CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from webapp.live.services import org_event_build, org_event_send, org_group_name

pytestmark = pytest.mark.django_db(transaction=True)


def _admin(org):
    return Membership.objects.get(organization=org).user


def test_a_socket_without_a_session_is_refused():
    async def scenario():
        ws = communicator(cookie=None)
        connected, code = await ws.connect()
        await ws.disconnect()
        return connected, code

    assert async_to_sync(scenario)() == (False, CLOSE_UNAUTHENTICATED)


def test_a_socket_from_a_foreign_origin_is_refused_even_with_a_valid_session():
    cookie = session_cookie_for(_admin(make_organization()))

    async def scenario():
        ws = communicator(cookie=cookie, origin="http://evil.example")
        connected, _ = await ws.connect()
        await ws.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


def test_a_socket_of_a_user_without_an_organisation_is_refused():
    cookie = session_cookie_for(make_user())

    async def scenario():
        ws = communicator(cookie=cookie)
        return await ws.connect()

    assert async_to_sync(scenario)() == (False, CLOSE_FORBIDDEN)


def test_a_socket_joins_only_its_organisations_group():
    org_a, org_b = make_organization(name="A"), make_organization(name="B")
    cookie = session_cookie_for(_admin(org_a))
    layer = get_channel_layer()

    async def scenario():
        ws = communicator(cookie=cookie)
        connected, _ = await ws.connect()
        assert connected
        hello = await ws.receive_json_from(timeout=5)
        await layer.group_send(
            org_group_name(org_b.pk), org_event_build(kind="secret", payload={"n": 1})
        )
        await sync_to_async(org_event_send)(
            organization_id=org_a.pk, kind="job.progress", payload={"fraction": 0.5}
        )
        received = await ws.receive_json_from(timeout=5)
        nothing_else = await ws.receive_nothing(timeout=0.5)
        await ws.disconnect()
        return hello, received, nothing_else

    hello, received, nothing_else = async_to_sync(scenario)()
    assert hello["kind"] == "hello" and hello["payload"] == {"organization_id": org_a.pk}
    assert received["kind"] == "job.progress"
    assert received["payload"] == {"fraction": 0.5}
    assert set(received) == {"kind", "payload", "ts"}
    assert nothing_else is True


def test_a_socket_follows_the_org_switchers_choice():
    user = make_user()
    make_organization(name="Alpha", owner=user)
    beta = make_organization(name="Beta", owner=user)
    cookie = session_cookie_for(user, organization_id=beta.pk)

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        hello = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return hello

    assert async_to_sync(scenario)()["payload"]["organization_id"] == beta.pk


def test_the_switcher_cannot_join_a_foreign_organisation():
    user = make_user()
    own = make_organization(owner=user)
    foreign = make_organization()
    cookie = session_cookie_for(user, organization_id=foreign.pk)

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        hello = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return hello

    assert async_to_sync(scenario)()["payload"]["organization_id"] == own.pk


@pytest.mark.parametrize(
    "frame",
    [
        {"text_data": '{"type": "subscribe", "group": "org.1"}'},
        {"text_data": "not json"},
        {"text_data": '{"type": "ping", "pad": "' + "x" * 2000 + '"}'},
        {"bytes_data": b"\x00\x01"},
    ],
    ids=["unexpected-type", "not-json", "oversized", "binary"],
)
def test_unexpected_client_messages_close_the_socket(frame):
    cookie = session_cookie_for(_admin(make_organization()))

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await ws.send_to(**frame)
        output = await ws.receive_output(timeout=5)
        await ws.wait()
        return output

    assert async_to_sync(scenario)() == {"type": "websocket.close", "code": CLOSE_BAD_MESSAGE}


def test_a_ping_gets_a_pong():
    cookie = session_cookie_for(_admin(make_organization()))

    async def scenario():
        ws = communicator(cookie=cookie)
        await ws.connect()
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "ping"})
        reply = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return reply

    assert async_to_sync(scenario)()["kind"] == "pong"
