"""Role sets, role checks, the decorator that every org-scoped page uses, and the organisation an
API call acts in. Every app takes these from here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseBase
from django.shortcuts import render
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from webapp.accounts.models import Membership, Organization, Role
from webapp.accounts.selectors import membership_current

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])

# Who may create and change things (upload, start jobs, deploy); managers only read.
WRITE_ROLES: tuple[str, ...] = (Role.ADMIN, Role.ENGINEER)
# Who manages the organisation (members, invitations).
ADMIN_ROLES: tuple[str, ...] = (Role.ADMIN,)


def can_write(request: HttpRequest) -> bool:
    """Whether the current membership's role is one of :data:`WRITE_ROLES`."""
    membership: Membership | None = getattr(request, "membership", None)
    return membership is not None and membership.role in WRITE_ROLES


def require_role(request: HttpRequest, *roles: str) -> Membership:
    """Return the current membership, or raise PermissionDenied unless its role is in ``roles``."""
    membership: Membership | None = getattr(request, "membership", None)
    if membership is None or (roles and membership.role not in roles):
        raise PermissionDenied("Your role in this organisation does not allow this.")
    return membership


def org_required(view: _View) -> _View:
    """Login required, and an organisation to work in (else a page that says so)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if getattr(request, "organization", None) is None:
            return render(request, "accounts/no_organization.html", status=403)
        return view(request, *args, **kwargs)

    return cast(_View, login_required(wrapper))


def api_organization(request: Request) -> Organization:
    """The organisation an API call acts in: the session's, or for a token the user's current
    one (``X-Organization: <id>`` picks another of theirs)."""
    org: Organization | None = getattr(request._request, "organization", None)
    if org is not None:
        return org
    if not request.user or not request.user.is_authenticated:
        raise NotAuthenticated()
    header = request.headers.get("X-Organization", "")
    membership = membership_current(
        user=request.user,
        preferred_org_id=int(header) if header.isdigit() else None,
    )
    if membership is None:
        raise Http404("You belong to no organisation.")
    request._request.organization = membership.organization  # type: ignore[attr-defined]
    request._request.membership = membership  # type: ignore[attr-defined]
    return membership.organization


def api_require_writer(request: Request) -> Membership:
    """The API call's membership when its role may write (:data:`WRITE_ROLES`), else 403."""
    api_organization(request)
    return require_role(request._request, *WRITE_ROLES)
