"""Report pages: an index of finished jobs (for managers and engineers) and one job's report."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from device_registry.model_versions import p50_by_device
from webapp.accounts.permissions import READ, can_write, org_page
from webapp.jobs import selectors as job_selectors
from webapp.reports import charts, selectors


@org_page(READ)
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


def report_context(request: HttpRequest, pk: int) -> dict[str, Any]:
    """Everything the report page shows (404 for a job of another organisation or none)."""
    org = request.organization  # type: ignore[attr-defined]
    job = job_selectors.job_get(organization=org, pk=pk)
    report = job_selectors.job_report(job=job)
    ctx: dict[str, Any] = {
        "job": job,
        "report": report,
        "can_write": can_write(request),
    }
    if report:
        rows = selectors.report_rows(report)
        changes = selectors.report_layer_changes(report)
        epochs = selectors.report_epochs(report)
        on_device = selectors.report_on_device(organization=org, job=job)
        p50 = {
            s["version"].label or f"v{s['version'].number}": p50_by_device(s["device_rows"])
            for s in on_device
        }
        dc = selectors.report_deep_compression(report)
        task = selectors.report_task(report)
        artifacts = job_selectors.job_artifact_list(job=job)
        ctx.update(
            task=task,
            is_detection=task == selectors.DETECTION,
            metric_label=selectors.METRIC_LABELS[task],
            per_class=selectors.report_per_class(report),
            grid=selectors.report_grid(report, artifacts) if task == selectors.DETECTION else None,
            rows=rows,
            deep_compression=dc,
            factored=selectors.report_factored_layers(report),
            facts=selectors.report_eval_facts(report),
            changes=changes,
            figures=charts.report_figures(rows, changes, epochs, p50, dc, task=task),
            on_device=on_device,
            targets=report.get("targets") or {},
            artifacts=artifacts,
            versions=report.get("model_versions", []),
        )
        ctx["flags"] = selectors.report_verdict_flags(report, rows, ctx["artifacts"])
    return ctx


@org_page(READ)
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "reports/report_detail.html", report_context(request, pk))
