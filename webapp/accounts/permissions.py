"""Role checks and the decorator that every org-scoped page uses."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webapp.accounts.models import Membership

View = Callable[..., HttpResponse]


def require_role(request: HttpRequest, *roles: str) -> Membership:
    """Return the current membership, or raise PermissionDenied unless its role is in ``roles``."""
    membership: Membership | None = getattr(request, "membership", None)
    if membership is None or (roles and membership.role not in roles):
        raise PermissionDenied("Your role in this organisation does not allow this.")
    return membership


def org_required(view: View) -> View:
    """Login required, and an organisation to work in (else a page that says so)."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if getattr(request, "organization", None) is None:
            return render(request, "accounts/no_organization.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper
