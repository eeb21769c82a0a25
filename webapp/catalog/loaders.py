"""Turn catalog rows into what ``compression/`` works on, for the jobs runner and the workers.

Files in object storage are copied into ``work_dir`` first; a local storage path is used as is.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Literal, overload

from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile

from compression.datasets import DatasetBundle, load_builtin, load_image_folder_zip
from compression.detection_data import DetectionBundle, load_builtin_detection, load_detection_zip
from compression.errors import DatasetError, InvalidModelError
from compression.preprocessing import Preprocessing, PreprocessingError
from compression.stage import ModelState
from webapp.catalog.inspect_child import DETECTION_MAX_SIDE
from webapp.catalog.models import (
    BUILTIN_DATASET_KINDS,
    Dataset,
    DatasetKind,
    DatasetTask,
    ItemStatus,
    ModelFormat,
    ModelVersion,
)


def stored_file_local_path(field: FieldFile, *, work_dir: Path | None = None) -> Path:
    """A local path for a stored file: the storage's own path, or a copy in ``work_dir``."""
    if not field or not field.name:
        raise FileNotFoundError("the item has no stored file")
    try:
        return Path(default_storage.path(field.name))
    except NotImplementedError:  # object storage: copy it down
        folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="es-"))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(field.name).name
        with default_storage.open(field.name, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        return target


def model_version_load(version: ModelVersion, *, work_dir: Path | None = None) -> ModelState:
    """Load a ready version: torch weights into their zoo architecture, or an ONNX file's state.

    Raises:
        InvalidModelError: the version is not ready, or its file no longer loads.
    """
    from compression import model_io

    if version.status != ItemStatus.READY:
        raise InvalidModelError(
            f"model {version} is {version.status}, not ready: {version.error or 'not inspected yet'}"
        )
    checkpoint = (version.info or {}).get("checkpoint")
    if version.format == ModelFormat.TORCH and isinstance(checkpoint, dict):
        return _checkpoint_load(version, checkpoint, work_dir=work_dir)
    path = stored_file_local_path(version.file, work_dir=work_dir)
    shape = version.input_shape
    if version.format == ModelFormat.ONNX:
        return model_io.load_model_file(path, num_classes=version.num_classes, input_shape=shape)
    state = model_io.load_model_file(
        path,
        arch=version.arch,
        num_classes=version.num_classes,
        in_channels=version.in_channels,
        input_shape=shape,
        allow_resized=True,
    )
    return state


def _checkpoint_load(
    version: ModelVersion, sidecar: dict[str, object], *, work_dir: Path | None
) -> ModelState:
    """A version stored as a :mod:`compression.checkpoint` (safetensors weights, the JSON
    sidecar kept in ``info["checkpoint"]``), as the zoo-model form writes them: the weights are
    copied beside a fresh sidecar and loaded with :func:`compression.checkpoint.load_checkpoint`,
    which checks their sha256 and rebuilds the architecture with its options (detectors too)."""
    import json

    from compression.checkpoint import CheckpointError, load_checkpoint

    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="es-"))
    folder = folder / f"checkpoint-{version.pk}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    with version.file.open("rb") as src, open(weights, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
    meta = {**sidecar, "weights_file": weights.name}
    (folder / "model.json").write_text(json.dumps(meta))
    try:
        return load_checkpoint(weights)
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise InvalidModelError(f"model {version} no longer loads: {exc}") from exc


@overload
def dataset_load(
    dataset: Dataset,
    *,
    work_dir: Path,
    size: int | None = ...,
    channels: int | None = ...,
    allow_detection: Literal[False] = ...,
) -> DatasetBundle: ...


@overload
def dataset_load(
    dataset: Dataset,
    *,
    work_dir: Path,
    size: int | None = ...,
    channels: int | None = ...,
    allow_detection: Literal[True],
) -> DatasetBundle | DetectionBundle: ...


def dataset_load(
    dataset: Dataset,
    *,
    work_dir: Path,
    size: int | None = None,
    channels: int | None = None,
    allow_detection: bool = False,
) -> DatasetBundle | DetectionBundle:
    """Load a dataset's stored train/val/test split at ``size`` x ``size`` with ``channels``
    (the model's input), defaulting to what validation used.

    A detection data set gives a :class:`DetectionBundle` (:func:`detection_dataset_load`) to a
    caller that reads them (``allow_detection=True``: the jobs runner, the sweep runner); any
    other caller works on image tensors and labels only, and gets a :class:`DatasetError`
    naming the data set's task instead of a bundle it cannot read.

    The split comes from ``dataset.split_seed`` alone (and a zip's own ``val/``/``test/``
    folders), so every job on this dataset is scored on the same test images. Built-in sets are
    1-channel; ``mnist`` defaults to 28x28 and ``digits`` to 32x32, resized to ``size``.

    Raises:
        DatasetError: not ready, or a built-in set asked for in other than 1 channel.
        UnsafeArchiveError: the stored zip is refused (it passed once, so only if tampered with).
    """
    if dataset.status != ItemStatus.READY:
        raise DatasetError(
            f"dataset {dataset.name!r} is {dataset.status}, not ready: "
            f"{dataset.error or 'not validated yet'}"
        )
    if dataset.task == DatasetTask.DETECTION:
        if not allow_detection:
            raise DatasetError(
                f"dataset {dataset.name!r} is an object-detection data set (images with "
                "boxes); this reads classification data sets (labelled images) only"
            )
        return detection_dataset_load(dataset, work_dir=work_dir, size=size, channels=channels)
    if dataset.kind in BUILTIN_DATASET_KINDS:
        if channels not in (None, 1):
            raise DatasetError(
                f"the {dataset.kind} images are 1-channel but the model expects {channels} channels"
            )
        bundle = load_builtin(str(dataset.kind), size=size, split_seed=dataset.split_seed)
        bundle.name = dataset.name
        return bundle
    shape = dataset.report.get("input_shape") or [3, 32, 32]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = stored_file_local_path(dataset.file, work_dir=work_dir)
    extract_to = Path(tempfile.mkdtemp(prefix="dataset-", dir=work_dir))
    try:
        bundle = load_image_folder_zip(
            path,
            extract_to,
            size=int(size or shape[-1]),
            channels=int(channels or shape[0]),
            split_seed=dataset.split_seed,
        )
    finally:  # the images are decoded into memory; the extracted files are not needed
        shutil.rmtree(extract_to, ignore_errors=True)
    bundle.name = dataset.name
    return bundle


def detection_dataset_load(
    dataset: Dataset,
    *,
    work_dir: Path,
    size: int | None = None,
    channels: int | None = None,
) -> DetectionBundle:
    """A detection data set's fixed split as a :class:`DetectionBundle` (images at their own
    size, an upload's shrunk to a longer side of at most ``DETECTION_MAX_SIDE`` as at
    validation: detectors letterbox them to their input, so ``size`` only sets the size the
    built-in ``mnist_scenes`` is generated at, the model's input size).

    ``mnist_scenes`` is generated from the row's split seed; an uploaded YOLO, Pascal VOC or
    COCO zip is extracted with the same safe extraction as at validation
    (:func:`compression.detection_data.load_detection_zip`) and split by the row's seed, so every
    job on it sees the test images the dataset page reported.

    Raises:
        DatasetError: a detector fed other than 3-channel images, or the zip no longer reads.
        UnsafeArchiveError: the stored zip is refused (it passed once, so only if tampered with).
    """
    if channels not in (None, 3):
        raise DatasetError(
            f"{dataset.name!r} holds RGB images with boxes but the model expects {channels} "
            "channels; detectors take 3-channel images"
        )
    if dataset.kind == DatasetKind.MNIST_SCENES:
        bundle = load_builtin_detection(
            "mnist_scenes", seed=int(dataset.split_seed), size=int(size) if size else None
        )
    else:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        path = stored_file_local_path(dataset.file, work_dir=work_dir)
        extract_to = Path(tempfile.mkdtemp(prefix="detection-", dir=work_dir))
        try:
            bundle = load_detection_zip(
                path, extract_to, split_seed=int(dataset.split_seed), max_side=DETECTION_MAX_SIDE
            )
        finally:  # the images are decoded into memory; the extracted files are not needed
            shutil.rmtree(extract_to, ignore_errors=True)
    bundle.name = dataset.name
    return bundle


def detection_box_counts(bundle: DetectionBundle) -> dict[str, int]:
    """Images and boxes of each split, and the boxes in all: what a job's log line states."""
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        samples = bundle.split(split)
        counts[split] = len(samples)
        counts[f"{split}_boxes"] = sum(len(s.labels) for s in samples)
    counts["boxes"] = counts["train_boxes"] + counts["val_boxes"] + counts["test_boxes"]
    return counts


def model_version_preprocessing(version: ModelVersion) -> Preprocessing | None:
    """The complete record stored on a version, or None (the data set's own statistics, or
    only a declared preset that still needs the data's shape)."""
    record = version.preprocessing if isinstance(version.preprocessing, dict) else {}
    if not record.get("mean"):
        return None
    return Preprocessing.from_dict(record)


@overload
def bundle_for_model_version(
    dataset: Dataset,
    version: ModelVersion,
    *,
    work_dir: Path,
    allow_detection: Literal[False] = ...,
) -> DatasetBundle: ...


@overload
def bundle_for_model_version(
    dataset: Dataset,
    version: ModelVersion,
    *,
    work_dir: Path,
    allow_detection: Literal[True],
) -> DatasetBundle | DetectionBundle: ...


def bundle_for_model_version(
    dataset: Dataset, version: ModelVersion, *, work_dir: Path, allow_detection: bool = False
) -> DatasetBundle | DetectionBundle:
    """The dataset as ``version`` expects its inputs: its size and channels, normalised with the
    version's preprocessing record when it has one (statistics it was trained with or declared,
    such as ImageNet's or plain 0-1 scaling), else with the training split's own statistics.

    A detection data set (with ``allow_detection``, see :func:`dataset_load`) is a
    :class:`DetectionBundle` as it is: a detector takes 0-1 RGB images and letterboxes them to
    its input itself, so no normalisation record applies; ``mnist_scenes`` is generated at the
    version's input size.

    Raises:
        DatasetError: the data cannot be loaded, or does not fit the version's record.
    """
    data = dataset_load(
        dataset,
        work_dir=work_dir,
        size=version.input_size,
        channels=version.in_channels,
        allow_detection=True,
    )
    if isinstance(data, DetectionBundle) and not allow_detection:
        raise DatasetError(
            f"dataset {dataset.name!r} is an object-detection data set (images with boxes); "
            "this reads classification data sets (labelled images) only"
        )
    if isinstance(data, DetectionBundle):
        return data
    try:
        record = model_version_preprocessing(version)
        if record is None and version.declared_normalization != "dataset":
            record = data.preprocessing.with_normalization(version.declared_normalization)
    except PreprocessingError as exc:
        raise DatasetError(f"{version}: {exc}") from None
    if record is None:
        return data
    if not record.class_names:  # a declared record names no classes: the data set's apply
        record = replace(record, class_names=tuple(data.classes))
    return data.with_preprocessing(record)
