"""The dashboard's activity feed as a fragment, re-read by js/live.js when an event arrives."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webapp.accounts.permissions import org_required
from webapp.live.selectors import activity_feed


@org_required
def activity(request: HttpRequest) -> HttpResponse:
    """The newest activity rows (``live/_activity.html``), for the live panel to swap in."""
    rows = activity_feed(organization=request.organization)  # type: ignore[attr-defined]
    return render(request, "live/_activity.html", {"activity": rows})
