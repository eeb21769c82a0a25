"""Sets ``request.organization`` and ``request.membership`` for the signed-in user."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from webapp.accounts.selectors import membership_current

SESSION_ORG_KEY = "edgeslim_org_id"


def preferred_org_id(session: object) -> int | None:
    try:
        value = session.get(SESSION_ORG_KEY)  # type: ignore[attr-defined]
        return int(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


class CurrentOrganizationMiddleware:
    """The organisation chosen in the session's switcher if still a member, else the first."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.membership = None  # type: ignore[attr-defined]
        request.organization = None  # type: ignore[attr-defined]
        if request.user.is_authenticated:
            membership = membership_current(
                user=request.user,
                preferred_org_id=preferred_org_id(request.session),
            )
            if membership is not None:
                request.membership = membership  # type: ignore[attr-defined]
                request.organization = membership.organization  # type: ignore[attr-defined]
        return self.get_response(request)
