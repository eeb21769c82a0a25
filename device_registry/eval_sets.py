"""Evaluation sets that ship with a deployed catalog model version: its data set's test split.

A version produced by a job is evaluated on the test split of the job's data set (found by
walking ``produced_by_job_id`` / ``parent`` up the lineage); an uploaded version has no data set
of its own, so the person deploying it may pick one of the organisation's data sets whose
classes and channels fit. The split is loaded at the version's input size and channels,
normalised exactly as the model expects (its declared preprocessing when it has one, else the
data set's training statistics), and written as an ``.npz``:

- ``x``: float32 ``(N, C, H, W)``, already normalised; ``y``: int64 ``(N,)`` labels;
- ``dataset`` (name), ``split`` (``"test"``), ``split_seed`` (-1 when unknown), ``count`` (N),
  ``test_size`` (the whole split) and ``preprocessing`` (the record as JSON), as 0-d arrays so
  ``np.load(..., allow_pickle=False)`` reads them.

N is the first :func:`device_registry.conf.eval_set_max_samples` images of the split by index
(1000 by default): deterministic, the same images on every device.

A **detector** (a version whose ``task`` is ``"detection"``) ships the test split of a detection
data set instead, in the layout :mod:`edgeslim_agent.detect_eval` reads: ``task``
(``"detection"``), ``x`` uint8 ``(N, 3, S, S)`` (each image letterboxed to the model's input
size on grey 114 by :func:`compression.detection_transforms.letterbox`, exactly as the studio's
``evaluate_detector`` places it), ``placement`` ``(N, 4)``, ``image_size`` ``(N, 2)``, the
ground truth ``boxes`` ``(M, 4)`` in each image's own pixels with ``labels`` ``(M,)`` and
``box_counts`` ``(N,)``, and ``class_names``, plus the descriptive 0-d arrays above; written
compressed (the grey borders shrink to nothing). N is also capped so ``x`` stays under
:data:`MAX_DETECTION_X_BYTES`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compression.detection_data import DetectionBundle, DetectionSample
from compression.errors import CompressionError
from compression.preprocessing import Preprocessing, PreprocessingError
from device_registry import conf
from edgeslim_agent.detect_eval import TASK_DETECTION
from webapp.catalog.loaders import dataset_load
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus, ModelVersion
from webapp.jobs.models import Job

EVAL_SPLIT = "test"
MAX_LINEAGE_DEPTH = 64
MAX_DETECTION_X_BYTES = 256 * 1024 * 1024  # the letterboxed images of one detection set


class EvalSetError(ValueError):
    """The evaluation set cannot be made (the message says why, for the page)."""


@dataclass(frozen=True)
class EvalSet:
    """A written evaluation set and what it holds (``meta`` goes on the artifact)."""

    path: Path
    meta: dict[str, Any]


def model_version_dataset(model_version: ModelVersion) -> Dataset | None:
    """The data set of the job that produced this version or its nearest produced ancestor.

    None for an upload (or a built-in sample) with no job anywhere up its lineage.
    """
    version: ModelVersion | None = model_version
    seen: set[int] = set()
    while version is not None and version.pk not in seen and len(seen) < MAX_LINEAGE_DEPTH:
        seen.add(version.pk)
        if version.produced_by_job_id:
            job = (
                Job.objects.filter(
                    pk=version.produced_by_job_id, organization_id=version.organization_id
                )
                .select_related("dataset")
                .first()
            )
            if job is not None:
                return job.dataset
        version = version.parent
    return None


def dataset_fit_reason(model_version: ModelVersion, dataset: Dataset) -> str:
    """Why ``dataset``'s test split cannot evaluate ``model_version``; empty when it can."""
    if dataset.organization_id != model_version.organization_id:
        return "This data set belongs to another organisation."
    if dataset.status != ItemStatus.READY:
        return f"The data set {dataset.name!r} is not ready ({dataset.status})."
    model_task = str(getattr(model_version, "task", "") or "classification")
    data_task = str(getattr(dataset, "task", "") or "classification")
    if model_task != data_task:
        return (
            f"The model is a {model_task} model but the data set {dataset.name!r} is a "
            f"{data_task} data set: its test split cannot score it."
        )
    if model_task == TASK_DETECTION:
        if not model_version.input_size:
            return "This detector does not declare its input size."
        if model_version.in_channels and model_version.in_channels != 3:
            return (
                f"The detector expects {model_version.in_channels} channels; detection data "
                "sets are RGB (3 channels)."
            )
        if (
            model_version.num_classes
            and dataset.num_classes
            and model_version.num_classes != dataset.num_classes
        ):
            return (
                f"The detector has {model_version.num_classes} classes but the data set "
                f"{dataset.name!r} has {dataset.num_classes}."
            )
        return ""
    if not model_version.input_size or not model_version.in_channels:
        return "This version does not declare its input size and channels."
    if (
        model_version.num_classes
        and dataset.num_classes
        and model_version.num_classes != dataset.num_classes
    ):
        return (
            f"The model has {model_version.num_classes} classes but the data set "
            f"{dataset.name!r} has {dataset.num_classes}."
        )
    if dataset.kind != DatasetKind.IMAGE_ZIP and model_version.in_channels != 1:
        return (
            f"The data set {dataset.name!r} is grayscale (1 channel) but the model expects "
            f"{model_version.in_channels} channels."
        )
    return ""


def fitting_datasets(model_version: ModelVersion) -> list[Dataset]:
    """The organisation's ready data sets whose test split can evaluate this version."""
    rows = Dataset.objects.filter(
        organization_id=model_version.organization_id, status=ItemStatus.READY
    ).order_by("name", "id")
    return [d for d in rows if not dataset_fit_reason(model_version, d)]


def _model_preprocessing(model_version: ModelVersion, base: Preprocessing) -> Preprocessing:
    """The record the model expects: its full declared one, its declared preset, or ``base``."""
    pre = getattr(model_version, "preprocessing", None)
    if not isinstance(pre, dict) or not pre:
        return base
    if "mean" in pre and "std" in pre:
        return Preprocessing.from_dict(pre)
    return base.with_normalization(str(pre.get("normalization") or "dataset"))


def build_eval_set(
    *,
    model_version: ModelVersion,
    dataset: Dataset,
    out_dir: Path,
    max_samples: int | None = None,
) -> EvalSet:
    """Write the test split of ``dataset`` as the model's evaluation ``.npz`` in ``out_dir``.

    Raises:
        EvalSetError: the data set does not fit the model, or cannot be loaded.
    """
    reason = dataset_fit_reason(model_version, dataset)
    if reason:
        raise EvalSetError(reason)
    cap = int(max_samples if max_samples is not None else conf.eval_set_max_samples())
    if cap < 1:
        raise EvalSetError("The evaluation set cap must be at least one image.")
    if str(getattr(model_version, "task", "") or "") == TASK_DETECTION:
        return _build_detection_eval_set(
            model_version=model_version, dataset=dataset, out_dir=out_dir, cap=cap
        )
    size, channels = int(model_version.input_size or 0), int(model_version.in_channels or 0)
    try:
        bundle = dataset_load(dataset, work_dir=out_dir / "data", size=size, channels=channels)
        pre = _model_preprocessing(model_version, bundle.preprocessing)
        bundle = bundle.with_preprocessing(pre)
    except (CompressionError, PreprocessingError, OSError) as exc:
        raise EvalSetError(
            f"The test split of {dataset.name!r} could not be loaded: {exc}"
        ) from exc
    test = bundle.test
    total = len(test)
    if total == 0:
        raise EvalSetError(f"The data set {dataset.name!r} has an empty test split.")
    count = min(cap, total)
    x_t, y_t = test.__getitems__(list(range(count)))
    x = x_t.numpy().astype(np.float32, copy=False)
    y = y_t.numpy().astype(np.int64, copy=False)
    split_seed = getattr(dataset, "split_seed", None)
    if split_seed is None:
        split_seed = getattr(bundle, "split_seed", None)
    meta: dict[str, Any] = {
        "dataset_id": dataset.pk,
        "dataset": dataset.name,
        "split": EVAL_SPLIT,
        "split_seed": int(split_seed) if split_seed is not None else None,
        "count": count,
        "test_size": total,
        "cap": cap,
        "model_version_id": model_version.pk,
        "preprocessing": pre.to_dict(),
    }
    path = out_dir / f"eval-v{model_version.pk}-d{dataset.pk}.npz"
    np.savez(
        path,
        x=x,
        y=y,
        dataset=np.array(dataset.name),
        split=np.array(EVAL_SPLIT),
        split_seed=np.array(meta["split_seed"] if meta["split_seed"] is not None else -1),
        count=np.array(count, dtype=np.int64),
        test_size=np.array(total, dtype=np.int64),
        preprocessing=np.array(json.dumps(meta["preprocessing"], sort_keys=True)),
    )
    return EvalSet(path=path, meta=meta)


def load_detection_bundle(dataset: Dataset, *, work_dir: Path, size: int) -> DetectionBundle:
    """The detection data set's fixed splits, loaded as the jobs runner loads them for a model of
    input ``size`` (the built-in ``mnist_scenes`` is generated at that size), so the device
    scores the test images the job report scored.

    Raises:
        EvalSetError: it cannot be loaded, or does not load as a detection data set.
    """
    try:
        bundle: Any = dataset_load(dataset, work_dir=work_dir, size=size, allow_detection=True)
    except (CompressionError, OSError) as exc:
        raise EvalSetError(
            f"The test split of {dataset.name!r} could not be loaded: {exc}"
        ) from exc
    if not isinstance(bundle, DetectionBundle):
        raise EvalSetError(f"The data set {dataset.name!r} did not load as a detection data set.")
    return bundle


def write_detection_eval_set(
    samples: list[DetectionSample],
    class_names: list[str],
    *,
    size: int,
    path: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write ``samples`` letterboxed to ``size`` with their ground truth as a detection ``.npz``
    (the layout of :mod:`edgeslim_agent.detect_eval`); returns ``{"count", "boxes"}``.

    ``extra`` adds descriptive 0-d arrays (``dataset``, ``split``, ...)."""
    from compression.detection_transforms import letterbox

    if not samples:
        raise EvalSetError("A detection evaluation set needs at least one image.")
    images, placement, image_size, boxes, labels, counts = [], [], [], [], [], []
    for s in samples:
        img, where = letterbox(s.image, size)
        images.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
        placement.append((where.scale_x, where.scale_y, where.pad_x, where.pad_y))
        image_size.append((s.width, s.height))
        boxes.append(np.asarray(s.boxes, dtype=np.float32).reshape(-1, 4))
        labels.append(np.asarray(s.labels, dtype=np.int64).reshape(-1))
        counts.append(len(labels[-1]))
    arrays: dict[str, Any] = {
        "task": np.array(TASK_DETECTION),
        "x": np.stack(images).astype(np.uint8),
        "placement": np.asarray(placement, dtype=np.float64),
        "image_size": np.asarray(image_size, dtype=np.int64),
        "boxes": np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        "labels": np.concatenate(labels).astype(np.int64),
        "box_counts": np.asarray(counts, dtype=np.int64),
        "class_names": np.array([str(c) for c in class_names]),
    }
    for key, value in (extra or {}).items():
        arrays[key] = np.array(value)
    np.savez_compressed(path, **arrays)
    return {"count": len(samples), "boxes": int(sum(counts))}


def _build_detection_eval_set(
    *, model_version: ModelVersion, dataset: Dataset, out_dir: Path, cap: int
) -> EvalSet:
    size = int(model_version.input_size or 0)
    bundle = load_detection_bundle(dataset, work_dir=out_dir / "data", size=size)
    test = list(bundle.test)
    total = len(test)
    if total == 0:
        raise EvalSetError(f"The data set {dataset.name!r} has an empty test split.")
    fit = max(1, MAX_DETECTION_X_BYTES // (3 * size * size))
    count = min(cap, total, fit)
    chosen = test[:count]
    if not any(len(s.labels) for s in chosen):
        raise EvalSetError(
            f"The first {count} test images of {dataset.name!r} hold no box: mAP is undefined."
        )
    split_seed = getattr(dataset, "split_seed", None)
    if split_seed is None:
        split_seed = getattr(bundle, "split_seed", None)
    path = out_dir / f"eval-v{model_version.pk}-d{dataset.pk}.npz"
    written = write_detection_eval_set(
        chosen,
        list(bundle.classes),
        size=size,
        path=path,
        extra={
            "dataset": dataset.name,
            "split": EVAL_SPLIT,
            "split_seed": int(split_seed) if split_seed is not None else -1,
            "count": count,
            "test_size": total,
        },
    )
    meta: dict[str, Any] = {
        "task": TASK_DETECTION,
        "dataset_id": dataset.pk,
        "dataset": dataset.name,
        "split": EVAL_SPLIT,
        "split_seed": int(split_seed) if split_seed is not None else None,
        "count": count,
        "test_size": total,
        "cap": cap,
        "boxes": written["boxes"],
        "input_size": size,
        "classes": list(bundle.classes),
        "model_version_id": model_version.pk,
    }
    return EvalSet(path=path, meta=meta)


def eval_set_tempdir() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder for one build (the npz is copied into storage, then it goes)."""
    return tempfile.TemporaryDirectory(prefix="es-eval-")


def describe(meta: dict[str, Any]) -> str:
    """One line for pages: what an artifact's evaluation set holds."""
    if not meta:
        return ""
    seed = meta.get("split_seed")
    seed_text = f", split seed {seed}" if seed is not None else ""
    capped = (
        f" (first {meta.get('count')} of {meta.get('test_size')})"
        if meta.get("count") != meta.get("test_size")
        else ""
    )
    if meta.get("task") == TASK_DETECTION:
        return (
            f"{meta.get('count')} images ({meta.get('boxes')} boxes) of the "
            f"{meta.get('split', EVAL_SPLIT)} split of {meta.get('dataset')!s}{capped}"
            f"{seed_text}, letterboxed to {meta.get('input_size')} px; scored with mAP"
        )
    return (
        f"{meta.get('count')} images of the {meta.get('split', EVAL_SPLIT)} split of "
        f"{meta.get('dataset')!s}{capped}{seed_text}"
    )
