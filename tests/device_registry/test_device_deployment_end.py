"""Deployments that end: cancel (page and API, by role), expiry of silent targets (the beat task
and every read), deploys the bus missed delivered on the next heartbeat, and re-enrollment's own
close code."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from device_factories import FACTS, agent_socket, artifact, deployment, enrolled_device, org_admin
from django.test import Client
from django.utils import timezone
from factories import client_for, make_member

from device_registry import bus, services, tasks
from device_registry.models import Deployment, DeploymentResult, DeploymentTarget
from device_registry.selectors import device_pending_deploys
from edgeslim_agent.protocol import (
    CLOSE_REENROLLED,
    CLOSE_REVOKED,
    BenchSettings,
    Cancel,
    Deploy,
    Heartbeat,
    Hello,
    Progress,
    Result,
    decode,
    encode,
)
from webapp.accounts.models import Role
from webapp.accounts.services import api_token_create

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = encode(Hello(agent_version="0.4.0", facts=FACTS))


def _two_device_deployment(tmp_path):
    pi, _ = enrolled_device(name="pi", tags=["lab"])
    org = pi.organization
    jetson, _ = enrolled_device(org, name="jetson", tags=["lab"])
    dep = services.deployment_create(
        organization=org,
        artifact=artifact(org, tmp_path),
        target_kind="tag",
        target_value="lab",
        settings=BenchSettings(warmup=1, runs=5),
    )
    return org, pi, jetson, dep


def _statuses(dep):
    return dict(
        DeploymentTarget.objects.filter(deployment=dep).values_list("device__name", "status")
    )


def _finish(dep, device):
    """The device reports its one latency and its ``complete`` result, as an agent does."""
    for seq, kind in ((1, "latency"), (3, "complete")):
        services.deployment_result_store(
            device_id=device.pk,
            result=Result(deployment_id=dep.pk, seq=seq, kind=kind, data={"p50_ms": 1.0}),
        )


# --- cancel --------------------------------------------------------------------------------------


def test_an_engineer_cancels_from_the_page_after_a_confirm_and_finished_targets_keep_theirs(
    tmp_path,
):
    org, pi, jetson, dep = _two_device_deployment(tmp_path)
    _finish(dep, pi)
    engineer = make_member(org, role=Role.ENGINEER, username="eve")
    client = client_for(engineer)
    page = client.get(f"/devices/deployments/{dep.pk}/").content.decode()
    assert 'id="cancel-deployment"' in page
    assert "return confirm('Cancel deployment #" in page  # the browser asks first

    done = client.post(f"/devices/deployments/{dep.pk}/cancel/", follow=True)
    assert done.status_code == 200
    assert _statuses(dep) == {"pi": "succeeded", "jetson": "cancelled"}
    dep.refresh_from_db()
    assert dep.cancelled_at is not None and dep.ended_at is not None
    assert dep.cancelled_by == engineer
    page = done.content.decode()
    assert 'id="deployment-status">cancelled<' in page
    assert "Cancelled" in page and "by eve" in page
    assert 'id="cancel-deployment"' not in page  # nothing left to cancel
    assert ">cancelled</span>" in page and ">succeeded</span>" in page
    # Cancelling again says so instead of pretending.
    again = client.post(f"/devices/deployments/{dep.pk}/cancel/", follow=True)
    assert "has already ended" in again.content.decode()
    # The device page shows its own target's state.
    device_page = client.get(f"/devices/{jetson.pk}/").content.decode()
    assert "data-device-target-status" in device_page and ">cancelled</span>" in device_page


def test_a_manager_can_neither_see_nor_use_the_cancel_button(tmp_path):
    org, _pi, _jetson, dep = _two_device_deployment(tmp_path)
    manager = client_for(make_member(org, role=Role.MANAGER))
    assert (
        'id="cancel-deployment"'
        not in manager.get(f"/devices/deployments/{dep.pk}/").content.decode()
    )
    assert manager.post(f"/devices/deployments/{dep.pk}/cancel/").status_code == 403
    assert set(_statuses(dep).values()) == {"pending"}
    assert Deployment.objects.get(pk=dep.pk).ended_at is None


def test_the_api_cancels_for_writers_answers_409_once_ended_and_403_to_managers(tmp_path):
    org, _pi, _jetson, dep = _two_device_deployment(tmp_path)
    _token, manager_key = api_token_create(user=make_member(org, role=Role.MANAGER))
    manager = Client(HTTP_AUTHORIZATION=f"Token {manager_key}")
    assert manager.post(f"/api/v1/deployments/{dep.pk}/cancel/").status_code == 403
    assert Deployment.objects.get(pk=dep.pk).ended_at is None

    _token, key = api_token_create(user=org_admin(org))
    admin = Client(HTTP_AUTHORIZATION=f"Token {key}")
    answer = admin.post(f"/api/v1/deployments/{dep.pk}/cancel/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] and body["ended_at"]
    assert {t["status"] for t in body["targets"]} == {"cancelled"}
    assert admin.post(f"/api/v1/deployments/{dep.pk}/cancel/").status_code == 409
    # Another organisation's deployment is not found.
    other, _ = enrolled_device(name="elsewhere")
    _token, other_key = api_token_create(user=org_admin(other.organization))
    stranger = Client(HTTP_AUTHORIZATION=f"Token {other_key}")
    assert stranger.post(f"/api/v1/deployments/{dep.pk}/cancel/").status_code == 404


def test_a_cancelled_deployment_is_not_sent_on_hello_and_a_late_result_keeps_it_cancelled(
    tmp_path,
):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device, batch_sizes=[1])
    services.deployment_cancel(deployment=dep)

    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=HELLO)
        await ws.receive_from()  # welcome
        nothing = await ws.receive_nothing(timeout=0.5)
        await ws.disconnect()
        return nothing

    assert async_to_sync(scenario)()  # no deploy
    # A device that was already running it reports: stored and acknowledged, state kept.
    stored = services.deployment_result_store(
        device_id=device.pk,
        result=Result(deployment_id=dep.pk, seq=3, kind="complete", data={}),
    )
    assert stored.created and "status" not in (stored.event or {})
    assert DeploymentTarget.objects.get(deployment=dep).status == "cancelled"
    assert DeploymentResult.objects.filter(deployment=dep).count() == 1


@pytest.mark.parametrize(("agent_version", "told"), [("0.6.0", True), ("0.5.0", False)])
def test_a_cancel_reaches_agents_that_know_it_and_spares_older_ones(tmp_path, agent_version, told):
    device, credential = enrolled_device()
    org = device.organization
    dep = deployment(org, artifact(org, tmp_path), device, batch_sizes=[1])

    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=encode(Hello(agent_version=agent_version, facts=FACTS)))
        await ws.receive_from()  # welcome
        sent = decode(await ws.receive_from())  # the deploy
        await sync_to_async(services.deployment_cancel)(deployment=dep)
        if told:
            out = decode(await ws.receive_from(timeout=5))
        else:
            out = await ws.receive_nothing(timeout=0.8)
        await ws.disconnect()
        return sent, out

    sent, out = async_to_sync(scenario)()
    assert isinstance(sent, Deploy)
    if told:
        assert out == Cancel(deployment_id=dep.pk)
    else:
        assert out is True  # an older agent would refuse the unknown message: nothing is sent


# --- expiry --------------------------------------------------------------------------------------


def test_the_beat_task_times_out_silent_targets_and_ends_the_deployment(tmp_path):
    org, pi, jetson, dep = _two_device_deployment(tmp_path)
    third, _ = enrolled_device(org, name="zero", tags=["lab"])
    dep2 = services.deployment_create(
        organization=org,
        artifact=dep.artifact,
        target_kind="fleet",
        settings=BenchSettings(warmup=1, runs=5),
        timeout_s=3600,
    )
    _finish(dep, pi)  # pi answered and finished; jetson never answered
    assert tasks.deployments_expire() == 0  # nothing is past its deadline yet
    # The second deployment's pi is half-way (benchmarking) when the deadline passes.
    services.deployment_progress(
        device_id=pi.pk,
        progress=Progress(deployment_id=dep2.pk, stage="benchmarking", fraction=0.5),
    )
    past = timezone.now() - timedelta(seconds=1)
    Deployment.objects.filter(pk__in=[dep.pk, dep2.pk]).update(expires_at=past)

    assert tasks.deployments_expire() == 1 + 3
    assert _statuses(dep) == {"pi": "succeeded", "jetson": "timed_out"}
    assert _statuses(dep2) == {"pi": "timed_out", "jetson": "timed_out", "zero": "timed_out"}
    jetson_target = DeploymentTarget.objects.get(deployment=dep, device=jetson)
    assert "never answered" in jetson_target.message
    pi_target = DeploymentTarget.objects.get(deployment=dep2, device=pi)
    assert pi_target.message.endswith("(last stage: benchmarking)")
    for d in (dep, dep2):
        d.refresh_from_db()
        assert d.ended_at is not None and d.cancelled_at is None
    assert tasks.deployments_expire() == 0  # idempotent
    # A timed-out target is not sent any more, and the pages and the API say what happened.
    assert device_pending_deploys(device_id=jetson.pk) == []
    client = client_for(org_admin(org))
    page = client.get(f"/devices/deployments/{dep.pk}/").content.decode()
    assert 'id="deployment-status">expired<' in page
    assert ">timed out</span>" in page and 'id="cancel-deployment"' not in page
    listing = client.get("/devices/deployments/").content.decode()
    assert listing.count(">expired</span>") == 2
    api = client.get(f"/api/v1/deployments/{dep2.pk}/").json()
    assert api["status"] == "expired"
    assert {t["status"] for t in api["targets"]} == {"timed_out"}
    assert third.pk in {t["device"] for t in api["targets"]}


def test_a_page_read_applies_the_deadline_without_waiting_for_beat(tmp_path):
    org, _pi, jetson, dep = _two_device_deployment(tmp_path)
    Deployment.objects.filter(pk=dep.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = client_for(org_admin(org))
    api = client.get("/api/v1/deployments/").json()
    row = next(d for d in api if d["id"] == dep.pk)
    assert row["status"] == "expired" and row["ended_at"]
    page = client.get(f"/devices/{jetson.pk}/").content.decode()
    assert ">timed out</span>" in page and ">expired</span>" in page


def test_the_api_takes_a_deadline_and_refuses_one_out_of_range(tmp_path):
    device, _ = enrolled_device()
    org = device.organization
    art = artifact(org, tmp_path)
    client = client_for(org_admin(org))
    body = {"artifact": art.pk, "target_kind": "fleet", "timeout_s": 600}
    made = client.post("/api/v1/deployments/", body, content_type="application/json")
    assert made.status_code == 201, made.content
    dep = Deployment.objects.get(pk=made.json()["id"])
    assert 590 <= (dep.expires_at - dep.created_at).total_seconds() <= 610
    too_short = client.post(
        "/api/v1/deployments/", body | {"timeout_s": 5}, content_type="application/json"
    )
    assert too_short.status_code == 400 and "timeout_s" in too_short.json()


# --- the heartbeat delivers what the bus missed ----------------------------------------------------


async def _read_until_close(ws):
    while True:
        out = await ws.receive_output(timeout=5)
        if out["type"] == "websocket.close":
            return out["code"]


def test_a_deploy_the_bus_missed_arrives_on_the_next_heartbeat_and_only_once(tmp_path, monkeypatch):
    from device_registry import consumers

    monkeypatch.setattr(consumers, "SEEN_FLUSH_EVERY_S", 0.2)
    device, credential = enrolled_device()
    org = device.organization
    art = artifact(org, tmp_path)

    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=HELLO)
        await ws.receive_from()  # welcome; nothing pending yet
        # The deploy is published while the pub/sub message cannot reach this socket.
        monkeypatch.setattr(bus, "publish", lambda device_id, event: None)
        dep = await sync_to_async(deployment)(org, art, device, batch_sizes=[1])
        missed = await ws.receive_nothing(timeout=0.5)
        await ws.send_to(text_data=encode(Heartbeat(ts=1.0)))
        deploy = decode(await ws.receive_from(timeout=5))
        # Later heartbeats do not send it again while it is on this connection...
        await ws.send_to(text_data=encode(Heartbeat(ts=2.0)))
        again = await ws.receive_nothing(timeout=0.8)
        # ...nor does a bus message that arrives late.
        monkeypatch.undo()
        monkeypatch.setattr(consumers, "SEEN_FLUSH_EVERY_S", 0.2)
        text = encode(deploy)
        await sync_to_async(bus.publish)(
            device.pk, {"type": "deploy", "deployment_id": dep.pk, "text": text}
        )
        late = await ws.receive_nothing(timeout=0.8)
        await ws.disconnect()
        return dep, missed, deploy, again, late

    dep, missed, deploy, again, late = async_to_sync(scenario)()
    assert missed, "the bus message was supposed to be dropped"
    assert isinstance(deploy, Deploy) and deploy.manifest.deployment_id == dep.pk
    assert again and late


def test_re_enrolling_closes_the_old_connection_with_its_own_code():
    device, credential = enrolled_device()

    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=HELLO)
        await ws.receive_from()
        code = await sync_to_async(services.enrollment_code_issue)(device=device)
        await sync_to_async(services.enrollment_code_redeem)(code=code)
        error = json.loads(await ws.receive_from(timeout=5))
        return error, await _read_until_close(ws)

    error, code = async_to_sync(scenario)()
    assert code == CLOSE_REENROLLED != CLOSE_REVOKED
    assert error["code"] == "reenrolled"


def test_a_re_enrollment_whose_bus_message_was_missed_closes_on_the_next_heartbeat(monkeypatch):
    from device_registry import consumers

    monkeypatch.setattr(consumers, "SEEN_FLUSH_EVERY_S", 0.2)
    device, credential = enrolled_device()

    async def scenario():
        ws = agent_socket(credential)
        await ws.connect()
        await ws.send_to(text_data=HELLO)
        await ws.receive_from()
        monkeypatch.setattr(bus, "publish", lambda device_id, event: None)
        code = await sync_to_async(services.enrollment_code_issue)(device=device)
        await sync_to_async(services.enrollment_code_redeem)(code=code)
        quiet = await ws.receive_nothing(timeout=0.5)
        await ws.send_to(text_data=encode(Heartbeat(ts=1.0)))
        return quiet, await _read_until_close(ws)

    quiet, code = async_to_sync(scenario)()
    assert quiet and code == CLOSE_REENROLLED
