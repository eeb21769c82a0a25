"""Writes for accounts. Keyword-only and typed; views, commands and the API call these."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from webapp.accounts.models import ApiToken, Membership, Organization, Role, User


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
) -> User:
    """Create a user and, when ``organization`` is given, make them a member with ``role``.

    ``is_superuser`` also makes the user staff, for Django's admin at /admin/.
    """
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": "That username is taken."})
    user = User.objects.create_user(
        username=username,
        email=email,
        password=password,
        is_staff=is_superuser,
        is_superuser=is_superuser,
    )
    if organization is not None:
        membership_add(organization=organization, user=user, role=role)
    return user


def api_token_create(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Create an API token and return it with its key, which is never stored nor shown again."""
    key = "es_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name[:100], prefix=key[:10], key_hash=ApiToken.hash_key(key)
    )
    return token, key
