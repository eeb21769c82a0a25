"""Browser sockets follow access: a logout, a password change, a removal, a new role or a
deactivated account reaches the sockets that are already open (real Redis channel layer, the
real pages doing the change)."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.test import Client
from factories import PASSWORD, make_member, make_organization
from jobs_factories import make_digits, make_model_version
from ws_testing import communicator

from webapp.accounts.models import Membership, Role, User
from webapp.jobs import services as job_services
from webapp.live.consumers import CLOSE_ACCESS_CHANGED, CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from webapp.live.services import org_event_send

pytestmark = pytest.mark.django_db(transaction=True)


def _session(user: User) -> tuple[Client, str]:
    """A signed-in browser: its client (to use the pages) and its session cookie (for sockets)."""
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return (
        client,
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}",
    )


async def _open(path: str, cookie: str) -> Any:
    ws = communicator(path, cookie=cookie)
    connected, code = await ws.connect()
    assert connected, code
    if path == "/ws/org/":
        assert (await ws.receive_json_from(timeout=5))["kind"] == "hello"
    return ws


async def _closed_with(ws: Any) -> int | None:
    message = await ws.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message.get("code")


async def _still_open(ws: Any, organization_id: int) -> bool:
    """The socket still relays its organisation's events (so it was not closed)."""
    await sync_to_async(org_event_send)(
        organization_id=organization_id, kind="ping", payload={"message": "still there?"}
    )
    event = await ws.receive_json_from(timeout=5)
    return bool(event["kind"] == "ping")


def _admin(org: Any) -> User:
    return Membership.objects.get(organization=org, role=Role.ADMIN).user


def test_logging_out_closes_that_sessions_sockets_and_only_those():
    org = make_organization()
    user = make_member(org, role=Role.ENGINEER)
    laptop, laptop_cookie = _session(user)
    _, phone_cookie = _session(user)

    async def scenario() -> tuple[int | None, bool]:
        on_laptop = await _open("/ws/org/", laptop_cookie)
        on_phone = await _open("/ws/org/", phone_cookie)
        response = await sync_to_async(laptop.post)("/accounts/logout/")
        assert response.status_code == 302
        code = await _closed_with(on_laptop)
        phone_open = await _still_open(on_phone, org.pk)
        await on_phone.disconnect()
        return code, phone_open

    assert async_to_sync(scenario)() == (CLOSE_UNAUTHENTICATED, True)


def test_removing_a_member_closes_their_org_and_job_sockets_and_they_cannot_reconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_services, "_enqueue", lambda job: None)  # no worker needed here
    org = make_organization()
    admin_client, _ = _session(_admin(org))
    user = make_member(org, role=Role.ENGINEER)
    _, cookie = _session(user)
    job = job_services.job_create(
        organization=org,
        user=_admin(org),
        model_version=make_model_version(org),
        dataset=make_digits(org),
        recipe={"name": "r", "stages": [{"method": "finetune", "config": {"epochs": 1}}]},
        queue="cpu",
    )
    membership = Membership.objects.get(organization=org, user=user)

    async def scenario() -> tuple[int | None, int | None, tuple[bool, int]]:
        org_socket = await _open("/ws/org/", cookie)
        job_socket = await _open(f"/ws/jobs/{job.pk}/", cookie)
        response = await sync_to_async(admin_client.post)(
            f"/accounts/organization/members/{membership.pk}/remove/"
        )
        assert response.status_code == 302
        closed = (await _closed_with(org_socket), await _closed_with(job_socket))
        again = communicator(f"/ws/jobs/{job.pk}/", cookie=cookie)
        retry = await again.connect()
        await again.disconnect()
        return closed[0], closed[1], retry

    org_code, job_code, retry = async_to_sync(scenario)()
    assert (org_code, job_code) == (CLOSE_ACCESS_CHANGED, CLOSE_ACCESS_CHANGED)
    assert retry == (False, CLOSE_FORBIDDEN)
    assert not Membership.objects.filter(organization=org, user=user).exists()


def test_a_new_role_closes_the_socket_and_the_reconnect_is_authorised_again():
    org = make_organization()
    admin_client, _ = _session(_admin(org))
    user = make_member(org, role=Role.ENGINEER)
    _, cookie = _session(user)
    membership = Membership.objects.get(organization=org, user=user)

    async def scenario() -> tuple[int | None, bool]:
        ws = await _open("/ws/org/", cookie)
        response = await sync_to_async(admin_client.post)(
            f"/accounts/organization/members/{membership.pk}/role/", {"role": Role.MANAGER}
        )
        assert response.status_code == 302
        code = await _closed_with(ws)
        again = await _open("/ws/org/", cookie)
        reopened = await _still_open(again, org.pk)
        await again.disconnect()
        return code, reopened

    assert async_to_sync(scenario)() == (CLOSE_ACCESS_CHANGED, True)
    assert Membership.objects.get(pk=membership.pk).role == Role.MANAGER


def test_a_password_change_closes_the_other_sessions_sockets_but_not_its_own():
    org = make_organization()
    user = make_member(org, role=Role.ENGINEER)
    here, here_cookie = _session(user)
    _, there_cookie = _session(user)

    async def scenario() -> tuple[int | None, bool]:
        mine = await _open("/ws/org/", here_cookie)
        theirs = await _open("/ws/org/", there_cookie)
        response = await sync_to_async(here.post)(
            "/accounts/password/",
            {
                "old_password": PASSWORD,
                "new_password1": "a-new-long-passphrase-41",
                "new_password2": "a-new-long-passphrase-41",
            },
        )
        assert response.status_code == 302, response.content[:500]
        code = await _closed_with(theirs)
        kept = await _still_open(mine, org.pk)
        await mine.disconnect()
        return code, kept

    assert async_to_sync(scenario)() == (CLOSE_UNAUTHENTICATED, True)


def test_deactivating_a_user_closes_their_sockets_as_forbidden():
    org = make_organization()
    user = make_member(org, role=Role.ENGINEER)
    _, cookie = _session(user)

    def deactivate() -> None:
        user.is_active = False
        user.save(update_fields=["is_active"])

    async def scenario() -> int | None:
        ws = await _open("/ws/org/", cookie)
        await sync_to_async(deactivate)()
        return await _closed_with(ws)

    assert async_to_sync(scenario)() == CLOSE_FORBIDDEN


def test_the_last_admin_cannot_be_removed_and_only_admins_remove():
    org = make_organization()
    admin = _admin(org)
    admin_client, _ = _session(admin)
    engineer = make_member(org, role=Role.ENGINEER)
    engineer_client, _ = _session(engineer)
    admin_membership = Membership.objects.get(organization=org, user=admin)

    response = admin_client.post(
        f"/accounts/organization/members/{admin_membership.pk}/remove/", follow=True
    )
    assert "keeps at least one admin" in response.content.decode()
    assert Membership.objects.filter(pk=admin_membership.pk).exists()

    response = engineer_client.post(f"/accounts/organization/members/{admin_membership.pk}/remove/")
    assert response.status_code == 403
    assert Membership.objects.filter(pk=admin_membership.pk).exists()
