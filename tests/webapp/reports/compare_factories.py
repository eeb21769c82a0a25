"""Rows for the comparison tests, made directly (no files, no runner): versions with lineage,
succeeded jobs with hand-written reports, and device results of deployed versions."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from django.utils import timezone

from device_registry.models import DeployableArtifact, Deployment, DeploymentResult, Device
from webapp.accounts.models import Organization
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus, ModelAsset, ModelVersion
from webapp.jobs.models import Job, JobStatus

_seq = itertools.count(1)


def metrics(
    acc: float | None, p50: float | None = None, *, fmt: str = "onnx", split: str = "test"
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "accuracy": acc,
        "eval_split": split,
        "params": 1000,
        "macs": 5000,
        "onnx_bytes": 4000,
        "onnx_zip_bytes": 3000,
        "format": fmt,
        "latency": None,
    }
    if split == "test":
        m["val_accuracy"] = acc
    if p50 is not None:
        m["latency"] = {"p50_ms": p50, "p90_ms": p50 * 1.5, "iqr_ms": p50 / 10, "rounds": 5}
    return m


def dataset(org: Organization, *, name: str | None = None, split_seed: int = 0) -> Dataset:
    return Dataset.objects.create(
        organization=org,
        name=name or f"digits-{next(_seq)}",
        kind=DatasetKind.DIGITS,
        num_classes=10,
        status=ItemStatus.READY,
        split_seed=split_seed,
    )


def version(
    org: Organization,
    *,
    asset: ModelAsset | None = None,
    parent: ModelVersion | None = None,
    job: Job | None = None,
    label: str = "",
    fmt: str = "onnx",
    params: int = 1000,
    size: int = 4000,
    task: str = "classification",
    recipe: dict[str, Any] | None = None,
) -> ModelVersion:
    asset = asset or (parent.asset if parent else None)
    if asset is None:
        asset = ModelAsset.objects.create(organization=org, name=f"net-{next(_seq)}")
    number = (asset.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    return ModelVersion.objects.create(
        organization=org,
        asset=asset,
        number=number,
        format=fmt,
        label=label,
        task=task,
        size_bytes=size,
        status=ItemStatus.READY,
        info={"params": params, "macs": params * 5},
        parent=parent,
        produced_by_job_id=job.pk if job else None,
        recipe=recipe if recipe is not None else (job.recipe if job else None),
    )


def recipe(seed: int = 0, method: str = "channel_pruning") -> dict[str, Any]:
    return {"name": f"{method}-{seed}", "seed": seed, "stages": [{"method": method, "config": {}}]}


def job(
    org: Organization,
    start: ModelVersion,
    data: Dataset,
    *,
    baseline: dict[str, Any],
    stages: list[dict[str, Any]] | None = None,
    final: dict[str, Any] | None = None,
    seed: int = 0,
    method: str = "channel_pruning",
) -> Job:
    r = recipe(seed, method)
    report = {
        "recipe": r,
        "dataset": {"name": data.name, "split_seed": data.split_seed},
        "baseline": baseline,
        "stages": [{"index": i, "metrics": m} for i, m in enumerate(stages or [])],
        "final": final or baseline,
    }
    return Job.objects.create(
        organization=org,
        name=f"job-{next(_seq)}",
        model_version=start,
        dataset=data,
        recipe=r,
        status=JobStatus.SUCCEEDED,
        report=report,
    )


def device(org: Organization, name: str) -> Device:
    return Device.objects.create(organization=org, name=name)


def device_result(
    org: Organization,
    v: ModelVersion,
    dev: Device,
    *,
    p50: float,
    top1: float | None = None,
    eval_meta: dict[str, Any] | None = None,
) -> Deployment:
    artifact = DeployableArtifact.objects.create(
        organization=org,
        name=f"{v.pk}.onnx",
        file=f"device_artifacts/{v.pk}.onnx",
        sha256="0" * 64,
        size=v.size_bytes,
        source=f"model_version:{v.pk}",
        eval_meta=eval_meta or {},
    )
    dep = Deployment.objects.create(
        organization=org,
        artifact=artifact,
        target_kind="device",
        target_value=str(dev.pk),
        issued_at=0,
        signature="test",
        expires_at=timezone.now() + timedelta(days=1),
    )
    DeploymentResult.objects.create(
        deployment=dep,
        device=dev,
        seq=1,
        kind="latency",
        payload={"batch_size": 1, "p50_ms": p50, "p90_ms": p50 * 2},
    )
    if top1 is not None:
        DeploymentResult.objects.create(
            deployment=dep, device=dev, seq=2, kind="accuracy", payload={"top1_pct": top1}
        )
    return dep
