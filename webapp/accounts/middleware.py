"""Request middleware for accounts: the current organisation, and the forced password change."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

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


class PasswordChangeRequiredMiddleware:
    """Sends a user whose password someone else chose to the change form, from every page.

    Exempt: the change form itself, sign-out, static and media files, and the REST API under
    ``/api/``. The API stays open on purpose: a token can only be made by someone who already
    holds the password, and scripts cannot follow a form; the pages are where people are.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def _exempt(self, path: str) -> bool:
        prefixes = [
            reverse("accounts:password_change"),
            reverse("accounts:logout"),
            "/api/",
            settings.STATIC_URL,
            settings.MEDIA_URL,
        ]
        return any(path.startswith(prefix) for prefix in prefixes)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            and getattr(user, "must_change_password", False)
            and not self._exempt(request.path)
        ):
            target = reverse("accounts:password_change")
            if request.method == "GET":
                target += "?" + urlencode({"next": request.get_full_path()})
            if request.headers.get("HX-Request"):
                return HttpResponse(status=204, headers={"HX-Redirect": target})
            return HttpResponseRedirect(target)
        return self.get_response(request)
