"""Job pages: the list, the wizard (state kept in the session), launch from a recipe file, the
live job page, cancel, duplicate and artifact downloads. Views orchestrate; services write."""

from __future__ import annotations

import re
from typing import Any

import yaml
from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from compression.recipe import recipe_to_yaml
from device_registry import selectors as device_selectors
from webapp.accounts.permissions import READ, WRITE, WRITE_ONLY, can_write, org_page
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs import selectors, services, sweep_services
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
from webapp.jobs.presets import (
    build_preset,
    device_is_arm,
    model_profile_for_version,
    presets_for_model,
)
from webapp.jobs.recipes import recipe_check, recipe_parse
from webapp.jobs.sweep_forms import SweepForm

WIZARD_KEY = "jobs_wizard"
STEPS = [
    ("pick", "Model and data"),
    ("goal", "Goal"),
    ("params", "Parameters"),
    ("targets", "Targets"),
    ("review", "Review"),
]


@org_page(READ)
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
    reference = state.get("reference") or "baseline"
    if reference != "baseline" and len(state.get("stages", [])) > 1:
        targets["reference"] = reference
    recipe: dict[str, Any] = {
        "name": state.get("name") or f"{state.get('goal', 'custom')} recipe",
        "stages": state.get("stages", []),
    }
    if targets:
        recipe["targets"] = targets
    return recipe


def _device_choices(org: Any) -> list[tuple[str, str]]:
    """The organisation's registered, unrevoked devices as (name, label) choices."""
    return [
        (d.name, f"{d.name} ({d.hardware})" if d.hardware else d.name)
        for d in device_selectors.device_list(organization=org)
        if d.revoked_at is None
    ]


def _device_is_arm(org: Any, name: str) -> bool:
    for d in device_selectors.device_list(organization=org):
        if d.name == name:
            return device_is_arm(d.name, d.hardware, *(d.tags or []))
    return False


def _check_errors(
    recipe: dict[str, Any] | str, *, model_version: Any, dataset: Any
) -> JobInputError | None:
    """The recipe check's refusal, or None when the recipe fits the model and the data set."""
    try:
        recipe_check(recipe, model_version=model_version, dataset=dataset)
    except JobInputError as exc:
        return exc
    return None


def _stage_field_error(forms_: list[Any], error: JobInputError) -> bool:
    """Put a recipe-check error beside its stage field (``recipe.stages[1].config.importance``);
    False when it names no field of these forms."""
    match = re.match(r"recipe\.stages\[(\d+)\]\.config\.(\w+)", error.field or "")
    if match is None or int(match[1]) >= len(forms_):
        return False
    form = forms_[int(match[1])]
    if match[2] not in form.fields:
        return False
    form.add_error(match[2], error.message)
    return True


def _recipe_yaml(recipe: dict[str, Any]) -> str:
    try:
        return recipe_to_yaml(recipe_parse(recipe))
    except JobInputError:
        return str(yaml.safe_dump(recipe, sort_keys=False))


def _step_url(step: str) -> str:
    return reverse("jobs:wizard", args=[step])


@org_page(WRITE_ONLY)
def wizard_start(request: HttpRequest) -> HttpResponse:
    """A fresh wizard (``?model=<id>`` preselects a model)."""
    state = {"org": request.organization.pk}  # type: ignore[attr-defined]
    if request.GET.get("model", "").isdigit():
        state["model_version"] = int(request.GET["model"])
    _save(request, state)
    return redirect(_step_url("pick"))


@org_page(WRITE_ONLY)
def wizard(request: HttpRequest, step: str) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    state = _state(request)
    names = [s for s, _ in STEPS]
    if step not in names:
        return redirect(_step_url("pick"))
    # A step needs the ones before it.
    needs = {"goal": "dataset", "params": "stages", "targets": "stages", "review": "stages"}
    if step in needs and needs[step] not in state:
        return redirect(_step_url("pick"))
    ctx: dict[str, Any] = {"steps": STEPS, "step": step, "state": state}
    post = request.method == "POST"
    version = dataset = None
    if step != "pick":
        version = catalog_selectors.model_version_get(organization=org, pk=state["model_version"])
        dataset = catalog_selectors.dataset_get(organization=org, pk=state["dataset"])
        ctx["model_version"], ctx["dataset"] = version, dataset

    if step == "pick":
        initial = {k: state.get(k) for k in ("model_version", "dataset")}
        derived = request.GET.get("derived") == "1"
        form = PickForm(
            request.POST if post else None, organization=org, initial=initial, derived=derived
        )
        if post and form.is_valid():
            if state.get("model_version") != form.cleaned_data["model_version"].pk:
                state.pop("stages", None)  # presets are built for the model: pick again
            state["model_version"] = form.cleaned_data["model_version"].pk
            state["dataset"] = form.cleaned_data["dataset"].pk
            _save(request, state)
            return redirect(_step_url("goal"))
        ctx["form"], ctx["derived"] = form, derived
    elif step == "goal":
        profile = model_profile_for_version(version)  # type: ignore[arg-type]
        presets = presets_for_model(profile)
        goal_form = GoalForm(
            request.POST if post else None,
            presets=presets,
            devices=_device_choices(org),
            task=profile.facts.task,
            fmt=profile.facts.format,
            initial={
                "goal": state.get("goal") or next((p.key for p in presets if p.stages), "custom"),
                "target_device": state.get("target_device", ""),
            },
        )
        if post and goal_form.is_valid():
            goal = goal_form.cleaned_data["goal"]
            state["goal"] = goal
            state["target_device"] = goal_form.cleaned_data["target_device"]
            if goal == "custom":
                state["stages"] = [{"method": m, "config": {}} for m in goal_form.custom_stages()]
                state["reference"] = "baseline"
            else:
                built = build_preset(goal, profile, arm=_device_is_arm(org, state["target_device"]))
                state["stages"], state["reference"] = built.stages, built.reference
            _save(request, state)
            return redirect(_step_url("params"))
        ctx["form"], ctx["presets"], ctx["profile"] = goal_form, presets, profile
    elif step == "params":
        forms_ = stage_forms(state["stages"], request.POST if post else None)
        if post and all(f.is_valid() for f in forms_):
            stages = [{"method": f.method, "config": f.config()} for f in forms_]
            error = _check_errors(
                _recipe_from_state({**state, "stages": stages}),
                model_version=version,
                dataset=dataset,
            )
            if error is None:
                state["stages"] = stages
                _save(request, state)
                return redirect(_step_url("targets"))
            if not _stage_field_error(forms_, error):
                ctx["recipe_error"] = error
        ctx["stage_forms"] = forms_
    elif step == "targets":
        targets_form = TargetsForm(
            request.POST if post else None,
            initial={
                "name": state.get("name", ""),
                "max_accuracy_drop": state.get("max_accuracy_drop"),
            },
            task=version.task if version is not None else None,
        )
        if post and targets_form.is_valid():
            state.update(targets_form.cleaned_data)
            _save(request, state)
            return redirect(_step_url("review"))
        ctx["form"] = targets_form
    else:  # review: the recipe is checked against the model before it is shown and on launch
        review_form = ReviewForm(
            request.POST if post else None,
            initial={"recipe_yaml": _recipe_yaml(_recipe_from_state(state))},
        )
        sweep_form = SweepForm(
            request.POST if post else None,
            stages=state["stages"],
            devices=_device_choices(org),
            prefix="sweep",
        )
        ctx["sweep_form"] = sweep_form
        if not post:
            ctx["recipe_error"] = _check_errors(
                _recipe_from_state(state), model_version=version, dataset=dataset
            )
        if post and review_form.is_valid() and sweep_form.is_valid():
            if sweep_form.cleaned_data["grid"]:
                return _launch_sweep(request, ctx, review_form, sweep_form, version, dataset)
            try:
                job = services.job_create(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    model_version=version,  # type: ignore[arg-type]
                    dataset=dataset,  # type: ignore[arg-type]
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


def _launch_sweep(
    request: HttpRequest,
    ctx: dict[str, Any],
    review_form: ReviewForm,
    sweep_form: SweepForm,
    version: Any,
    dataset: Any,
) -> HttpResponse:
    """The review step's "run as a sweep": the grid is checked before anything is queued."""
    try:
        sweep = sweep_services.sweep_create(
            organization=request.organization,  # type: ignore[attr-defined]
            user=request.user,  # type: ignore[arg-type]
            model_version=version,
            dataset=dataset,
            recipe=review_form.cleaned_data["recipe_yaml"],
            grid=sweep_form.cleaned_data["grid"],
            constraints=sweep_form.constraints(),
        )
    except JobInputError as exc:
        if (exc.field or "").startswith(("grid", "constraints")):
            sweep_form.add_error("param_1", f"{exc.field}: {exc.message}")
        else:
            review_form.add_error("recipe_yaml", str(exc))
            ctx["recipe_error"] = exc
        ctx["form"] = review_form
        return render(request, "jobs/wizard.html", ctx, status=400)
    request.session.pop(WIZARD_KEY, None)
    messages.success(
        request, f"Sweep {sweep.pk} queued: the baseline is measured once, then each point runs."
    )
    return redirect("sweeps:detail", pk=sweep.pk)


@org_page(WRITE_ONLY)
def job_from_file(request: HttpRequest) -> HttpResponse:
    """Launch from a recipe file: pick the model and the dataset, upload the YAML."""
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
        "history_json": {
            k: history[k] for k in ("last_seq", "status", "progress", "epochs", "metric")
        },
        "timing": timing_texts(timing),
        "error_reason": error_lines[0] if error_lines else "",
        "error_more": "\n".join(error_lines[1:]),
        "artifacts": selectors.job_artifact_list(job=job) if job.is_terminal else [],
        "can_write": can_write(request),
    }


@org_page(READ)
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return render(request, "jobs/job_detail.html", _detail_context(request, job))


@org_page(READ)
def job_live_regions(request: HttpRequest, pk: int) -> HttpResponse:
    """The live page's server-rendered regions (actions, summary, stages, log, downloads), which
    the page swaps in when a stage ends or the status changes, so they never need a reload."""
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return render(request, "jobs/_job_regions.html", _detail_context(request, job))


@org_page(WRITE)
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    try:
        services.job_cancel(job=job, user=request.user)  # type: ignore[arg-type]
        messages.info(request, "Cancel requested.")
    except JobInputError as exc:
        messages.error(request, str(exc))
    return redirect("jobs:detail", pk=job.pk)


@org_page(WRITE)
@require_POST
def job_duplicate(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    try:
        copy = services.job_duplicate(job=job, user=request.user)  # type: ignore[arg-type]
    except JobInputError as exc:
        messages.error(request, str(exc))
        return redirect("jobs:detail", pk=job.pk)
    messages.success(request, f"Job {copy.pk} queued (a copy of job {job.pk}).")
    return redirect("jobs:detail", pk=copy.pk)


@org_page(WRITE_ONLY)
def job_edit_as_new(request: HttpRequest, pk: int) -> HttpResponse:
    """Open a job's recipe in the wizard's review step, to change it before launching a copy."""
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
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


def wizard_open_with_stages(
    request: HttpRequest,
    *,
    model_version: int,
    dataset: int,
    stages: list[dict[str, Any]],
    name: str,
) -> HttpResponse:
    """Open the wizard's Parameters step with ``stages`` prefilled (a custom recipe), for pages
    that build a stage for the user (the sensitivity page's per-layer ratios). The calling page
    declares its access (``org_page(WRITE)``)."""
    _save(
        request,
        {
            "org": request.organization.pk,  # type: ignore[attr-defined]
            "model_version": model_version,
            "dataset": dataset,
            "goal": "custom",
            "stages": stages,
            "reference": "baseline",
            "name": name,
        },
    )
    return redirect(_step_url("params"))


@org_page(READ)
def job_artifact(request: HttpRequest, pk: int, key: str) -> HttpResponse | FileResponse:
    job = selectors.job_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return artifact_response(job, key)
