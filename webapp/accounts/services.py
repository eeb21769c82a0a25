"""Writes for accounts. Keyword-only and typed; views, commands and the API call these."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import slugify

from webapp.accounts.access import access_changed_notify
from webapp.accounts.models import ApiToken, Invitation, Membership, Organization, Role, User
from webapp.names import name_problem

# Expiry choices offered for API tokens, in days (None: never expires).
API_TOKEN_EXPIRY_DAYS: tuple[int | None, ...] = (30, 90, 365, None)


def _unique_slug(name: str) -> str:
    base = slugify(name)[:120] or "org"
    slug, n = base, 2
    while Organization.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def organization_create(*, name: str, owner: User) -> Organization:
    """Create an organisation with ``owner`` as its first admin."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "An organisation needs a name."})
    if (problem := name_problem(name)) is not None:
        raise ValidationError({"name": problem})
    organization = Organization.objects.create(name=name, slug=_unique_slug(name))
    membership_add(organization=organization, user=owner, role=Role.ADMIN)
    return organization


def membership_add(*, organization: Organization, user: User, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError({"user": f"{user.username} is already a member."})
    return Membership.objects.create(organization=organization, user=user, role=role)


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take ``membership``'s user out of its organisation (their open sockets close).

    The last admin stays: an organisation keeps at least one."""
    if membership.role == Role.ADMIN:
        admins = Membership.objects.select_for_update().filter(
            organization_id=membership.organization_id, role=Role.ADMIN
        )
        if admins.count() <= 1:
            raise ValidationError({"user": "An organisation keeps at least one admin."})
    membership.delete()


@transaction.atomic
def membership_role_change(*, membership: Membership, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if membership.role == Role.ADMIN and role != Role.ADMIN:
        admins = Membership.objects.select_for_update().filter(
            organization_id=membership.organization_id, role=Role.ADMIN
        )
        if admins.count() <= 1:
            raise ValidationError({"role": "An organisation keeps at least one admin."})
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def user_create(
    *,
    username: str,
    email: str,
    password: str,
    organization: Organization | None = None,
    role: str = Role.ENGINEER,
    is_superuser: bool = False,
    must_change_password: bool = False,
) -> User:
    """Create a user and, when ``organization`` is given, make them a member with ``role``.

    ``is_superuser`` also makes the user staff, for Django's admin at /admin/.
    ``must_change_password`` marks a password someone else chose: the user is sent to the
    change form on every page until they pick their own.
    """
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": "That username is taken."})
    user = User.objects.create_user(
        username=username,
        email=email,
        password=password,
        is_staff=is_superuser,
        is_superuser=is_superuser,
        must_change_password=must_change_password,
    )
    if organization is not None:
        membership_add(organization=organization, user=user, role=role)
    return user


def user_password_set(*, user: User, password: str, keep_session_key: str | None = None) -> User:
    """Set ``user``'s password (validated by the caller's form) and clear the forced change.

    The user's open browser sockets close, except those of ``keep_session_key`` (the session
    that changed it, which stays signed in)."""
    user.set_password(password)
    user.must_change_password = False
    user.save(update_fields=["password", "must_change_password"])
    access_changed_notify(user_id=user.pk, reason="password", keep_session_key=keep_session_key)
    return user


def api_token_create(
    *, user: User, name: str = "", expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Create an API token and return it with its key, which is never stored nor shown again.

    ``expires_in_days`` None makes a token that never expires; revoking ends any token.
    """
    if expires_in_days is not None and expires_in_days <= 0:
        raise ValidationError({"expires_in_days": "A token expires after at least one day."})
    key = "es_" + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken.objects.create(
        user=user,
        name=name.strip()[:100] or f"Token of {now:%Y-%m-%d %H:%M}",
        prefix=key[:10],
        key_hash=ApiToken.hash_key(key),
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, key


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke ``token`` for good (kept as a row so its history stays readable)."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def invitation_create(
    *, organization: Organization, email: str, role: str, invited_by: User
) -> tuple[Invitation, str]:
    """Invite ``email`` into ``organization`` with ``role``; returns the row and the link's key.

    The key is shown once (in the email and to the inviting admin); only its hash is stored.
    A new invitation to the same address replaces a pending one.
    """
    email = email.strip()
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member of {organization.name}."})
    now = timezone.now()
    with transaction.atomic():
        Invitation.objects.for_org(organization).filter(
            email__iexact=email, accepted_at=None, revoked_at=None
        ).update(revoked_at=now)
        key = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            organization=organization,
            email=email,
            role=role,
            key_hash=ApiToken.hash_key(key),
            invited_by=invited_by,
            expires_at=now + timedelta(days=settings.EDGESLIM_INVITATION_DAYS),
        )
    return invitation, key


def invitation_send(*, invitation: Invitation, accept_url: str) -> None:
    """Email the invitation link (printed on the console in the embedded mode)."""
    context = {"invitation": invitation, "accept_url": accept_url}
    send_mail(
        subject=f"You are invited to {invitation.organization.name} on EdgeSlim",
        message=render_to_string("accounts/email/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_revoke(*, invitation: Invitation) -> Invitation:
    if invitation.accepted_at is not None:
        raise ValidationError("That invitation was accepted already.")
    if invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation


def _invitation_lock_pending(invitation: Invitation) -> Invitation:
    # Row lock: two clicks on one link must not make two members.
    locked = Invitation.objects.select_for_update().select_related("organization")
    row = locked.get(pk=invitation.pk)
    if not row.is_pending(timezone.now()):
        raise ValidationError("This invitation is no longer valid.")
    return row


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User) -> Membership:
    """``user`` (signed in) joins the invitation's organisation with its role; used once."""
    row = _invitation_lock_pending(invitation)
    membership = membership_add(organization=row.organization, user=user, role=row.role)
    row.accepted_at, row.accepted_by = timezone.now(), user
    row.save(update_fields=["accepted_at", "accepted_by"])
    return membership


@transaction.atomic
def invitation_accept_as_new_user(*, invitation: Invitation, username: str, password: str) -> User:
    """Create the invitee's account (the invited email, their own password) and accept."""
    row = _invitation_lock_pending(invitation)
    user = user_create(username=username, email=row.email, password=password)
    invitation_accept(invitation=row, user=user)
    return user
