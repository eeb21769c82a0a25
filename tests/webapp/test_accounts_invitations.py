"""Invitations by link: admins invite and revoke; a link makes one member, once, until it expires."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from factories import PASSWORD, client_for, make_member, make_organization, make_user
from scoping import assert_other_org_gets_404

from webapp.accounts import services
from webapp.accounts.models import Invitation, Membership, Role, User

pytestmark = pytest.mark.django_db


def _admin_of(org):
    return Membership.objects.get(organization=org, role=Role.ADMIN).user


def _pending_table(client: Client) -> str:
    page = client.get(reverse("accounts:organization_settings")).content.decode()
    match = re.search(r'<table class="table" id="invitation-table">.*?</table>', page, re.S)
    return match.group(0) if match else ""


def _invite(client: Client, email: str, role: str = "engineer") -> str:
    response = client.post(reverse("accounts:invitation_create"), {"email": email, "role": role})
    assert response.status_code == 302
    link = re.search(r"http://testserver(/accounts/invitations/[\w-]+/)", mail.outbox[-1].body)
    assert link, mail.outbox[-1].body
    return link.group(1)


def test_an_invitee_signs_up_by_the_emailed_link_and_joins_with_the_role():
    org = make_organization(name="Edge Lab")
    path = _invite(client_for(_admin_of(org)), "grace@example.com", role="manager")
    assert mail.outbox[-1].to == ["grace@example.com"]
    invitation = Invitation.objects.get()
    assert path.rstrip("/").rsplit("/", 1)[-1] not in invitation.key_hash  # only the hash kept

    client = Client()
    page = client.get(path)
    assert page.status_code == 200
    assert "Join Edge Lab" in page.content.decode()
    weak = client.post(path, {"username": "grace", "password1": "123", "password2": "123"})
    assert weak.status_code == 400
    response = client.post(
        path, {"username": "grace", "password1": PASSWORD, "password2": PASSWORD}
    )

    assert response.status_code == 302
    grace = User.objects.get(username="grace")
    assert grace.email == "grace@example.com"
    assert Membership.objects.get(user=grace, organization=org).role == Role.MANAGER
    assert "Edge Lab" in client.get(reverse("home")).content.decode()  # signed in
    # One use only.
    assert Client().get(path).status_code == 404


def test_a_signed_in_user_accepts_into_a_second_organisation():
    org = make_organization(name="Second")
    existing = make_member(make_organization(name="First"))
    path = _invite(client_for(_admin_of(org)), existing.email)

    client = client_for(existing)
    assert "Accept and join" in client.get(path).content.decode()
    assert client.post(path).status_code == 302

    assert Membership.objects.get(user=existing, organization=org).role == Role.ENGINEER


def test_revoked_and_expired_links_are_refused():
    org = make_organization()
    admin_client = client_for(_admin_of(org))
    revoked_path = _invite(admin_client, "a@example.com")
    revoked = Invitation.objects.get(email="a@example.com")
    expired_path = _invite(admin_client, "b@example.com")
    Invitation.objects.filter(email="b@example.com").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    pending = _pending_table(admin_client)
    assert "a@example.com" in pending and "b@example.com" not in pending

    admin_client.post(reverse("accounts:invitation_revoke", args=[revoked.pk]))

    for path in [revoked_path, expired_path, "/accounts/invitations/not-a-key/"]:
        response = Client().post(
            path, {"username": "x1", "password1": PASSWORD, "password2": PASSWORD}
        )
        assert response.status_code == 404, path
    assert not User.objects.filter(username="x1").exists()
    assert "a@example.com" not in _pending_table(admin_client)


@pytest.mark.parametrize("role", [Role.ENGINEER, Role.MANAGER])
def test_only_admins_invite_or_revoke(role):
    org = make_organization()
    invitation, _key = services.invitation_create(
        organization=org, email="c@example.com", role=Role.ENGINEER, invited_by=_admin_of(org)
    )
    client = client_for(make_member(org, role=role))

    invite = client.post(reverse("accounts:invitation_create"), {"email": "d@example.com"})
    revoke = client.post(reverse("accounts:invitation_revoke", args=[invitation.pk]))

    assert (invite.status_code, revoke.status_code) == (403, 403)
    assert Invitation.objects.count() == 1
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_other_organisations_invitations_answer_404():
    org_a, org_b = make_organization(name="A"), make_organization(name="B")
    invitation_b, _ = services.invitation_create(
        organization=org_b, email="e@example.com", role=Role.ENGINEER, invited_by=_admin_of(org_b)
    )
    assert_other_org_gets_404(
        client_for(_admin_of(org_a)),
        [reverse("accounts:invitation_revoke", args=[invitation_b.pk])],
        methods=["post"],
    )
    invitation_b.refresh_from_db()
    assert invitation_b.revoked_at is None


def test_inviting_a_member_again_is_refused_and_a_new_invitation_replaces_the_pending_one():
    org = make_organization()
    admin = _admin_of(org)
    member = make_member(org)
    with pytest.raises(Exception, match="already a member"):
        services.invitation_create(
            organization=org, email=member.email.upper(), role=Role.ENGINEER, invited_by=admin
        )
    first, first_key = services.invitation_create(
        organization=org, email="f@example.com", role=Role.ENGINEER, invited_by=admin
    )
    services.invitation_create(
        organization=org, email="f@example.com", role=Role.MANAGER, invited_by=admin
    )
    first.refresh_from_db()
    assert first.revoked_at is not None
    assert Client().get(reverse("accounts:invitation_accept", args=[first_key])).status_code == 404


def test_the_same_link_cannot_be_accepted_twice():
    org = make_organization()
    invitation, _ = services.invitation_create(
        organization=org, email="g@example.com", role=Role.ENGINEER, invited_by=_admin_of(org)
    )
    services.invitation_accept(invitation=invitation, user=make_user())
    with pytest.raises(Exception, match="no longer valid"):
        services.invitation_accept(invitation=invitation, user=make_user())
