from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from webapp.accounts.permissions import org_required
from workers.tasks import org_ping


@org_required
@require_POST
def test_event_send(request: HttpRequest) -> HttpResponse:
    """Queue a ping through the worker; it comes back on the live socket."""
    organization_id: int = request.organization.pk  # type: ignore[attr-defined]
    message = f"Test event from {request.user.get_username()}"
    transaction.on_commit(lambda: org_ping.delay(organization_id, message))
    return render(request, "live/_test_event_queued.html", {"message": message})
