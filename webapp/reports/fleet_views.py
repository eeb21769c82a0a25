"""A version's fleet view and its model's lineage: pages and CSV/JSON (and, for the fleet,
PDF) exports. Read access for every member; another organisation's version answers 404."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from webapp.accounts.permissions import READ, org_page
from webapp.reports import charts
from webapp.reports.export_views import csv_attachment, json_attachment, pdf_attachment
from webapp.reports.fleet import fleet_build, fleet_csv_rows
from webapp.reports.lineage import (
    NODE_H,
    NODE_W,
    LineageTooLarge,
    lineage_build,
    lineage_csv_rows,
    lineage_edges,
)


def _fleet_context(request: HttpRequest, pk: int) -> dict[str, Any]:
    data = fleet_build(organization=request.organization, version_id=pk)  # type: ignore[attr-defined]
    return {
        "fleet": data,
        "figures": charts.fleet_figures(data),
        "exports": {
            fmt: reverse("reports:fleet_export", args=[pk, fmt]) for fmt in ("csv", "json", "pdf")
        },
    }


@org_page(READ)
@require_GET
def fleet(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "reports/fleet.html", _fleet_context(request, pk))


@org_page(READ)
@require_GET
def fleet_export(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """``/reports/versions/<id>/fleet/export.csv``, ``.json`` or ``.pdf``."""
    ctx = _fleet_context(request, pk)
    name = f"fleet-version-{pk}"
    if fmt == "pdf":
        return pdf_attachment(
            request,
            template="reports/fleet.html",
            context=ctx,
            charts=len(ctx["figures"]),
            filename=f"{name}.pdf",
        )
    if fmt == "json":
        return json_attachment(ctx["fleet"], filename=f"{name}.json")
    return csv_attachment(fleet_csv_rows(ctx["fleet"]), filename=f"{name}.csv")


@org_page(READ)
@require_GET
def lineage(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        data = lineage_build(organization=request.organization, version_id=pk)  # type: ignore[attr-defined]
    except LineageTooLarge as exc:
        return render(request, "reports/lineage.html", {"error": str(exc)}, status=400)
    numbers = {n["id"]: n["number"] for n in data["versions"]}
    for n in data["versions"]:
        n["parent_number"] = numbers.get(n["parent"])
    ctx = {
        "lineage": data,
        "edges": lineage_edges(data),
        "node_w": NODE_W,
        "node_h": NODE_H,
        "focus": next(n for n in data["versions"] if n["id"] == data["focus"]),
        "exports": {
            fmt: reverse("reports:lineage_export", args=[pk, fmt]) for fmt in ("csv", "json")
        },
    }
    return render(request, "reports/lineage.html", ctx)


@org_page(READ)
@require_GET
def lineage_export(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """``/reports/versions/<id>/lineage/export.csv`` or ``.json``."""
    try:
        data = lineage_build(organization=request.organization, version_id=pk)  # type: ignore[attr-defined]
    except LineageTooLarge as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    name = f"lineage-version-{data['root']}"
    if fmt == "json":
        return json_attachment(data, filename=f"{name}.json")
    return csv_attachment(lineage_csv_rows(data), filename=f"{name}.csv")
