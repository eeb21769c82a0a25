"""The agents' socket /ws/agent/: who may connect, what is refused, and how results are stored."""

from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from device_factories import FACTS, agent_socket, artifact, deployment, enrolled_device, org_admin
from django.utils import timezone
from factories import make_organization
from ws_testing import communicator, session_cookie_for

from device_registry import services
from device_registry.models import DeploymentResult, DeploymentTarget, Device
from edgeslim_agent.protocol import (
    CLOSE_EVICTED,
    CLOSE_PROTOCOL,
    CLOSE_RATE,
    CLOSE_REVOKED,
    CLOSE_TOO_BIG,
    Ack,
    Deploy,
    Heartbeat,
    Hello,
    Progress,
    Result,
    Welcome,
    decode,
    encode,
)
from webapp.live.services import org_group_name

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = encode(Hello(agent_version="0.1.0", facts=FACTS))


async def _open(credential, **kw):
    ws = agent_socket(credential, **kw)
    connected, code = await ws.connect()
    return ws, connected, code


async def _hello(ws):
    await ws.send_to(text_data=HELLO)
    return decode(await ws.receive_from())


def _refused(credential, **kw) -> bool:
    async def scenario():
        ws, connected, _ = await _open(credential, **kw)
        await ws.disconnect()
        return connected

    return async_to_sync(scenario)() is False


@pytest.mark.parametrize("credential", [None, "", "esd_wrong", "Bearer x"])
def test_a_missing_or_wrong_credential_is_refused(credential):
    assert _refused(credential)


def test_a_revoked_credential_is_refused():
    device, credential = enrolled_device()
    services.device_revoke(device=device)
    assert _refused(credential)


def test_an_agent_from_a_foreign_origin_is_refused():
    _, credential = enrolled_device()
    assert _refused(credential, origin="http://evil.example")


def test_a_browser_socket_from_a_foreign_origin_is_refused_even_with_a_session():
    org = make_organization()
    cookie = session_cookie_for(org_admin(org))

    async def scenario():
        ws = communicator(cookie=cookie, origin="http://evil.example")
        connected, _ = await ws.connect()
        await ws.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


def test_hello_is_welcomed_and_records_facts_and_presence():
    device, credential = enrolled_device()

    async def scenario():
        ws, connected, _ = await _open(credential)
        assert connected
        welcome = await _hello(ws)
        await ws.send_to(text_data=encode(Heartbeat(ts=1.0)))
        await ws.disconnect()
        return welcome

    welcome = async_to_sync(scenario)()
    assert isinstance(welcome, Welcome) and welcome.device_id == device.pk
    device.refresh_from_db()
    assert device.facts["cpu"] == "test cpu" and device.agent_version == "0.1.0"
    assert device.last_seen is not None and device.connection_channel == ""


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("x" * 70_000, CLOSE_TOO_BIG),
        ("{not json", CLOSE_PROTOCOL),
        (json.dumps({"v": 1, "type": "heartbeat", "ts": 1, "evil": True}), CLOSE_PROTOCOL),
        (json.dumps({"v": 2, "type": "heartbeat", "ts": 1}), CLOSE_PROTOCOL),
        (encode(Heartbeat(ts=1.0)), CLOSE_PROTOCOL),  # before hello
    ],
)
def test_oversized_or_malformed_frames_close_the_socket(frame, code):
    _, credential = enrolled_device()

    async def scenario():
        ws, _, _ = await _open(credential)
        await ws.send_to(text_data=frame)
        error = json.loads(await ws.receive_from())
        closed = await ws.receive_output()
        return error, closed

    error, closed = async_to_sync(scenario)()
    assert error["type"] == "error"
    assert closed == {"type": "websocket.close", "code": code}


def test_a_message_flood_is_cut_off():
    _, credential = enrolled_device()

    async def scenario():
        ws, _, _ = await _open(credential)
        await _hello(ws)
        for _ in range(300):
            await ws.send_to(text_data=encode(Heartbeat(ts=1.0)))
        while True:
            out = await ws.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                return out["code"]

    assert async_to_sync(scenario)() == CLOSE_RATE


def test_a_second_connection_evicts_the_first_and_it_is_logged(caplog):
    _, credential = enrolled_device()
    caplog.set_level(logging.WARNING, logger="edgeslim.devices.socket")

    async def scenario():
        first, _, _ = await _open(credential)
        await _hello(first)
        second, connected, _ = await _open(credential)
        assert connected
        await _hello(second)
        while True:
            out = await first.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                break
        await second.send_to(text_data=encode(Heartbeat(ts=2.0)))
        assert await second.receive_nothing(timeout=0.3)
        await second.disconnect()
        return out["code"]

    assert async_to_sync(scenario)() == CLOSE_EVICTED
    assert "evicts" in caplog.text


def test_revoking_closes_the_live_connection():
    device, credential = enrolled_device()

    async def scenario():
        ws, _, _ = await _open(credential)
        await _hello(ws)
        from asgiref.sync import sync_to_async

        await sync_to_async(services.device_revoke)(device=device)
        while True:
            out = await ws.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                return out["code"]

    assert async_to_sync(scenario)() == CLOSE_REVOKED


def test_pending_deployments_are_sent_on_hello_and_results_are_stored_once(tmp_path):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device, batch_sizes=[1, 2])
    layer = get_channel_layer()
    result = Result(deployment_id=dep.pk, seq=2, kind="latency", data={"p50_ms": 1.0})

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add(org_group_name(org.pk), channel)
        ws, _, _ = await _open(credential)
        await _hello(ws)
        deploy = decode(await ws.receive_from())
        await ws.send_to(
            text_data=encode(Progress(deployment_id=dep.pk, stage="downloading", fraction=0.5))
        )
        acks = []
        for _ in range(3):  # the same result three times, e.g. resent after reconnects
            await ws.send_to(text_data=encode(result))
            acks.append(decode(await ws.receive_from()))
        events = []
        while len(events) < 2:
            message = await layer.receive(channel)
            # Events of one server tick arrive coalesced in a "batch" event.
            inner = message["payload"]["events"] if message["kind"] == "batch" else [message]
            events += [e for e in inner if e["kind"] != "device.status"]
        await ws.disconnect()
        return deploy, acks, events

    deploy, acks, events = async_to_sync(scenario)()
    assert isinstance(deploy, Deploy) and deploy.manifest.deployment_id == dep.pk
    assert acks == [Ack(deployment_id=dep.pk, seq=2)] * 3
    assert DeploymentResult.objects.filter(deployment=dep).count() == 1
    kinds = [e["kind"] for e in events]
    assert kinds == ["deployment.progress", "deployment.result"]
    assert events[1]["payload"]["data"]["p50_ms"] == 1.0
    assert DeploymentTarget.objects.get(deployment=dep).status == "downloading"


def test_a_result_whose_seq_does_not_fit_the_deployment_is_refused(tmp_path):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device, batch_sizes=[1])

    async def scenario():
        ws, _, _ = await _open(credential)
        await _hello(ws)
        await ws.receive_from()  # deploy
        await ws.send_to(
            text_data=encode(Result(deployment_id=dep.pk, seq=99, kind="latency", data={}))
        )
        await ws.receive_from()  # error
        return await ws.receive_output()

    assert async_to_sync(scenario)()["code"] == CLOSE_PROTOCOL
    assert not DeploymentResult.objects.exists()


def test_another_organisations_device_cannot_report_on_a_deployment(tmp_path):
    device_a, _ = enrolled_device(name="a")
    device_b, credential_b = enrolled_device(name="b")
    org_a = device_a.organization
    dep = deployment(org_a, artifact(org_a, tmp_path), device_a)

    async def scenario():
        ws, _, _ = await _open(credential_b)
        await _hello(ws)
        await ws.send_to(
            text_data=encode(
                Result(deployment_id=dep.pk, seq=1, kind="latency", data={"p50_ms": 666})
            )
        )
        ack = decode(await ws.receive_from())
        await ws.disconnect()
        return ack

    assert isinstance(async_to_sync(scenario)(), Ack)  # acknowledged so it is dropped...
    assert not DeploymentResult.objects.exists()  # ...but never stored
    assert Device.objects.get(pk=device_b.pk).organization != org_a


def test_a_revocation_whose_bus_message_was_missed_closes_on_the_next_heartbeat(monkeypatch):
    from device_registry import consumers

    monkeypatch.setattr(consumers, "SEEN_WRITE_EVERY_S", 0.0)
    monkeypatch.setattr(consumers, "SEEN_FLUSH_EVERY_S", 0.2)
    device, credential = enrolled_device()

    async def scenario():
        ws, _, _ = await _open(credential)
        await _hello(ws)
        from asgiref.sync import sync_to_async

        # Revoked behind the bus's back (as if its pub/sub message was lost).
        await sync_to_async(Device.objects.filter(pk=device.pk).update)(
            revoked_at=timezone.now(), credential_hash=None
        )
        await ws.send_to(text_data=encode(Heartbeat(ts=1.0)))
        while True:
            out = await ws.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                return out["code"]

    assert async_to_sync(scenario)() == CLOSE_REVOKED
