from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from webapp.accounts.selectors import membership_list_for_user


def organization(request: HttpRequest) -> dict[str, Any]:
    """The current organisation, the user's role in it, and the switcher's choices."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "organization": getattr(request, "organization", None),
        "membership": getattr(request, "membership", None),
        "memberships": membership_list_for_user(user=user),
    }
