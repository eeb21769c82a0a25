"""Catalog model versions on devices: the deployable artifact made from a version's ONNX file
(with its data set's test split as the evaluation set, see :mod:`device_registry.eval_sets`),
and the on-device results of those artifacts that the model and job reports show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q

from device_registry import conf, eval_sets, selectors, services
from device_registry.models import DeployableArtifact
from edgeslim_agent.protocol import FORMAT_CONTAINER, FORMAT_ONNX
from webapp.accounts.models import Organization, User
from webapp.catalog.models import Dataset, ItemStatus, ModelFormat, ModelVersion


class NotDeployable(ValueError):
    """The version has no ONNX file that a device could run (the message says why)."""


def model_version_source(model_version: ModelVersion) -> str:
    """The ``DeployableArtifact.source`` of artifacts made from this version."""
    return f"model_version:{model_version.pk}"


def deploy_refusal_reason(model_version: ModelVersion, *, container: bool = False) -> str:
    """Why this version (or, with ``container``, its compressed container) cannot be deployed
    to devices; empty when it can."""
    if container and not model_version.container:
        return (
            "This version has no compressed container: only a job whose recipe ends with "
            "weight_coding writes one."
        )
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


def _artifact_name(model_version: ModelVersion, *, container: bool = False) -> str:
    label = f"-{model_version.label}" if model_version.label else ""
    ext = "esdc" if container else "onnx"
    return f"{model_version.asset.name}-v{model_version.number}{label}.{ext}"


def eval_dataset_for(
    model_version: ModelVersion, *, dataset: Dataset | None = None
) -> Dataset | None:
    """The data set whose test split evaluates this version: the one picked (an upload has no
    data set of its own), else the one of the job up its lineage, else None (no accuracy)."""
    if dataset is not None:
        return dataset
    return eval_sets.model_version_dataset(model_version)


def eval_set_plan(model_version: ModelVersion) -> dict[str, Any]:
    """What deploying this version ships to measure accuracy on, for the deploy button.

    ``dataset``: the lineage's data set (its test split ships), or None; ``choices``: the
    organisation's data sets that fit, offered when there is no lineage data set.
    """
    dataset = eval_sets.model_version_dataset(model_version)
    return {
        "dataset": dataset,
        "choices": [] if dataset is not None else eval_sets.fitting_datasets(model_version),
        "max_samples": conf.eval_set_max_samples(),
    }


def artifact_for_model_version(
    *,
    organization: Organization,
    user: User | None,
    model_version: ModelVersion,
    dataset: Dataset | None = None,
    container: bool = False,
) -> DeployableArtifact:
    """The deployable artifact of a ready ONNX version, made once per (version, data set).

    With ``container`` the artifact is the version's compressed container (format
    ``container``): devices decode it into the version's ONNX before they benchmark it.

    The artifact carries the test split of the version's data set (``dataset`` when given,
    else the lineage's, see :func:`eval_dataset_for`) as its evaluation set, built once and
    reused; a version with neither gets an artifact without one (no on-device accuracy).
    Idempotent: an artifact of this organisation with the same source, the same SHA-256 (when
    the version knows it) and the same evaluation data set is reused. The version's row is
    locked while the artifact is made, so two clicks at once still make one.

    Raises:
        NotDeployable: the version is not a ready ONNX file, belongs to another organisation,
            or the data set does not fit it or cannot be loaded.
    """
    if model_version.organization_id != organization.pk:
        raise NotDeployable("This model version belongs to another organisation.")
    reason = deploy_refusal_reason(model_version, container=container)
    if reason:
        raise NotDeployable(reason)
    eval_dataset = eval_dataset_for(model_version, dataset=dataset)
    if eval_dataset is not None:
        misfit = eval_sets.dataset_fit_reason(model_version, eval_dataset)
        if misfit:
            raise NotDeployable(misfit)
    source = model_version_source(model_version)
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=model_version.pk).first()
        fmt = FORMAT_CONTAINER if container else FORMAT_ONNX
        existing = DeployableArtifact.objects.for_org(organization).filter(
            source=source, format=fmt
        )
        digest = model_version.container_sha256 if container else model_version.sha256
        if digest:
            existing = existing.filter(sha256=digest)
        no_eval = Q(eval_file="") | Q(eval_file__isnull=True)
        if eval_dataset is None:
            existing = existing.filter(no_eval)
        else:
            existing = existing.filter(eval_meta__dataset_id=eval_dataset.pk).exclude(no_eval)
        artifact = existing.order_by("-created_at", "-id").first()
        if artifact is not None:
            return artifact
        with eval_sets.eval_set_tempdir() as tmp:
            built = None
            if eval_dataset is not None:
                try:
                    built = eval_sets.build_eval_set(
                        model_version=model_version, dataset=eval_dataset, out_dir=Path(tmp)
                    )
                except eval_sets.EvalSetError as exc:
                    raise NotDeployable(str(exc)) from exc
            task = "detection" if model_version.task == "detection" else "classification"
            stored = model_version.container if container else model_version.file
            name = _artifact_name(model_version, container=container)
            with default_storage.open(str(stored.name), "rb") as fh:
                if built is None:
                    return services.artifact_create(
                        organization=organization,
                        name=name,
                        file=fh,
                        source=source,
                        created_by=user,
                        format=fmt,
                        task=task,
                    )
                with built.path.open("rb") as eval_fh:
                    return services.artifact_create(
                        organization=organization,
                        name=name,
                        file=fh,
                        eval_file=eval_fh,
                        eval_meta=built.meta,
                        source=source,
                        created_by=user,
                        format=fmt,
                        task=task,
                    )


def on_device_results_for_model_version(
    *, organization: Organization, model_version: ModelVersion
) -> list[dict[str, Any]]:
    """Per device and batch size: p50/p99, throughput and (when measured) top-1 accuracy in
    percent (``top1_pct``, 0-100) of the artifacts made from this version, newest deployment
    first; ``eval_set`` says what the accuracy was measured on. A detector's rows carry
    ``fps``/``fps_e2e`` (without and with post-processing) and ``map50``/``map50_95`` (0-1)
    instead of ``top1_pct``."""
    source = model_version_source(model_version)
    rows = selectors.on_device_latency_for_source(organization=organization, source=source)
    accuracy: dict[tuple[int, int], dict[str, Any]] = {}
    results = selectors.deployment_results(organization=organization).filter(
        deployment__artifact__source=source, kind="accuracy"
    )
    eval_meta: dict[int, str] = {}
    for r in results:
        accuracy[(r.deployment_id, r.device_id)] = r.payload
        eval_meta[r.deployment_id] = eval_sets.describe(r.deployment.artifact.eval_meta or {})
    out = []
    for row in rows:
        acc = accuracy.get((row["deployment_id"], row["device_id"])) or {}
        out.append(
            {
                **row,
                "top1_pct": acc.get("top1_pct"),
                "map50": acc.get("map50"),  # a detector's (0-1), with map50_95
                "map50_95": acc.get("map50_95"),
                "samples": acc.get("samples"),
                "eval_set": eval_meta.get(row["deployment_id"], ""),
            }
        )
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
