"""Turn catalog rows into what ``compression/`` works on, for the jobs runner and the workers.

Files in object storage are copied into ``work_dir`` first; a local storage path is used as is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile

from compression.datasets import DatasetBundle, load_digits, load_image_folder_zip
from compression.errors import DatasetError, InvalidModelError
from compression.stage import ModelState
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus, ModelFormat, ModelVersion


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
    split_seed: int | None = None,
) -> DatasetBundle:
    """Load a dataset at ``size`` x ``size`` with ``channels`` (the model's input), defaulting to
    what validation used (32, and 1 channel for digits / 3 for image folders).

    Raises:
        DatasetError: not ready, or the digits asked for in other than 1 channel.
        UnsafeArchiveError: the stored zip is refused (it passed once, so only if tampered with).
    """
    if dataset.status != ItemStatus.READY:
        raise DatasetError(
            f"dataset {dataset.name!r} is {dataset.status}, not ready: "
            f"{dataset.error or 'not validated yet'}"
        )
    shape = dataset.report.get("input_shape") or [3, 32, 32]
    size = int(size or shape[-1])
    if dataset.kind == DatasetKind.DIGITS:
        if channels not in (None, 1):
            raise DatasetError(
                f"the digits are 1-channel images but the model expects {channels} channels"
            )
        return load_digits(size=size, split_seed=_split_seed(dataset))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = stored_file_local_path(dataset.file, work_dir=work_dir)
    extract_to = Path(tempfile.mkdtemp(prefix="dataset-", dir=work_dir))
    try:
        bundle = load_image_folder_zip(
            path,
            extract_to,
            size=size,
            channels=int(channels or shape[0]),
            split_seed=split_seed if split_seed is not None else _split_seed(dataset),
        )
    finally:  # the images are decoded into memory; the extracted files are not needed
        shutil.rmtree(extract_to, ignore_errors=True)
    bundle.name = dataset.name
    return bundle


def _split_seed(dataset: Dataset) -> int:
    """The seed the data set's fixed split was carved with (stored with it, never a recipe's)."""
    value = getattr(dataset, "split_seed", None)
    if value is None and isinstance(dataset.report, dict):
        value = dataset.report.get("split_seed")
    return int(value or 0)
