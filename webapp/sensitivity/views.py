"""Sensitivity pages: the list with a form to start one, one analysis with its heatmap, and
the one-click step from the analysis to a channel_pruning stage in the wizard. Thin."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webapp.accounts.permissions import READ, WRITE, can_write, org_page
from webapp.jobs.errors import JobInputError
from webapp.jobs.views import wizard_open_with_stages
from webapp.sensitivity import charts, selectors, services
from webapp.sensitivity.forms import AnalysisForm, ToleranceForm


@org_page(WRITE)
def analysis_list(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    post = request.method == "POST"
    initial = {}
    if request.GET.get("model", "").isdigit():
        initial["model_version"] = int(request.GET["model"])
    form = AnalysisForm(request.POST if post else None, organization=org, initial=initial)
    if post and form.is_valid():
        data = form.cleaned_data
        try:
            analysis = services.analysis_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                model_version=data["model_version"],
                dataset=data["dataset"],
                ratios=data["ratios"],
                importance=data["importance"],
                round_to=data["round_to"],
            )
        except JobInputError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            messages.success(request, f"Sensitivity analysis {analysis.pk} queued.")
            return redirect("sensitivity:detail", pk=analysis.pk)
    ctx = {
        "analyses": selectors.analysis_list(organization=org)[:100],
        "form": form,
        "can_write": can_write(request),
    }
    return render(request, "sensitivity/list.html", ctx, status=400 if post else 200)


def _detail_context(request: HttpRequest, pk: int) -> dict[str, Any]:
    analysis = selectors.analysis_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    result = selectors.analysis_result(analysis)
    ctx: dict[str, Any] = {
        "analysis": analysis,
        "result": result,
        "can_write": can_write(request),
        "tolerance_form": ToleranceForm(),
    }
    if result is not None:
        ctx["rows"] = selectors.analysis_rows(result)
        ctx["figures"] = {"sensitivity-heatmap": charts.sensitivity_heatmap(result)}
    return ctx


@org_page(READ)
def analysis_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "sensitivity/detail.html", _detail_context(request, pk))


@org_page(WRITE)
@require_POST
def analysis_to_wizard(request: HttpRequest, pk: int) -> HttpResponse:
    """Turn the analysis into per-layer ratios within the tolerance and open the wizard."""
    ctx = _detail_context(request, pk)
    analysis = ctx["analysis"]
    form = ToleranceForm(request.POST)
    if form.is_valid():
        max_drop = form.cleaned_data["max_drop"]
        try:
            stage = services.analysis_stage(analysis=analysis, max_drop=max_drop)
        except JobInputError as exc:
            form.add_error("max_drop", exc.message)
        else:
            mv = analysis.model_version
            return wizard_open_with_stages(
                request,
                model_version=analysis.model_version_id,
                dataset=analysis.dataset_id,
                stages=[stage],
                name=f"{mv.asset.name} v{mv.number}: per-layer pruning within {max_drop:g} pt",
            )
    ctx["tolerance_form"] = form
    return render(request, "sensitivity/detail.html", ctx, status=400)
