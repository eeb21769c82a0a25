"""Reads for accounts: who belongs where, and org-scoped object lookup."""

from __future__ import annotations

from typing import Any, TypeVar

from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from webapp.accounts.models import ApiToken, Invitation, Membership, Organization, User

_M = TypeVar("_M", bound=models.Model)


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization")


def membership_list_for_org(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.for_org(organization).select_related("user").order_by("user__username")
    )


def membership_current(*, user: User, preferred_org_id: int | None = None) -> Membership | None:
    """The membership to act in: the preferred organisation if still a member, else the first."""
    memberships = membership_list_for_user(user=user).order_by("organization__name", "id")
    if preferred_org_id is not None:
        chosen = memberships.filter(organization_id=preferred_org_id).first()
        if chosen is not None:
            return chosen
    return memberships.first()


def membership_get(*, user: User, organization_id: int) -> Membership | None:
    return (
        Membership.objects.filter(user=user, organization_id=organization_id)
        .select_related("organization")
        .first()
    )


def get_object_for_org_or_404(
    model_or_qs: type[_M] | QuerySet[_M], *, org: Organization | None, **lookup: Any
) -> _M:
    """Fetch one row of ``org`` or raise 404: another organisation's row looks like no row."""
    if org is None:
        raise Http404("No organisation selected.")
    if isinstance(model_or_qs, QuerySet):
        queryset = model_or_qs
    else:
        queryset = model_or_qs._default_manager.all()
    try:
        return queryset.filter(organization=org).get(**lookup)
    except (ObjectDoesNotExist, ValueError, TypeError) as exc:
        raise Http404(f"No {queryset.model._meta.verbose_name} matches.") from exc


def api_token_list_for_user(*, user: User) -> QuerySet[ApiToken]:
    """``user``'s tokens that were not revoked, newest first (expired ones included)."""
    return ApiToken.objects.filter(user=user, revoked_at=None).order_by("-created_at", "-id")


def invitation_list_pending(*, organization: Organization) -> QuerySet[Invitation]:
    return (
        Invitation.objects.for_org(organization)
        .filter(accepted_at=None, revoked_at=None, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at", "-id")
    )


def invitation_get_pending_by_key(*, key: str) -> Invitation | None:
    """The pending invitation whose link carries ``key``, or None (used, revoked, expired, bad)."""
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(key_hash=ApiToken.hash_key(key))
        .first()
    )
    if invitation is None or not invitation.is_pending(timezone.now()):
        return None
    return invitation
