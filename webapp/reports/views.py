"""Report pages: an index of finished jobs (for managers and engineers) and one job's report."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webapp.accounts.permissions import org_required
from webapp.jobs import selectors as job_selectors
from webapp.reports import charts, selectors


@org_required
def report_index(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    rows = []
    for job in selectors.report_job_list(organization=org)[:200]:
        report = job.report or {}
        table = selectors.report_rows(report) if report else []
        rows.append(
            {"job": job, "base": table[0] if table else None, "final": table[-1] if table else None}
        )
    return render(request, "reports/report_index.html", {"rows": rows})


@org_required
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = job_selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    report = job_selectors.job_report(job=job)
    ctx: dict[str, Any] = {"job": job, "report": report}
    if report:
        rows = selectors.report_rows(report)
        changes = selectors.report_layer_changes(report)
        epochs = selectors.report_epochs(report)
        ctx.update(
            rows=rows,
            changes=changes,
            figures=charts.report_figures(rows, changes, epochs),
            targets=report.get("targets") or {},
            artifacts=job_selectors.job_artifact_list(job=job),
            versions=report.get("model_versions", []),
        )
    return render(request, "reports/report_detail.html", ctx)
