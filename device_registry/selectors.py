"""Reads of the device registry, always scoped to one organisation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet

from device_registry.models import (
    FINISHED_STATUSES,
    DeployableArtifact,
    Deployment,
    DeploymentResult,
    DeploymentTarget,
    Device,
    TargetStatus,
    secret_hash,
)
from device_registry.services import CREDENTIAL_PREFIX, deployment_message
from edgeslim_agent.protocol import Deploy
from webapp.accounts.models import Organization


def device_list(*, organization: Organization, tag: str | None = None) -> list[Device]:
    devices = list(Device.objects.for_org(organization).order_by("name", "id"))
    if tag:
        devices = [d for d in devices if tag.lower() in (d.tags or [])]
    return devices


def device_tags(*, organization: Organization) -> list[str]:
    tags: set[str] = set()
    for tag_list in Device.objects.for_org(organization).values_list("tags", flat=True):
        tags.update(tag_list or [])
    return sorted(tags)


def device_by_credential(*, credential: str) -> Device | None:
    """The enrolled, unrevoked device this credential belongs to, or None."""
    if not credential.startswith(CREDENTIAL_PREFIX) or len(credential) > 200:
        return None
    return (
        Device.objects.filter(credential_hash=secret_hash(credential), revoked_at__isnull=True)
        .select_related("organization")
        .first()
    )


def device_pending_deploys(*, device_id: int) -> list[Deploy]:
    """Deploy messages for every unfinished deployment of a device, oldest first."""
    targets = (
        DeploymentTarget.objects.filter(device_id=device_id)
        .exclude(status__in=FINISHED_STATUSES)
        .select_related("deployment__artifact")
        .order_by("deployment_id")
    )
    return [deployment_message(t.deployment) for t in targets]


def device_deploys(*, device_id: int, deployment_ids: Iterable[int]) -> list[Deploy]:
    """Deploy messages of those of ``deployment_ids`` still pending on a device, oldest first
    (what a heartbeat delivers when the bus message missed the socket)."""
    targets = (
        DeploymentTarget.objects.filter(
            device_id=device_id, deployment_id__in=list(deployment_ids), status=TargetStatus.PENDING
        )
        .select_related("deployment__artifact")
        .order_by("deployment_id")
    )
    return [deployment_message(t.deployment) for t in targets]


def artifact_list(*, organization: Organization) -> QuerySet[DeployableArtifact]:
    return DeployableArtifact.objects.for_org(organization)


def artifact_for_device(*, device: Device, artifact_id: int) -> DeployableArtifact | None:
    """An artifact this device was asked to benchmark (same organisation, a target of it)."""
    return (
        DeployableArtifact.objects.for_org(device.organization_id)
        .filter(pk=artifact_id, deployments__targets__device=device)
        .distinct()
        .first()
    )


def deployment_list(
    *, organization: Organization, device: Device | None = None
) -> QuerySet[Deployment]:
    qs = Deployment.objects.for_org(organization).select_related("artifact")
    if device is not None:
        qs = qs.filter(targets__device=device).distinct()
    return qs.prefetch_related("targets__device")


def deployment_rows(
    deployments: Iterable[Deployment], *, device: Device | None = None
) -> list[dict[str, Any]]:
    """What a deployment list shows: the deployment, its overall status, its devices by name and,
    on a device's page, that device's own target (``target``: its status and message)."""
    rows = []
    for d in deployments:
        targets = list(d.targets.all())
        rows.append(
            {
                "deployment": d,
                "status": deployment_status(d),
                "devices": sorted((t.device for t in targets), key=lambda dev: dev.name),
                "target": next(
                    (t for t in targets if device is not None and t.device_id == device.pk), None
                ),
            }
        )
    return rows


def _yes_no(value: Any) -> str:
    return "yes" if value else "no"


def deployment_settings_table(deployment: Deployment) -> list[tuple[str, str]]:
    """The benchmark settings of a deployment as (label, value) rows, in the deploy form's order."""
    s = deployment.settings or {}
    shape = s.get("input_shape")
    return [
        ("Warm-up runs", str(s.get("warmup", "—"))),
        ("Timed runs", str(s.get("runs", "—"))),
        ("Threads", str(s.get("threads", "—"))),
        ("Batch sizes", ", ".join(str(b) for b in s.get("batch_sizes") or []) or "—"),
        ("Providers", ", ".join(s.get("providers") or []) or "—"),
        ("Input shape", " × ".join(str(d) for d in shape) if shape else "the model's own"),
        ("Per-operator profile", _yes_no(s.get("profile"))),
        (
            "mAP on the test split" if deployment.artifact.task == "detection" else "Accuracy",
            _yes_no(s.get("accuracy")),
        ),
    ]


def deployment_status(deployment: Deployment) -> str:
    """``running`` until every target ended; then ``cancelled`` (someone cancelled it),
    ``expired`` (its deadline passed with targets that never finished: they are timed out),
    ``failed`` (every target failed) or ``finished``."""
    if deployment.cancelled_at is not None:
        return "cancelled"
    statuses = [t.status for t in deployment.targets.all()]
    if not statuses:
        return "no targets"
    if all(s in FINISHED_STATUSES for s in statuses):
        if any(s == TargetStatus.TIMED_OUT for s in statuses):
            return "expired"
        return "failed" if all(s == TargetStatus.FAILED for s in statuses) else "finished"
    return "running"


def deployment_counts(deployment: Deployment) -> dict[str, int]:
    """How many targets are in each status (``{"succeeded": 3, "timed_out": 1}``)."""
    counts: dict[str, int] = {}
    for t in deployment.targets.all():
        counts[t.status] = counts.get(t.status, 0) + 1
    return counts


def deployment_targets(*, deployment: Deployment) -> QuerySet[DeploymentTarget]:
    return deployment.targets.select_related("device").order_by("device__name")


def deployment_results(
    *,
    organization: Organization,
    deployment: Deployment | None = None,
    device: Device | None = None,
) -> QuerySet[DeploymentResult]:
    qs = DeploymentResult.objects.filter(deployment__organization=organization).select_related(
        "device", "deployment__artifact"
    )
    if deployment is not None:
        qs = qs.filter(deployment=deployment)
    if device is not None:
        qs = qs.filter(device=device)
    return qs.order_by("deployment_id", "device__name", "seq")


def decode_by_device(results: QuerySet[DeploymentResult]) -> dict[int, dict[str, Any]]:
    """What decoding a compressed container cost on each device (from its first latency result):
    ``decode_ms``, ``decode_peak_rss_mb``, ``container_bytes`` and ``onnx_bytes``."""
    out: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.kind == "latency" and r.device_id not in out and "decode_ms" in r.payload:
            out[r.device_id] = {
                key: r.payload.get(key)
                for key in ("decode_ms", "decode_peak_rss_mb", "container_bytes", "onnx_bytes")
            }
    return out


def latency_table(results: QuerySet[DeploymentResult]) -> list[dict[str, Any]]:
    """One row per latency result, for tables and the side-by-side chart."""
    rows = []
    for r in results:
        if r.kind != "latency":
            continue
        p = r.payload
        rows.append(
            {
                "deployment_id": r.deployment_id,
                "artifact": r.deployment.artifact.name,
                "device_id": r.device_id,
                "device": r.device.name,
                "seq": r.seq,
                "batch_size": p.get("batch_size"),
                "p50_ms": p.get("p50_ms"),
                "p90_ms": p.get("p90_ms"),
                "p99_ms": p.get("p99_ms"),
                "mean_ms": p.get("mean_ms"),
                "throughput": p.get("throughput"),
                "peak_rss_mb": p.get("peak_rss_mb"),
                "load_time_ms": p.get("load_time_ms"),
                "cv": p.get("cv"),
                "unstable": p.get("unstable"),
                "provider": p.get("provider"),
                "op_profile_ms": p.get("op_profile_ms") or {},
                # a detector's: frames per second without and with post-processing
                "fps": p.get("fps"),
                "fps_e2e": p.get("fps_e2e"),
                "e2e_p50_ms": p.get("e2e_p50_ms"),
                "e2e_p90_ms": p.get("e2e_p90_ms"),
                "e2e_p99_ms": p.get("e2e_p99_ms"),
                "e2e_mean_ms": p.get("e2e_mean_ms"),
                "postprocess_p50_ms": p.get("postprocess_p50_ms"),
                "detections_per_image": p.get("detections_per_image"),
            }
        )
    return rows


def detector_table(results: QuerySet[DeploymentResult]) -> list[dict[str, Any]]:
    """A detector's results side by side, one row per (deployment, device, batch size): FPS of
    the network alone and end to end (decode + NMS), the end-to-end p50/p99, and the mAP the
    device measured on the shipped test split (``map50``, ``map50_95``, 0-1; None until its
    accuracy result arrives)."""
    maps: dict[tuple[int, int], dict[str, Any]] = {}
    for r in results:
        if r.kind == "accuracy" and r.payload.get("task") == "detection":
            maps[(r.deployment_id, r.device_id)] = r.payload
    rows = []
    for row in latency_table(results):
        if row["fps_e2e"] is None:
            continue
        acc = maps.get((row["deployment_id"], row["device_id"])) or {}
        rows.append(
            {
                **row,
                "map50": acc.get("map50"),
                "map50_95": acc.get("map50_95"),
                "map_samples": acc.get("samples"),
                "map_boxes": acc.get("boxes"),
            }
        )
    return rows


def accuracy_by_device(results: QuerySet[DeploymentResult]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in results:
        if r.kind == "accuracy":
            out[r.device_id] = r.payload
    return out


def on_device_latency_for_source(
    *, organization: Organization, source: str
) -> list[dict[str, Any]]:
    """Latency per device for artifacts made from ``source`` (e.g. ``model_version:12``).

    The model and job reports call this to put on-device latency beside size and accuracy.
    """
    results = deployment_results(organization=organization).filter(
        deployment__artifact__source=source
    )
    by_device: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in latency_table(results):
        by_device[row["device_id"]].append(row)
    return [row for rows in by_device.values() for row in rows]
