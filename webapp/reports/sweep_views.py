"""The sweep pages: the list, one sweep (its Pareto chart filled live as children finish, and
the recommendation under the constraints in the query), its live regions, and cancel.

Thin: they read through :mod:`webapp.reports.sweeps` and write through the jobs app's
sweep services.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.accounts.permissions import READ, WRITE, can_write, org_page
from webapp.jobs import sweep_selectors, sweep_services
from webapp.jobs.errors import JobInputError
from webapp.jobs.models import Sweep
from webapp.reports.recommend import PREFERENCES
from webapp.reports.sweeps import ConstraintsError, sweep_results


def _context(request: HttpRequest, sweep: Sweep) -> tuple[dict[str, Any], int]:
    ctx: dict[str, Any] = {
        "sweep": sweep,
        "can_write": can_write(request),
        "preferences": PREFERENCES,
    }
    try:
        ctx["results"] = sweep_results(sweep=sweep, query=request.GET)
        return ctx, 200
    except ConstraintsError as exc:
        ctx["constraints_error"] = str(exc)
        ctx["results"] = sweep_results(sweep=sweep)
        return ctx, 400


@org_page(READ)
@require_GET
def sweep_list(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    rows = []
    for sweep in sweep_selectors.sweep_list(organization=org)[:100]:
        children = sweep_selectors.sweep_children(sweep=sweep)
        rows.append(
            {"sweep": sweep, "state": sweep_selectors.sweep_state(sweep=sweep, children=children)}
        )
    return render(request, "reports/sweep_list.html", {"rows": rows})


@org_page(READ)
@require_GET
def sweep_detail(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = sweep_selectors.sweep_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    ctx, status = _context(request, sweep)
    return render(request, "reports/sweep_detail.html", ctx, status=status)


@org_page(READ)
@require_GET
def sweep_regions(request: HttpRequest, pk: int) -> HttpResponse:
    """The parts of the page a live event redraws (status, recommendation, chart, points)."""
    sweep = sweep_selectors.sweep_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    ctx, status = _context(request, sweep)
    return render(request, "reports/_sweep_regions.html", ctx, status=status)


@org_page(WRITE)
@require_POST
def sweep_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = sweep_selectors.sweep_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    try:
        sweep_services.sweep_cancel(sweep=sweep, user=request.user)  # type: ignore[arg-type]
        messages.info(request, "Cancel requested for every unfinished point.")
    except JobInputError as exc:
        messages.error(request, str(exc))
    return redirect("sweeps:detail", pk=sweep.pk)
