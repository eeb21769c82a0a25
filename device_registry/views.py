"""Device pages: the registry, registration, revocation, artifacts, deploy, live results."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from device_registry import eval_sets, model_versions, selectors, services
from device_registry.agent.protocol import BenchSettings, ProtocolError
from device_registry.agent_wheel import agent_wheel_name
from device_registry.forms import ArtifactUploadForm, DeploymentForm, DeviceRegisterForm
from device_registry.models import DeployableArtifact, Deployment, Device, TargetKind
from webapp.accounts.permissions import org_required, require_role
from webapp.accounts.selectors import get_object_for_org_or_404
from webapp.catalog.models import Dataset, ModelVersion

WRITE_ROLES = ("admin", "engineer")


def _org(request: HttpRequest) -> Any:
    return request.organization  # type: ignore[attr-defined]


def _int_or_404(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise Http404("no such item") from exc


def _install_commands(request: HttpRequest, code: str) -> dict[str, str]:
    base = request.build_absolute_uri("/").rstrip("/")
    return {
        "install": f"pip install {base}/agent/{agent_wheel_name()}",
        "enroll": f"edgeslim-agent enroll --server {base} --code {code}",
        "run": "edgeslim-agent run",
    }


@org_required
def device_list(request: HttpRequest) -> HttpResponse:
    tag = request.GET.get("tag") or None
    devices = selectors.device_list(organization=_org(request), tag=tag)
    return render(
        request,
        "device_registry/device_list.html",
        {
            "devices": devices,
            "tags": selectors.device_tags(organization=_org(request)),
            "tag": tag,
            "deployments": selectors.deployment_list(organization=_org(request))[:10],
        },
    )


@org_required
def device_register(request: HttpRequest) -> HttpResponse:
    form = DeviceRegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device, code = services.device_register(
            organization=_org(request),
            name=form.cleaned_data["name"],
            hardware=form.cleaned_data["hardware"],
            tags=form.cleaned_data["tags"],
            created_by=request.user,  # type: ignore[arg-type]
        )
        # Rendered, not redirected: the code is shown this once and never stored in clear.
        return render(
            request,
            "device_registry/device_enroll.html",
            {"device": device, "code": code, "commands": _install_commands(request, code)},
        )
    return render(request, "device_registry/device_register.html", {"form": form})


@org_required
@require_POST
def device_new_code(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    if device.revoked_at is not None:
        messages.error(request, "A revoked device cannot enroll again; register a new one.")
        return redirect("devices:detail", pk=pk)
    code = services.enrollment_code_issue(device=device)
    return render(
        request,
        "device_registry/device_enroll.html",
        {"device": device, "code": code, "commands": _install_commands(request, code)},
    )


@org_required
@require_POST
def device_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    services.device_revoke(device=device)
    messages.success(request, f"{device.name} is revoked; its connection was closed.")
    return redirect("devices:detail", pk=pk)


@org_required
def device_detail(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    results = selectors.deployment_results(organization=_org(request), device=device)
    rows = selectors.latency_table(results)
    return render(
        request,
        "device_registry/device_detail.html",
        {
            "device": device,
            "deployments": selectors.deployment_list(organization=_org(request), device=device),
            "rows": rows,
        },
    )


@org_required
def artifact_list(request: HttpRequest) -> HttpResponse:
    form = ArtifactUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        artifact = services.artifact_create(
            organization=_org(request),
            name=form.cleaned_data["name"] or upload.name,
            file=upload,
            eval_file=form.cleaned_data.get("eval_file"),
            source="upload",
            created_by=request.user,  # type: ignore[arg-type]
        )
        messages.success(request, f"{artifact.name} is stored (sha256 {artifact.sha256[:12]}…).")
        return redirect("devices:artifacts")
    return render(
        request,
        "device_registry/artifact_list.html",
        {"form": form, "artifacts": selectors.artifact_list(organization=_org(request))},
    )


@org_required
def deployment_new(request: HttpRequest) -> HttpResponse:
    org = _org(request)
    artifacts = list(selectors.artifact_list(organization=org))
    devices = [d for d in selectors.device_list(organization=org) if d.state != "revoked"]
    initial: dict[str, Any] = {}
    chosen = None
    if request.GET.get("artifact"):
        initial["artifact"] = request.GET["artifact"]
        chosen = next((a for a in artifacts if str(a.pk) == request.GET["artifact"]), None)
        # An artifact with an evaluation set (a catalog version's test split) measures accuracy.
        initial["accuracy"] = bool(chosen is not None and chosen.eval_file)
    if request.GET.get("device"):
        initial["device"] = request.GET["device"]
    form = DeploymentForm(
        request.POST or None, artifacts=artifacts, devices=devices, initial=initial
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        artifact = get_object_for_org_or_404(DeployableArtifact, org=org, pk=data["artifact"])
        try:
            settings = BenchSettings(
                warmup=data["warmup"],
                runs=data["runs"],
                threads=data["threads"],
                batch_sizes=data["batch_sizes_list"],
                providers=data["providers_list"] or ["CPUExecutionProvider"],
                profile=data["profile"],
                accuracy=data["accuracy"],
                input_shape=data["input_shape_list"],
            )
            deployment = services.deployment_create(
                organization=org,
                artifact=artifact,
                target_kind=data["target_kind"],
                target_value=form.target_value,
                settings=settings,
                created_by=request.user,  # type: ignore[arg-type]
            )
        except (services.NoTargets, services.NoEvalSet, ProtocolError) as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("devices:deployment", pk=deployment.pk)
    return render(
        request,
        "device_registry/deployment_new.html",
        {
            "form": form,
            "tags": selectors.device_tags(organization=org),
            "kinds": TargetKind,
            "chosen": chosen,
            "chosen_eval": eval_sets.describe(chosen.eval_meta or {}) if chosen else "",
        },
    )


@org_required
@require_POST
def model_version_deploy(request: HttpRequest, pk: int) -> HttpResponse:
    """Make (or reuse) the artifact of a catalog ONNX version, with its data set's test split as
    the evaluation set (``dataset`` picks one for an upload), then open the deploy page on it."""
    version = get_object_for_org_or_404(
        ModelVersion.objects.select_related("asset"), org=_org(request), pk=pk
    )
    require_role(request, *WRITE_ROLES)
    dataset = None
    if request.POST.get("dataset"):
        dataset = get_object_for_org_or_404(
            Dataset, org=_org(request), pk=_int_or_404(request.POST["dataset"])
        )
    try:
        artifact = model_versions.artifact_for_model_version(
            organization=_org(request),
            user=request.user,  # type: ignore[arg-type]
            model_version=version,
            dataset=dataset,
        )
    except model_versions.NotDeployable as exc:
        messages.error(request, str(exc))
        return redirect("catalog:model_version_detail", pk=pk)
    if not artifact.eval_file:
        messages.info(
            request,
            "This version has no data set of its own and none was picked: it deploys without "
            "accuracy (latency only).",
        )
    return redirect(f"{reverse('devices:deploy')}?artifact={artifact.pk}")


@org_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    deployments = selectors.deployment_list(organization=_org(request))[:200]
    return render(request, "device_registry/deployment_list.html", {"deployments": deployments})


@org_required
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_for_org_or_404(
        Deployment.objects.select_related("artifact"), org=_org(request), pk=pk
    )
    results = selectors.deployment_results(organization=_org(request), deployment=deployment)
    rows = selectors.latency_table(results)
    return render(
        request,
        "device_registry/deployment_detail.html",
        {
            "deployment": deployment,
            "status": selectors.deployment_status(deployment),
            "targets": selectors.deployment_targets(deployment=deployment),
            "rows": rows,
            "accuracy": selectors.accuracy_by_device(results),
            "eval_set": eval_sets.describe(deployment.artifact.eval_meta or {}),
            "failures": [r for r in results if r.kind == "failed"],
        },
    )
