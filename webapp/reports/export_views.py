"""A job report's CSV, JSON and PDF exports, and the one way every report page is printed.

Thin: the report's context comes from :func:`webapp.reports.views.report_context` (404 for a job
of another organisation or none), the file from :mod:`webapp.reports.exports`, the PDF from
:mod:`webapp.reports.pdf`.
"""

from __future__ import annotations

import base64
import csv
import json
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from webapp.accounts.permissions import READ, org_page
from webapp.jobs import selectors as job_selectors
from webapp.reports import exports, fleet, pdf
from webapp.reports.views import report_context


def attachment(body: bytes | str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def csv_attachment(rows: list[list[Any]], *, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    csv.writer(response).writerows(rows)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def json_attachment(data: Any, *, filename: str) -> HttpResponse:
    return attachment(
        json.dumps(data, indent=2), content_type="application/json", filename=filename
    )


def pdf_attachment(
    request: HttpRequest, *, template: str, context: dict[str, Any], charts: int, filename: str
) -> HttpResponse:
    """The page ``template`` rendered for this user in print mode, printed by Chromium; 503
    with the reason when it cannot be printed now."""
    html = render_to_string(template, {**context, "print_mode": True}, request=request)
    try:
        body = pdf.html_to_pdf(html, path=request.path, charts=charts)
    except pdf.PdfError as exc:
        return HttpResponse(str(exc), status=503, content_type="text/plain; charset=utf-8")
    return attachment(body, content_type="application/pdf", filename=filename)


@org_page(READ)
@require_GET
def report_export(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """``/reports/jobs/<id>/export.csv``, ``.json`` or ``.pdf``."""
    ctx = report_context(request, pk)
    job, report = ctx["job"], ctx["report"]
    if not report:
        return HttpResponse(
            f"Job {job.pk} has no report yet ({job.get_status_display().lower()}): "
            "it is written when the job succeeds.",
            status=404,
            content_type="text/plain; charset=utf-8",
        )
    name = f"report-job-{job.pk}"
    if fmt == "pdf":
        grid = ctx.get("grid")
        if grid and grid.get("key"):
            # The printing browser reaches nothing but static files: the grid goes in the page.
            ctx["grid"] = {**grid, "data_uri": _grid_data_uri(job)}
        return pdf_attachment(
            request,
            template="reports/report_detail.html",
            context=ctx,
            charts=len(ctx["figures"]),
            filename=f"{name}.pdf",
        )
    org = request.organization  # type: ignore[attr-defined]
    fleets = [
        fleet.fleet_build(organization=org, version_id=s["version"].pk) for s in ctx["on_device"]
    ]
    data = exports.report_export(job=job, report=report, rows=ctx["rows"], fleets=fleets)
    if fmt == "json":
        return json_attachment(data, filename=f"{name}.json")
    return csv_attachment(exports.report_csv_rows(data), filename=f"{name}.csv")


# A grid larger than this is left out of the PDF (linked from the page instead).
MAX_PDF_GRID_BYTES = 8 * 1024 * 1024


def _grid_data_uri(job: Any) -> str | None:
    """The job's stored detections grid as a ``data:image/png`` URI for the printed page, or
    None when it cannot be read, is not a PNG, or is over :data:`MAX_PDF_GRID_BYTES`."""
    try:
        with job_selectors.job_artifact_open(job=job, key="detections_grid") as fh:
            data = fh.read(MAX_PDF_GRID_BYTES + 1)
    except (Http404, OSError):
        return None
    if len(data) > MAX_PDF_GRID_BYTES or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
