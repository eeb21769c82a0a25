"""Device pages: the registry, registration, revocation, artifacts, deploy, live results."""

from __future__ import annotations

from typing import Any

import segno
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from compression.container import ContainerError
from device_registry import (
    conf,
    enrollment,
    eval_sets,
    model_versions,
    public_url,
    selectors,
    services,
)
from device_registry.enrollment import SYSTEM_VENV
from device_registry.forms import ArtifactUploadForm, DeploymentForm, DeviceRegisterForm
from device_registry.models import DeployableArtifact, Deployment, Device, TargetKind
from edgeslim_agent.protocol import BenchSettings, ProtocolError
from webapp.accounts.permissions import (
    READ,
    WRITE,
    WRITE_ONLY,
    can_write,
    login_page,
    org_page,
)
from webapp.accounts.selectors import get_object_for_org_or_404
from webapp.catalog.models import Dataset, ModelVersion


def _org(request: HttpRequest) -> Any:
    return request.organization  # type: ignore[attr-defined]


def _int_or_404(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise Http404("no such item") from exc


def _studio_base(request: HttpRequest) -> str:
    """The studio's address for devices: ``EDGESLIM_PUBLIC_URL``, else the browser's own."""
    return conf.public_url() or request.build_absolute_uri("/").rstrip("/")


def _public_url_warning(request: HttpRequest, base: str) -> str:
    """Why the printed address may not work on a device ("" when it is configured and routable)."""
    configured = bool(conf.public_url())
    if configured and not public_url.is_loopback(base):
        return ""
    lan = public_url.suggested_public_url(int(request.get_port() or 80))
    example = f" (this host's LAN address would be {lan})" if lan else ""
    if configured:
        return (
            f"EDGESLIM_PUBLIC_URL is {base}, a loopback address that works only on the studio's "
            f"own machine. Set it to the address devices reach the studio at{example} and "
            "restart the studio."
        )
    where = (
        "a loopback address that works only on this machine, not on a device"
        if public_url.is_loopback(base)
        else "check that the device can reach it"
    )
    return (
        f"EDGESLIM_PUBLIC_URL is not set, so these commands use the address this browser used, "
        f"{base}: {where}. Set EDGESLIM_PUBLIC_URL to the address devices reach the studio "
        f"at{example} and restart the studio."
    )


def enrollment_qr_svg(command: str) -> str:
    """The enroll command as an inline SVG QR code, for phones and boards with a camera."""
    qr = segno.make(command, error="m")
    return str(qr.svg_inline(scale=3, border=2, title="Enrollment command"))


def _enrollment_page(request: HttpRequest, device: Device, code: str) -> HttpResponse:
    base = _studio_base(request)
    facts = enrollment.trust_facts()
    commands = enrollment.commands(base_url=base, code=code, facts=facts)
    return render(
        request,
        "device_registry/device_enroll.html",
        {
            "device": device,
            "code": code,
            "base": base,
            "commands": commands,
            "trust": facts,
            "public_url_warning": _public_url_warning(request, base),
            "qr_svg": mark_safe(enrollment_qr_svg(commands.enroll)),  # segno's own markup
        },
    )


@login_page
def device_help(request: HttpRequest) -> HttpResponse:
    """Install, Raspberry Pi and systemd instructions with this studio's address filled in."""
    base = _studio_base(request)
    facts = enrollment.trust_facts()
    system = enrollment.commands(base_url=base, code="<CODE>", facts=facts, venv=SYSTEM_VENV)
    return render(
        request,
        "device_registry/device_help.html",
        {
            "base": base,
            "trust": facts,
            "commands": enrollment.commands(base_url=base, code="<CODE>", facts=facts),
            "system_commands": system,
            "systemd_install": enrollment.systemd_install(system),
            "venv": public_url.AGENT_VENV,
            "public_url_warning": _public_url_warning(request, base),
        },
    )


@org_page(READ)
def device_list(request: HttpRequest) -> HttpResponse:
    services.deployments_expire(organization=_org(request))  # deadlines shown as they stand
    tag = request.GET.get("tag") or None
    devices = selectors.device_list(organization=_org(request), tag=tag)
    return render(
        request,
        "device_registry/device_list.html",
        {
            "devices": devices,
            "tags": selectors.device_tags(organization=_org(request)),
            "tag": tag,
            "deployments": selectors.deployment_rows(
                selectors.deployment_list(organization=_org(request))[:10]
            ),
        },
    )


@org_page(WRITE_ONLY)
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
        return _enrollment_page(request, device, code)
    return render(request, "device_registry/device_register.html", {"form": form})


@org_page(WRITE)
@require_POST
def device_new_code(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    if device.revoked_at is not None:
        messages.error(request, "A revoked device cannot enroll again; register a new one.")
        return redirect("devices:detail", pk=pk)
    code = services.enrollment_code_issue(device=device)
    return _enrollment_page(request, device, code)


@org_page(WRITE)
@require_POST
def device_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    services.device_revoke(device=device, reason=f"revoked by {request.user} in the studio")
    messages.success(request, f"{device.name} is revoked; its connection was closed.")
    return redirect("devices:detail", pk=pk)


@org_page(READ)
def device_detail(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_for_org_or_404(Device, org=_org(request), pk=pk)
    services.deployments_expire(organization=_org(request))
    results = selectors.deployment_results(organization=_org(request), device=device)
    rows = selectors.latency_table(results)
    detector_rows = selectors.detector_table(results)
    return render(
        request,
        "device_registry/device_detail.html",
        {
            "detector_rows": detector_rows,
            "has_detector": bool(detector_rows)
            or selectors.deployment_list(organization=_org(request), device=device)
            .filter(artifact__task="detection")
            .exists(),
            "device": device,
            "deployments": selectors.deployment_rows(
                selectors.deployment_list(organization=_org(request), device=device),
                device=device,
            ),
            "rows": rows,
            "has_op_profile": any(r["op_profile_ms"] for r in rows),
        },
    )


@org_page(WRITE)
def artifact_list(request: HttpRequest) -> HttpResponse:
    form = ArtifactUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            # Size, sniffing and the catalog's sandboxed inspection, before anything is stored.
            fmt = services.artifact_upload_check(
                file=upload, eval_file=form.cleaned_data.get("eval_file")
            )
            artifact = services.artifact_create(
                organization=_org(request),
                name=form.cleaned_data["name"] or upload.name,
                file=upload,
                eval_file=form.cleaned_data.get("eval_file"),
                source="upload",
                created_by=request.user,  # type: ignore[arg-type]
                format=fmt,
            )
        except services.ArtifactRefused as exc:
            form.add_error(exc.field, str(exc))
        except ContainerError as exc:
            form.add_error("file", str(exc))
        else:
            messages.success(
                request, f"{artifact.name} is stored (sha256 {artifact.sha256[:12]}…)."
            )
            return redirect("devices:artifacts")
    return render(
        request,
        "device_registry/artifact_list.html",
        {"form": form, "artifacts": selectors.artifact_list(organization=_org(request))},
    )


@org_page(WRITE_ONLY)
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


@org_page(WRITE)
@require_POST
def model_version_deploy(request: HttpRequest, pk: int) -> HttpResponse:
    """Make (or reuse) the artifact of a catalog ONNX version, with its data set's test split as
    the evaluation set (``dataset`` picks one for an upload), then open the deploy page on it."""
    version = get_object_for_org_or_404(
        ModelVersion.objects.select_related("asset"), org=_org(request), pk=pk
    )
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
            container=request.POST.get("container") == "1",
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


@org_page(READ)
def deployment_list(request: HttpRequest) -> HttpResponse:
    services.deployments_expire(organization=_org(request))
    deployments = selectors.deployment_list(organization=_org(request))[:200]
    return render(
        request,
        "device_registry/deployment_list.html",
        {"deployments": selectors.deployment_rows(deployments)},
    )


@org_page(READ)
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    services.deployments_expire(organization=_org(request))
    deployment = get_object_for_org_or_404(
        Deployment.objects.select_related("artifact", "cancelled_by"), org=_org(request), pk=pk
    )
    results = selectors.deployment_results(organization=_org(request), deployment=deployment)
    rows = selectors.latency_table(results)
    detector_rows = selectors.detector_table(results)
    return render(
        request,
        "device_registry/deployment_detail.html",
        {
            "detector_rows": detector_rows,
            "has_detector": deployment.artifact.task == "detection" or bool(detector_rows),
            "deployment": deployment,
            "status": selectors.deployment_status(deployment),
            "counts": selectors.deployment_counts(deployment),
            "can_cancel": deployment.ended_at is None and can_write(request),
            "targets": selectors.deployment_targets(deployment=deployment),
            "rows": rows,
            "has_op_profile": any(r["op_profile_ms"] for r in rows),
            "settings_table": selectors.deployment_settings_table(deployment),
            "accuracy": selectors.accuracy_by_device(results),
            "eval_set": eval_sets.describe(deployment.artifact.eval_meta or {}),
            "failures": [r for r in results if r.kind == "failed"],
            "decode": selectors.decode_by_device(results),
        },
    )


@org_page(WRITE)
@require_POST
def deployment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_for_org_or_404(Deployment, org=_org(request), pk=pk)
    try:
        services.deployment_cancel(deployment=deployment, user=request.user)  # type: ignore[arg-type]
    except services.DeploymentEnded as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"Deployment #{pk} is cancelled: devices that have not finished it will not get it.",
        )
    return redirect("devices:deployment", pk=pk)
