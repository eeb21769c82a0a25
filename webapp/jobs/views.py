"""Job pages: the list, the wizard (state kept in the session), launch from a recipe file, the
live job page, cancel, duplicate and artifact downloads. Views orchestrate; services write."""

from __future__ import annotations

from typing import Any

import yaml
from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from compression.recipe import recipe_to_yaml
from webapp.accounts.permissions import org_required, require_role
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs import selectors, services
from webapp.jobs.downloads import artifact_response
from webapp.jobs.errors import JobInputError
from webapp.jobs.formatting import timing_texts
from webapp.jobs.forms import (
    GoalForm,
    PickForm,
    RecipeFileForm,
    ReviewForm,
    TargetsForm,
    stage_forms,
)
from webapp.jobs.models import Job
from webapp.jobs.presets import PRESETS, preset_stages
from webapp.jobs.recipes import recipe_parse

WRITE_ROLES = ("admin", "engineer")
WIZARD_KEY = "jobs_wizard"
STEPS = [
    ("pick", "Model and data"),
    ("goal", "Goal"),
    ("params", "Parameters"),
    ("targets", "Targets"),
    ("review", "Review"),
]


@org_required
def job_list(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    jobs = list(selectors.job_list(organization=org)[:200])
    timings = selectors.job_timing_map(organization=org, jobs=jobs)
    rows = [{"job": j, "timing": timing_texts(timings[j.pk])} for j in jobs]
    return render(request, "jobs/job_list.html", {"jobs": jobs, "rows": rows})


# --- wizard -----------------------------------------------------------------------------------


def _state(request: HttpRequest) -> dict[str, Any]:
    state = request.session.get(WIZARD_KEY)
    if not isinstance(state, dict) or state.get("org") != request.organization.pk:  # type: ignore[attr-defined]
        state = {"org": request.organization.pk}  # type: ignore[attr-defined]
    return state


def _save(request: HttpRequest, state: dict[str, Any]) -> None:
    request.session[WIZARD_KEY] = state
    request.session.modified = True


def _recipe_from_state(state: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if state.get("max_accuracy_drop") is not None:
        targets["max_accuracy_drop"] = state["max_accuracy_drop"]
    if state.get("target_device"):
        targets["target_device"] = state["target_device"]
    recipe: dict[str, Any] = {
        "name": state.get("name") or f"{state.get('goal', 'custom')} recipe",
        "stages": state.get("stages", []),
    }
    if targets:
        recipe["targets"] = targets
    return recipe


def _recipe_yaml(recipe: dict[str, Any]) -> str:
    try:
        return recipe_to_yaml(recipe_parse(recipe))
    except JobInputError:
        return str(yaml.safe_dump(recipe, sort_keys=False))


def _step_url(step: str) -> str:
    return reverse("jobs:wizard", args=[step])


@org_required
def wizard_start(request: HttpRequest) -> HttpResponse:
    """A fresh wizard (``?model=<id>`` preselects a model)."""
    require_role(request, *WRITE_ROLES)
    state = {"org": request.organization.pk}  # type: ignore[attr-defined]
    if request.GET.get("model", "").isdigit():
        state["model_version"] = int(request.GET["model"])
    _save(request, state)
    return redirect(_step_url("pick"))


@org_required
def wizard(request: HttpRequest, step: str) -> HttpResponse:
    require_role(request, *WRITE_ROLES)
    org = request.organization  # type: ignore[attr-defined]
    state = _state(request)
    names = [s for s, _ in STEPS]
    if step not in names:
        return redirect(_step_url("pick"))
    # A step needs the ones before it.
    needs = {"goal": "model_version", "params": "stages", "targets": "stages", "review": "stages"}
    if step in needs and needs[step] not in state:
        return redirect(_step_url("pick"))
    ctx: dict[str, Any] = {"steps": STEPS, "step": step, "state": state, "presets": PRESETS}
    post = request.method == "POST"

    if step == "pick":
        initial = {k: state.get(k) for k in ("model_version", "dataset")}
        form = PickForm(request.POST if post else None, organization=org, initial=initial)
        if post and form.is_valid():
            state["model_version"] = form.cleaned_data["model_version"].pk
            state["dataset"] = form.cleaned_data["dataset"].pk
            _save(request, state)
            return redirect(_step_url("goal"))
        ctx["form"] = form
    elif step == "goal":
        goal_form = GoalForm(
            request.POST if post else None,
            initial={
                "goal": state.get("goal", "smallest"),
                "target_device": state.get("target_device", ""),
            },
        )
        if post and goal_form.is_valid():
            goal = goal_form.cleaned_data["goal"]
            state["goal"] = goal
            state["target_device"] = goal_form.cleaned_data["target_device"]
            if goal == "custom":
                state["stages"] = [{"method": m, "config": {}} for m in goal_form.custom_stages()]
            else:
                state["stages"] = preset_stages(goal, target_device=state["target_device"])
            _save(request, state)
            return redirect(_step_url("params"))
        ctx["form"] = goal_form
    elif step == "params":
        forms_ = stage_forms(state["stages"], request.POST if post else None)
        if post and all(f.is_valid() for f in forms_):
            state["stages"] = [{"method": f.method, "config": f.config()} for f in forms_]
            _save(request, state)
            return redirect(_step_url("targets"))
        ctx["stage_forms"] = forms_
    elif step == "targets":
        targets_form = TargetsForm(
            request.POST if post else None,
            initial={
                "name": state.get("name", ""),
                "max_accuracy_drop": state.get("max_accuracy_drop"),
                "target_device": state.get("target_device", ""),
            },
        )
        if post and targets_form.is_valid():
            state.update(targets_form.cleaned_data)
            _save(request, state)
            return redirect(_step_url("review"))
        ctx["form"] = targets_form
    else:  # review
        review_form = ReviewForm(
            request.POST if post else None,
            initial={"recipe_yaml": _recipe_yaml(_recipe_from_state(state))},
        )
        ctx["model_version"] = catalog_selectors.model_version_get(
            organization=org, pk=state["model_version"]
        )
        ctx["dataset"] = catalog_selectors.dataset_get(organization=org, pk=state["dataset"])
        if post and review_form.is_valid():
            try:
                job = services.job_create(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    model_version=ctx["model_version"],
                    dataset=ctx["dataset"],
                    recipe=review_form.cleaned_data["recipe_yaml"],
                    target_device=state.get("target_device", ""),
                )
            except JobInputError as exc:
                review_form.add_error("recipe_yaml", str(exc))
                ctx["recipe_error"] = exc
            else:
                request.session.pop(WIZARD_KEY, None)
                messages.success(request, f"Job {job.pk} queued.")
                return redirect("jobs:detail", pk=job.pk)
        ctx["form"] = review_form
    status = 400 if post else 200
    return render(request, "jobs/wizard.html", ctx, status=status)


@org_required
def job_from_file(request: HttpRequest) -> HttpResponse:
    """Launch from a recipe file: pick the model and the dataset, upload the YAML."""
    require_role(request, *WRITE_ROLES)
    org = request.organization  # type: ignore[attr-defined]
    post = request.method == "POST"
    form = RecipeFileForm(
        request.POST if post else None, request.FILES if post else None, organization=org
    )
    if post and form.is_valid():
        try:
            job = services.job_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                model_version=form.cleaned_data["model_version"],
                dataset=form.cleaned_data["dataset"],
                recipe=form.cleaned_data["recipe_file"],
            )
        except JobInputError as exc:
            form.add_error("recipe_file", str(exc))
        else:
            messages.success(request, f"Job {job.pk} queued.")
            return redirect("jobs:detail", pk=job.pk)
    return render(request, "jobs/from_file.html", {"form": form}, status=400 if post else 200)


# --- one job ------------------------------------------------------------------------------------


def _detail_context(request: HttpRequest, job: Job) -> dict[str, Any]:
    """What the live page and its refreshed regions render: one source for both."""
    timing = selectors.job_timing(job=job)
    error_lines = job.error.strip().splitlines()
    history = selectors.job_history(job=job)
    return {
        "job": job,
        "history": history,
        # What the page's script starts from (the rest is rendered as HTML).
        "history_json": {k: history[k] for k in ("last_seq", "status", "progress", "epochs")},
        "timing": timing_texts(timing),
        "error_reason": error_lines[0] if error_lines else "",
        "error_more": "\n".join(error_lines[1:]),
        "artifacts": selectors.job_artifact_list(job=job) if job.is_terminal else [],
        "can_write": getattr(request, "membership", None) is not None
        and request.membership.role in WRITE_ROLES,  # type: ignore[attr-defined]
    }


@org_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return render(request, "jobs/job_detail.html", _detail_context(request, job))


@org_required
def job_live_regions(request: HttpRequest, pk: int) -> HttpResponse:
    """The live page's server-rendered regions (actions, summary, stages, log, downloads), which
    the page swaps in when a stage ends or the status changes, so they never need a reload."""
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return render(request, "jobs/_job_regions.html", _detail_context(request, job))


@org_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    require_role(request, *WRITE_ROLES)
    try:
        services.job_cancel(job=job, user=request.user)  # type: ignore[arg-type]
        messages.info(request, "Cancel requested.")
    except JobInputError as exc:
        messages.error(request, str(exc))
    return redirect("jobs:detail", pk=job.pk)


@org_required
@require_POST
def job_duplicate(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    require_role(request, *WRITE_ROLES)
    try:
        copy = services.job_duplicate(job=job, user=request.user)  # type: ignore[arg-type]
    except JobInputError as exc:
        messages.error(request, str(exc))
        return redirect("jobs:detail", pk=job.pk)
    messages.success(request, f"Job {copy.pk} queued (a copy of job {job.pk}).")
    return redirect("jobs:detail", pk=copy.pk)


@org_required
def job_edit_as_new(request: HttpRequest, pk: int) -> HttpResponse:
    """Open a job's recipe in the wizard's review step, to change it before launching a copy."""
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    require_role(request, *WRITE_ROLES)
    recipe = job.recipe
    _save(
        request,
        {
            "org": request.organization.pk,  # type: ignore[attr-defined]
            "model_version": job.model_version_id,
            "dataset": job.dataset_id,
            "goal": "custom",
            "stages": recipe.get("stages", []),
            "name": f"{job.name} (edited)",
            "max_accuracy_drop": (recipe.get("targets") or {}).get("max_accuracy_drop"),
            "target_device": job.target_device,
        },
    )
    return redirect(_step_url("review"))


@org_required
def job_artifact(request: HttpRequest, pk: int, key: str) -> HttpResponse | FileResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return artifact_response(job, key)
