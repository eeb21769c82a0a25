"""Catalog model versions on devices: the deployable artifact made from a version's ONNX file,
and the on-device results of those artifacts that the model and job reports show."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction

from device_registry import selectors, services
from device_registry.models import DeployableArtifact
from webapp.accounts.models import Organization, User
from webapp.catalog.models import ItemStatus, ModelFormat, ModelVersion


class NotDeployable(ValueError):
    """The version has no ONNX file that a device could run (the message says why)."""


def model_version_source(model_version: ModelVersion) -> str:
    """The ``DeployableArtifact.source`` of artifacts made from this version."""
    return f"model_version:{model_version.pk}"


def deploy_refusal_reason(model_version: ModelVersion) -> str:
    """Why this version cannot be deployed to devices; empty when it can."""
    if model_version.format != ModelFormat.ONNX:
        return (
            "Devices run ONNX only and this version is PyTorch weights. Export it via a job "
            "first: every job produces ONNX fp32 and int8 versions that can be deployed."
        )
    if model_version.status != ItemStatus.READY:
        return "This version is not ready yet (or was refused); only ready versions deploy."
    if not model_version.file.name:
        return "This version has no stored file."
    return ""


def _artifact_name(model_version: ModelVersion) -> str:
    label = f"-{model_version.label}" if model_version.label else ""
    return f"{model_version.asset.name}-v{model_version.number}{label}.onnx"


def artifact_for_model_version(
    *, organization: Organization, user: User | None, model_version: ModelVersion
) -> DeployableArtifact:
    """The deployable artifact of a ready ONNX version, made once from its stored file.

    Idempotent: an artifact of this organisation with the same source (and, when the version
    knows it, the same SHA-256) is reused. The version's row is locked while the artifact is
    made, so two clicks at once still make one.

    Raises:
        NotDeployable: the version is not a ready ONNX file, or belongs to another organisation.
    """
    if model_version.organization_id != organization.pk:
        raise NotDeployable("This model version belongs to another organisation.")
    reason = deploy_refusal_reason(model_version)
    if reason:
        raise NotDeployable(reason)
    source = model_version_source(model_version)
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=model_version.pk).first()
        existing = DeployableArtifact.objects.for_org(organization).filter(source=source)
        if model_version.sha256:
            existing = existing.filter(sha256=model_version.sha256)
        artifact = existing.order_by("-created_at", "-id").first()
        if artifact is not None:
            return artifact
        with default_storage.open(str(model_version.file.name), "rb") as fh:
            return services.artifact_create(
                organization=organization,
                name=_artifact_name(model_version),
                file=fh,
                source=source,
                created_by=user,
            )


def on_device_results_for_model_version(
    *, organization: Organization, model_version: ModelVersion
) -> list[dict[str, Any]]:
    """Per device and batch size: p50/p99, throughput and (when measured) top-1 accuracy of the
    artifacts made from this version, newest deployment first."""
    source = model_version_source(model_version)
    rows = selectors.on_device_latency_for_source(organization=organization, source=source)
    accuracy: dict[tuple[int, int], dict[str, Any]] = {}
    results = selectors.deployment_results(organization=organization).filter(
        deployment__artifact__source=source, kind="accuracy"
    )
    for r in results:
        accuracy[(r.deployment_id, r.device_id)] = r.payload
    out = []
    for row in rows:
        acc = accuracy.get((row["deployment_id"], row["device_id"])) or {}
        out.append({**row, "top1": acc.get("top1"), "samples": acc.get("samples")})
    out.sort(key=lambda r: (-r["deployment_id"], r["device"], r["batch_size"] or 0))
    return out


def p50_by_device(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The newest p50 at the smallest batch size, per device name (for a bar chart)."""
    best: dict[str, tuple[int, int, float]] = {}
    for row in rows:
        if row["p50_ms"] is None:
            continue
        key = (-row["deployment_id"], row["batch_size"] or 0, float(row["p50_ms"]))
        current = best.get(row["device"])
        if current is None or key[:2] < current[:2]:
            best[row["device"]] = key
    return {name: value[2] for name, value in sorted(best.items())}
