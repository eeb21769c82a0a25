"""Turn catalog rows into what ``compression/`` works on, for the jobs runner and the workers.

Files in object storage are copied into ``work_dir`` first; a local storage path is used as is.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile

from compression.datasets import DatasetBundle, load_builtin, load_image_folder_zip
from compression.errors import DatasetError, InvalidModelError
from compression.preprocessing import Preprocessing, PreprocessingError
from compression.stage import ModelState
from webapp.catalog.models import (
    BUILTIN_DATASET_KINDS,
    Dataset,
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


def dataset_load(
    dataset: Dataset,
    *,
    work_dir: Path,
    size: int | None = None,
    channels: int | None = None,
) -> DatasetBundle:
    """Load a dataset's stored train/val/test split at ``size`` x ``size`` with ``channels``
    (the model's input), defaulting to what validation used.

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
        raise DatasetError(
            f"dataset {dataset.name!r} is an object-detection data set; jobs train and score "
            "image classifiers only so far (docs/detection.md says what is built)"
        )
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


def model_version_preprocessing(version: ModelVersion) -> Preprocessing | None:
    """The complete record stored on a version, or None (the data set's own statistics, or
    only a declared preset that still needs the data's shape)."""
    record = version.preprocessing if isinstance(version.preprocessing, dict) else {}
    if not record.get("mean"):
        return None
    return Preprocessing.from_dict(record)


def bundle_for_model_version(
    dataset: Dataset, version: ModelVersion, *, work_dir: Path
) -> DatasetBundle:
    """The dataset as ``version`` expects its inputs: its size and channels, normalised with the
    version's preprocessing record when it has one (statistics it was trained with or declared,
    such as ImageNet's or plain 0-1 scaling), else with the training split's own statistics.

    Raises:
        DatasetError: the data cannot be loaded, or does not fit the version's record.
    """
    data = dataset_load(
        dataset, work_dir=work_dir, size=version.input_size, channels=version.in_channels
    )
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
