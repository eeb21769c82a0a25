"""The comparison page and its CSV and JSON exports: read access for every member.

Kept apart from ``views.py`` (the job reports) so each stays short; both are thin: they parse
the query, call :mod:`webapp.reports.comparison`, and render.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from webapp.accounts.permissions import READ, org_page
from webapp.reports import charts, exports
from webapp.reports.comparison import (
    MAX_COMPARE_VERSIONS,
    ComparisonInputError,
    comparison_csv_rows,
    comparison_from_query,
    comparison_table,
)
from webapp.reports.export_views import pdf_attachment


def _comparison(request: HttpRequest) -> dict[str, Any]:
    q = request.GET
    return comparison_from_query(
        organization=request.organization,  # type: ignore[attr-defined]
        versions=q.getlist("v") + q.getlist("versions"),
        family=q.get("family", ""),
        job=q.get("job", ""),
        baseline=q.get("baseline", ""),
    )


def _picked(request: HttpRequest) -> bool:
    return any(request.GET.get(k) for k in ("v", "versions", "family", "job"))


def _page_context(request: HttpRequest, comparison: dict[str, Any]) -> dict[str, Any]:
    query = request.GET.urlencode()
    return {
        "comparison": comparison,
        "table": comparison_table(comparison),
        "figures": charts.comparison_figures(comparison),
        **{
            f"{fmt}_url": f"{reverse('reports:compare_export', args=[fmt])}?{query}"
            for fmt in ("csv", "json", "pdf")
        },
        "baseline_row": next(r for r in comparison["rows"] if r["is_baseline"]),
    }


@org_page(READ)
@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    ctx: dict[str, Any] = {"max_versions": MAX_COMPARE_VERSIONS, "comparison": None}
    if not _picked(request):
        return render(request, "reports/compare.html", ctx)
    try:
        comparison = _comparison(request)
    except ComparisonInputError as exc:
        return render(request, "reports/compare.html", {**ctx, "error": str(exc)}, status=400)
    ctx.update(_page_context(request, comparison))
    return render(request, "reports/compare.html", ctx)


@org_page(READ)
@require_GET
def compare_export(request: HttpRequest, fmt: str) -> HttpResponse:
    """``/reports/compare/export.csv``, ``.json`` or ``.pdf``: the same query as the page."""
    try:
        comparison = _comparison(request)
    except ComparisonInputError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    filename = f"comparison-{'-'.join(str(i) for i in comparison['versions'][:8])}"
    if fmt == "pdf":
        ctx = {"max_versions": MAX_COMPARE_VERSIONS, **_page_context(request, comparison)}
        return pdf_attachment(
            request,
            template="reports/compare.html",
            context=ctx,
            charts=len(ctx["figures"]),
            filename=f"{filename}.pdf",
        )
    latency = exports.comparison_latency(
        organization=request.organization,  # type: ignore[attr-defined]
        comparison=comparison,
    )
    if fmt == "json":
        body = json.dumps({**comparison, "latency": latency}, indent=2)
        response = HttpResponse(body, content_type="application/json")
    else:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        rows = comparison_csv_rows(comparison)
        csv.writer(response).writerows(
            exports.comparison_csv_with_latency(rows, comparison, latency)
        )
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response
