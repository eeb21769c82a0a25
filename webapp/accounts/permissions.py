"""Role checks and the decorator that every org-scoped page uses."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render

from webapp.accounts.models import Membership

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])


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
