"""Inspection on a worker (the catalog's tasks call these): open an uploaded model or data set in
a memory-capped child process and record what it found."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from webapp.catalog.models import (
    Dataset,
    DatasetKind,
    ItemStatus,
    ModelVersion,
)
from webapp.catalog.services import builtin_cache
from webapp.catalog.services.builtin_samples import (
    BUILTIN_TRAIN_DATASET,
    builtin_spec,
    builtin_train_epochs,
)
from webapp.catalog.services.common import (
    DATASET_VALIDATE_TASK,
    MODEL_VERSION_INSPECT_TASK,
    _enqueue,
)
from webapp.catalog.services.versions import (
    _preprocessing_record,
    dataset_mark_invalid,
    dataset_mark_ready,
    declared_preprocessing,
    model_version_mark_invalid,
    model_version_mark_ready,
    model_version_set_file,
)


def work_dir_remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _work_dir(prefix: str) -> Path:
    base = Path(settings.DATA_DIR) / "work"
    base.mkdir(parents=True, exist_ok=True)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# The file name a cached built-in model's weights are kept under (builtin_cache).
WEIGHTS = "weights.safetensors"


def model_version_inspect(*, version: ModelVersion) -> ModelVersion:
    """Inspect a pending version in the sandbox child and mark it ready or invalid.

    A built-in sample without a file gets its weights built first. Re-running on a version that
    is no longer pending does nothing (a redelivered task is harmless).
    """
    from webapp.catalog.loaders import stored_file_local_path
    from webapp.catalog.sandbox import SandboxError, run_child

    if version.status != ItemStatus.PENDING:
        return version
    work = _work_dir(f"inspect-{version.pk}-")
    try:
        built: dict[str, Any] = {}
        result: dict[str, Any] | None = None
        key = ""
        if version.is_builtin and not version.file:
            spec = builtin_spec(version) or {}
            build = {
                "action": "builtin",
                "arch": version.arch,
                "num_classes": version.num_classes or 10,
                "in_channels": version.in_channels or 1,
                "input_size": version.input_size or 32,
                "train_epochs": builtin_train_epochs(spec) if spec else 0,
                "train_dataset": BUILTIN_TRAIN_DATASET,
                "train_optimizer": str(spec.get("train_optimizer", "adam")),
                "train_lr": float(spec.get("train_lr", 0.003)),
                "max_batches": int(getattr(settings, "EDGESLIM_BUILTIN_TRAIN_MAX_BATCHES", 0) or 0),
                "out_path": str(work / f"{version.arch}.safetensors"),
            }
            key = builtin_cache.model_cache_key(build)
            cached = builtin_cache.cache_get(key)
            if cached is not None and WEIGHTS in cached[1] and "inspect" in cached[0]:
                # The same build, made before: its weights, training record and inspection.
                try:
                    model_version_set_file(version=version, path=cached[1][WEIGHTS])
                    built, result = dict(cached[0]["built"]), dict(cached[0]["inspect"])
                    key = ""  # nothing new to store
                except FileNotFoundError:
                    pass  # the entry was pruned meanwhile: build afresh
            if not version.file:
                # Training takes longer than an inspection; the cap on memory stays.
                timeout = 3 * float(settings.EDGESLIM_INSPECT_TIMEOUT_S)
                built = run_child(build, work_dir=work, timeout_s=timeout)
                model_version_set_file(version=version, path=built["path"])
        if result is None:
            path = stored_file_local_path(version.file, work_dir=work)
            result = run_child(
                {
                    "action": "model",
                    "path": str(path),
                    "format": version.format,
                    "arch": version.arch,
                    "num_classes": version.num_classes,
                    "in_channels": version.in_channels,
                    "input_size": version.input_size,
                },
                work_dir=work,
            )
        if key:
            builtin_cache.cache_put(
                key,
                payload={
                    "built": {k: v for k, v in built.items() if k != "path"},
                    "inspect": result,
                },
                files={WEIGHTS: Path(built["path"])},
            )
    except (SandboxError, FileNotFoundError) as exc:
        # Errors name the stored file; show the name the user uploaded instead.
        message = str(exc)
        if version.file:
            message = message.replace(Path(version.file.name or "").name, version.source_filename)
        return model_version_mark_invalid(version=version, error=message)
    finally:
        work_dir_remove(work)
    from compression.preprocessing import PreprocessingError

    try:
        declared_preprocessing(
            normalization=version.declared_normalization,
            in_channels=version.in_channels or result.get("in_channels"),
            input_size=version.input_size or result.get("input_size"),
        )
    except PreprocessingError as exc:
        return model_version_mark_invalid(
            version=version, error=f"The declared normalization does not fit the model: {exc}."
        )
    info = dict(result["info"])
    if version.is_builtin and built:
        _builtin_record(version, info, built)
    elif version.is_builtin:  # re-inspected weights built earlier: keep how they were trained
        info.update({k: version.info[k] for k in ("trained", "builtin") if k in version.info})
    if info.get("macs") is None and isinstance(version.info.get("macs"), int):
        info["macs"] = version.info["macs"]  # counted by the job that made it (ONNX can't be)
    return model_version_mark_ready(
        version=version,
        info=info,
        input_size=result.get("input_size"),
        in_channels=result.get("in_channels"),
        num_classes=result.get("num_classes"),
        task=result.get("task"),
    )


def _builtin_record(version: ModelVersion, info: dict[str, Any], built: dict[str, Any]) -> None:
    """Record how a built-in sample was trained (``info["trained"]``, read by the wizard's
    presets) and the preprocessing it was trained with, on the version."""
    history = built.get("history") or []
    if history:
        info["trained"] = {
            "dataset": built.get("dataset", BUILTIN_TRAIN_DATASET),
            "epochs": len(history),
            "test_accuracy": built.get("test_accuracy"),
        }
    info["builtin"] = {
        "trained_epochs": len(history),
        "val_acc": history[-1].get("val_acc") if history else None,
        "weights": f"trained on {built.get('dataset', BUILTIN_TRAIN_DATASET)}"
        if history
        else "untrained (random weights)",
    }
    record = built.get("preprocessing")
    if isinstance(record, dict) and record.get("mean"):
        version.preprocessing = _preprocessing_record(record)


def dataset_validate(*, dataset: Dataset) -> Dataset:
    """Validate a pending dataset in the sandbox child: report, thumbnails, ready or invalid."""
    from webapp.catalog.loaders import stored_file_local_path
    from webapp.catalog.sandbox import SandboxError, run_child

    if dataset.status != ItemStatus.PENDING:
        return dataset
    key = builtin_cache.dataset_cache_key(dataset)
    cached = builtin_cache.dataset_get(key) if key else None
    if cached is not None:  # the same set, validated before: copy its report and samples
        report, thumbs = cached
        report["name"] = dataset.name or report.get("name", "")
        try:
            return dataset_mark_ready(dataset=dataset, report=report, thumbnail_files=thumbs)
        except FileNotFoundError:
            pass  # the entry was pruned meanwhile: validate afresh
    work = _work_dir(f"dataset-{dataset.pk}-")
    try:
        request: dict[str, Any] = {
            "action": "dataset",
            "kind": dataset.kind,
            "name": dataset.name,
            "split_seed": dataset.split_seed,
            "work_dir": str(work),
        }
        if dataset.kind in (DatasetKind.IMAGE_ZIP, DatasetKind.DETECTION_ZIP):
            request["path"] = str(stored_file_local_path(dataset.file, work_dir=work))
        try:
            result = run_child(request, work_dir=work)
        except (SandboxError, FileNotFoundError) as exc:
            message = str(exc)
            if dataset.file:
                message = message.replace(
                    Path(dataset.file.name or "").name, dataset.source_filename
                )
            return dataset_mark_invalid(dataset=dataset, error=message)
        thumbs = {k: [Path(p) for p in v] for k, v in result.get("thumbnails", {}).items()}
        if key:
            builtin_cache.dataset_put(key, report=result["report"], thumbnails=thumbs)
        return dataset_mark_ready(dataset=dataset, report=result["report"], thumbnail_files=thumbs)
    finally:
        work_dir_remove(work)


# --- the reaper for inspections nobody finished (Celery beat, the maintenance queue) -------------

log = logging.getLogger(__name__)

# Kept in the pending row's JSON (a version's ``info``, a data set's ``report``) until the worker
# writes its result over it: how often the reaper sent the task again, and when it last did.
REQUEUES_KEY = "inspect_requeues"
REQUEUED_AT_KEY = "inspect_requeued_at"


@dataclass(frozen=True)
class InspectionsReap:
    """What one sweep did: ``(item, pk)`` pairs sent again and marked invalid."""

    resent: list[tuple[str, int]]
    failed: list[tuple[str, int]]


def _pending_since(row: ModelVersion | Dataset, record: dict[str, Any]) -> datetime:
    text = record.get(REQUEUED_AT_KEY)
    when = parse_datetime(text) if isinstance(text, str) else None
    return when or row.created_at


def inspections_reap(*, now: datetime | None = None) -> InspectionsReap:
    """Settle the model inspections and data set validations still pending
    ``EDGESLIM_INSPECT_STUCK_S`` after they were sent: their catalog worker died mid-way (an
    upload that took the whole process down, a lost host) or the message was lost.

    Chosen policy: send the task again, at most ``EDGESLIM_INSPECT_RETRIES`` times (a duplicate
    of a message still queued finds the row no longer pending and does nothing), then mark the
    item invalid with a reason that says what to do. An item refused this way whose first task
    still ends later stays invalid (the tasks only inspect pending rows).
    """
    now = now or timezone.now()
    stuck_after = timedelta(seconds=int(settings.EDGESLIM_INSPECT_STUCK_S))
    retries = int(settings.EDGESLIM_INSPECT_RETRIES)
    resent: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []
    kinds: tuple[tuple[str, type[ModelVersion] | type[Dataset], str, str], ...] = (
        ("model_version", ModelVersion, "info", MODEL_VERSION_INSPECT_TASK),
        ("dataset", Dataset, "report", DATASET_VALIDATE_TASK),
    )
    for item, model, field, task in kinds:
        candidates = model.objects.filter(
            status=ItemStatus.PENDING, created_at__lte=now - stuck_after
        ).values_list("pk", flat=True)
        for pk in list(candidates[:200]):
            with transaction.atomic():
                row: Any = (
                    model.objects.select_for_update(skip_locked=True)
                    .filter(pk=pk, status=ItemStatus.PENDING)
                    .first()
                )
                if row is None:
                    continue
                record = getattr(row, field)
                record = dict(record) if isinstance(record, dict) else {}
                if now - _pending_since(row, record) < stuck_after:
                    continue
                count = int(record.get(REQUEUES_KEY) or 0)
                if count < retries:
                    record[REQUEUES_KEY] = count + 1
                    record[REQUEUED_AT_KEY] = now.isoformat()
                    setattr(row, field, record)
                    row.save(update_fields=[field])
                    _enqueue(task, row.pk)
                    resent.append((item, row.pk))
                    log.warning("%s %s pending too long; sent again (%d)", item, pk, count + 1)
                    continue
                minutes = int(stuck_after.total_seconds() * (retries + 1) // 60)
                error = (
                    f"no worker finished checking this file in {retries + 1} tries over about "
                    f"{minutes} minutes (a worker may have crashed on it); upload it again, and "
                    "if it fails the same way, check the catalog worker's log"
                )
                if item == "model_version":
                    model_version_mark_invalid(version=row, error=error)
                else:
                    dataset_mark_invalid(dataset=row, error=error)
                failed.append((item, row.pk))
    return InspectionsReap(resent=resent, failed=failed)


def onnx_file_inspect(
    *, path: Path, display_name: str, external_data: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check an ONNX file outside the catalog the way an uploaded version is checked: its first
    bytes (an executable, a script or an archive is refused), then the sandboxed inspection child
    (external data, the ONNX checker, one ONNX Runtime run under the memory cap, the layer
    table). Any ONNX model passes, not only an image classifier. The device registry runs its uploaded artifacts through this before storing them.

    ``external_data`` names files beside ``path`` the model may keep tensors in (a decoded
    container's ``weights.bin``); anything else external is refused.

    Returns:
        The child's result: ``info`` (the layer table), ``inputs`` and ``outputs``.

    Raises:
        WrongFileType: the bytes are plainly not a model (415).
        CatalogInputError: the inspection refused it; the message names ``display_name``.
    """
    from webapp.catalog.errors import CatalogInputError
    from webapp.catalog.sandbox import SandboxError, run_child
    from webapp.catalog.services.uploads import model_head_check

    with open(path, "rb") as fh:
        model_head_check(fh.read(64), filename=display_name)
    work = _work_dir("onnx-check-")
    try:
        return run_child(
            {"action": "onnx", "path": str(path), "external_data": list(external_data)},
            work_dir=work,
        )
    except SandboxError as exc:
        raise CatalogInputError(str(exc).replace(path.name, display_name), field="file") from None
    finally:
        work_dir_remove(work)
