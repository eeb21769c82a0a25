"""Writes for the catalog: store uploads under generated names, create versions and datasets,
record what a worker found, run resumable upload sessions, and seed the built-in samples.

Inspection never runs here: services store the bytes, mark the row ``pending`` and enqueue a
worker task with ``transaction.on_commit``. Keyword-only and typed; views, the API, tasks and
the jobs runner call these.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.cache import cache
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Max, ProtectedError
from django.utils import timezone

from webapp.accounts.models import Organization, User
from webapp.catalog.errors import (
    CatalogInputError,
    UploadClosed,
    UploadOffsetMismatch,
    UploadTooLarge,
    WrongFileType,
)
from webapp.catalog.models import (
    Dataset,
    DatasetKind,
    ItemStatus,
    ModelAsset,
    ModelFormat,
    ModelVersion,
    Upload,
    UploadKind,
    UploadStatus,
)
from workers.celery import app as celery_app

log = logging.getLogger(__name__)

# The catalog's Celery tasks (webapp/catalog/tasks.py), sent by name: services never import the
# task module. Every ``catalog.*`` name is routed to the catalog queue (workers/celery.py).
MODEL_VERSION_INSPECT_TASK = "catalog.model_version_inspect"
DATASET_VALIDATE_TASK = "catalog.dataset_validate"
UPLOADS_CLEANUP_TASK = "catalog.uploads_cleanup"

_CHUNK = 1024 * 1024

# Extension -> format. Anything else is refused before a byte is stored.
MODEL_EXTENSIONS: dict[str, str] = {
    ".safetensors": ModelFormat.TORCH,
    ".pt": ModelFormat.TORCH,
    ".pth": ModelFormat.TORCH,
    ".bin": ModelFormat.TORCH,
    ".onnx": ModelFormat.ONNX,
}
DATASET_EXTENSIONS = (".zip",)
EXPORT_HINT = (
    "Export the weights with safetensors.torch.save_file(model.state_dict(), 'model.safetensors') "
    "and pick the architecture, or export ONNX with torch.onnx.export."
)
# First bytes that say "this is a program or an archive of another kind, not a model".
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "a Linux executable"),
    (b"#!", "a script"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-zip archive"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

# The built-in samples every organisation starts with: zoo architectures sized for digits.
BUILTIN_DATASET_KEY = "digits"
# key -> (name, kind) of every built-in dataset; ``mnist`` holds 5,000 real MNIST digits.
BUILTIN_DATASETS: dict[str, tuple[str, str]] = {
    "digits": ("Digits (built-in)", DatasetKind.DIGITS),
    "mnist": ("MNIST 5k (built-in)", DatasetKind.MNIST),
}
# The data set the built-in models are trained on at first start (in the catalog worker), at
# each model's own input size (32x32), and the epochs each gets there (about 20 s, 3 min and
# 5 min on one CPU core; ``EDGESLIM_BUILTIN_TRAIN_EPOCHS`` overrides them, tests lower it).
BUILTIN_TRAIN_DATASET = "mnist"
BUILTIN_MODELS: tuple[dict[str, Any], ...] = (
    {
        "key": "zoo:lenet5",
        "name": "LeNet-5 (built-in)",
        "arch": "lenet5",
        "description": "LeNet-5 trained on the built-in MNIST at 32x32: a quick start.",
        "train_epochs": 5,
    },
    {
        "key": "zoo:resnet20",
        "name": "ResNet-20 (built-in)",
        "arch": "resnet20",
        "description": "ResNet-20 for 1-channel 32x32 digits, trained on the built-in MNIST.",
        "train_epochs": 3,
    },
    {
        "key": "zoo:vgg11_bn",
        "name": "VGG-11-BN (built-in)",
        "arch": "vgg11_bn",
        "description": "VGG-11 with BatchNorm for 1-channel 32x32 digits, trained on the built-in "
        "MNIST: a large model that channel pruning shrinks well.",
        "train_epochs": 2,
        # AdamW at 3e-3 left it at 55% test accuracy after 2 epochs (docs/first-hour.md's run);
        # SGD with momentum at 0.05 reaches about 97% in the same 2 epochs (the compression
        # benchmark trains it so).
        "train_optimizer": "sgd",
        "train_lr": 0.05,
    },
)


def builtin_train_epochs(spec: dict[str, Any]) -> int:
    """Epochs a built-in sample is trained for: the setting when set, else the model's own."""
    override = int(getattr(settings, "EDGESLIM_BUILTIN_TRAIN_EPOCHS", 0) or 0)
    return override or int(spec.get("train_epochs") or 0)


# --- names and bytes --------------------------------------------------------------------------


def filename_normalize(name: str, *, max_length: int = 200) -> str:
    """A safe display form of an uploaded name: the last path part, NFC, no control characters,
    at most ``max_length`` characters with the extension kept. Never used as a storage name."""
    name = unicodedata.normalize("NFC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if not name:
        return "upload"
    if len(name) > max_length:
        stem, ext = os.path.splitext(name)
        ext = ext[:16]
        name = stem[: max_length - len(ext) - 1] + "…" + ext
    return name


def _extension(filename: str) -> str:
    return os.path.splitext(filename)[1].lower()


def model_format_from_filename(filename: str) -> str:
    """``"torch"`` or ``"onnx"`` from the name, or raise WrongFileType with what is accepted."""
    ext = _extension(filename)
    if ext == ".pt2":
        raise WrongFileType(
            f"{filename!r} is a torch.export archive (.pt2), which runs code when loaded. "
            + EXPORT_HINT,
            field="file",
        )
    if ext not in MODEL_EXTENSIONS:
        raise WrongFileType(
            f"{filename!r} is not a model file EdgeSlim accepts: upload .safetensors, "
            f"a weights-only state dict (.pt/.pth) or .onnx. {EXPORT_HINT}",
            field="file",
        )
    return MODEL_EXTENSIONS[ext]


def _check_dataset_filename(filename: str) -> None:
    if _extension(filename) not in DATASET_EXTENSIONS:
        raise WrongFileType(
            f"{filename!r} is not a dataset archive: upload an image-folder .zip "
            "(train/<class>/*.png and val/<class>/*.png, or <class>/*.png).",
            field="file",
        )


def _sniff(head: bytes, *, kind: str, filename: str) -> None:
    """Refuse bytes that are plainly not what the name claims (the worker checks the rest)."""
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            raise WrongFileType(f"{filename!r} is {what}, not a {kind} file.", field="file")
    if kind == "dataset" and not head.startswith(_ZIP_MAGIC):
        raise WrongFileType(f"{filename!r} is not a zip archive.", field="file")
    if kind == "model" and _extension(filename) == ".onnx" and head.startswith(_ZIP_MAGIC):
        raise WrongFileType(f"{filename!r} is a zip archive, not an ONNX model.", field="file")
    if not head:
        raise CatalogInputError(f"{filename!r} is empty.", field="file")


def max_upload_bytes() -> int:
    return int(getattr(settings, "EDGESLIM_MAX_UPLOAD_BYTES", 2 * 1024**3))


def _check_size(size: int, filename: str) -> None:
    limit = max_upload_bytes()
    if size > limit:
        raise UploadTooLarge(
            f"{filename!r} is {size} bytes, over the upload limit of {limit} bytes.",
            field="file",
            limit=limit,
        )


def _source_chunks(
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None, path: Path | str | None
) -> Iterator[bytes]:
    if uploaded_file is not None:
        if isinstance(uploaded_file, UploadedFile):
            uploaded_file.seek(0)
            yield from uploaded_file.chunks(_CHUNK)
        else:
            uploaded_file.seek(0)
            while block := uploaded_file.read(_CHUNK):
                yield block
        return
    assert path is not None
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            yield block


def _head(uploaded_file: UploadedFile[bytes] | IO[bytes] | None, path: Path | str | None) -> bytes:
    if uploaded_file is not None:
        uploaded_file.seek(0)
        head = uploaded_file.read(16)
        uploaded_file.seek(0)
        return bytes(head)
    assert path is not None
    with open(path, "rb") as fh:
        return fh.read(16)


def _hash_and_size(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for block in chunks:
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _store(
    *,
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None,
    path: Path | str | None,
    storage_name: str,
) -> str:
    """Save into the default storage under ``storage_name`` (generated, never the user's name)."""
    if uploaded_file is not None:
        uploaded_file.seek(0)
        return default_storage.save(storage_name, File(uploaded_file))
    assert path is not None
    with open(path, "rb") as fh:
        return default_storage.save(storage_name, File(fh))


def storage_name_for(organization: Organization, folder: str, ext: str) -> str:
    return f"catalog/{organization.pk}/{folder}/{uuid.uuid4().hex}{ext}"


def storage_delete_quietly(name: str) -> None:
    if not name:
        return
    try:
        default_storage.delete(name)
    except Exception:  # a file that is already gone is fine; log anything else
        log.warning("could not delete stored file %s", name, exc_info=True)


def _prepare_input(
    *,
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None,
    path: Path | str | None,
    filename: str | None,
) -> tuple[str, int]:
    if (uploaded_file is None) == (path is None):
        raise ValueError("pass exactly one of uploaded_file and path")
    raw = filename or getattr(uploaded_file, "name", None) or (Path(path).name if path else "")
    clean = filename_normalize(raw or "upload")
    if uploaded_file is not None:
        size = int(getattr(uploaded_file, "size", 0) or 0)
    else:
        assert path is not None
        size = Path(path).stat().st_size
    _check_size(size, clean)
    return clean, size


# --- events ------------------------------------------------------------------------------------


def catalog_event_send(*, organization_id: int, item: str, pk: int, status: str) -> None:
    """Tell the organisation's open pages that a catalog item changed (``catalog.updated``)."""
    from webapp.live.services import org_event_send

    try:
        org_event_send(
            organization_id=organization_id,
            kind="catalog.updated",
            payload={"item": item, "id": pk, "status": status},
        )
    except Exception:  # a page missing one live update is not worth failing the write for
        log.warning("catalog.updated event not sent for %s %s", item, pk, exc_info=True)


def _enqueue(task_name: str, pk: int) -> None:
    transaction.on_commit(lambda: celery_app.send_task(task_name, args=(pk,)))


# --- models -----------------------------------------------------------------------------------


def _asset_for_update(
    *, organization: Organization, name: str, user: User | None, description: str = ""
) -> ModelAsset:
    for _ in range(2):
        try:
            with transaction.atomic():
                asset, _created = ModelAsset.objects.select_for_update().get_or_create(
                    organization=organization,
                    name=name,
                    defaults={"created_by": user, "description": description},
                )
                return asset
        except IntegrityError:  # created concurrently by another request: fetch it again
            continue
    return ModelAsset.objects.select_for_update().get(organization=organization, name=name)


def _next_number(asset: ModelAsset) -> int:
    current = asset.versions.aggregate(m=Max("number"))["m"]
    return int(current or 0) + 1


def _check_torch_spec(
    *, arch: str | None, num_classes: Any, in_channels: Any, input_size: Any
) -> tuple[str, int | None, int | None, int]:
    """Check what a weights file needs; class and channel counts may be left to the inspection,
    which reads them from the tensors."""
    from compression import zoo

    if not arch:
        raise CatalogInputError(
            "A PyTorch weights file needs its architecture: pick one of "
            + ", ".join(zoo.list_models())
            + ". Or upload ONNX, which carries its own graph.",
            field="arch",
        )
    if not zoo.has_model(str(arch)):
        raise CatalogInputError(
            f"Unknown architecture {arch!r}; known: {', '.join(zoo.list_models())}.", field="arch"
        )
    try:
        classes = int(num_classes) if num_classes not in (None, "") else None
        channels = int(in_channels) if in_channels not in (None, "") else None
        size = int(input_size) if input_size not in (None, "") else zoo.default_input_size(arch)
    except (TypeError, ValueError) as exc:
        raise CatalogInputError(f"Sizes must be whole numbers: {exc}") from exc
    if classes is not None and not 1 <= classes <= 100_000:
        raise CatalogInputError("num_classes must be between 1 and 100000.", field="num_classes")
    if channels is not None and channels not in (1, 3, 4):
        raise CatalogInputError("in_channels must be 1, 3 or 4.", field="in_channels")
    if not 8 <= size <= 1024:
        raise CatalogInputError("input_size must be between 8 and 1024 pixels.", field="input_size")
    return str(arch), classes, channels, size


def normalization_check(value: Any, *, in_channels: Any = None) -> str:
    """A declared normalization preset, checked against the channel count when it is known.

    Raises:
        CatalogInputError: an unknown preset, or ImageNet statistics for other than 3 channels
            (with ``field="normalization"``, so forms show it beside the field).
    """
    from compression.preprocessing import NORMALIZATION_PRESETS

    preset = str(value or "dataset").strip().lower()
    if preset not in NORMALIZATION_PRESETS:
        raise CatalogInputError(
            f"normalization must be one of {', '.join(NORMALIZATION_PRESETS)}, not {value!r}.",
            field="normalization",
        )
    if preset == "imagenet" and in_channels not in (None, "") and int(in_channels) != 3:
        raise CatalogInputError(
            f"ImageNet normalization needs a 3-channel (RGB) model; this one has {in_channels} "
            "channel(s). Use dataset or unit.",
            field="normalization",
        )
    return preset


def model_upload_create(
    *,
    organization: Organization,
    user: User | None,
    name: str = "",
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None = None,
    path: Path | str | None = None,
    filename: str | None = None,
    format_hint: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    description: str = "",
    normalization: str | None = None,
) -> ModelVersion:
    """Store an uploaded model file as a new pending version and enqueue its inspection.

    ``normalization`` declares the statistics the model was trained with: ``dataset`` (the
    default: the job's data set's own), ``imagenet`` (3-channel models only) or ``unit`` (plain
    0-1 scaling). The full preprocessing record is written once the inspection knows the shape.

    ``name`` picks the asset (a new one, or a new version of an existing one); it defaults to the
    file's stem. The original filename is kept as metadata only; the stored name is generated.

    Raises:
        WrongFileType: not .safetensors/.pt/.pth/.bin/.onnx, or bytes that are plainly another
            kind of file (an executable, a PDF, ...).
        UploadTooLarge: over ``EDGESLIM_MAX_UPLOAD_BYTES``.
        CatalogInputError: a torch file without a known architecture, bad sizes, or a
            normalization that does not fit (ImageNet statistics on a 1-channel model).
    """
    declared = normalization_check(normalization, in_channels=in_channels)
    clean, _size = _prepare_input(uploaded_file=uploaded_file, path=path, filename=filename)
    fmt = model_format_from_filename(clean)
    if format_hint and format_hint != fmt:
        raise WrongFileType(
            f"{clean!r} looks like {fmt}, but format {format_hint!r} was given.", field="format"
        )
    _sniff(_head(uploaded_file, path), kind="model", filename=clean)
    meta: dict[str, Any] = {
        "arch": "",
        "num_classes": None,
        "in_channels": None,
        "input_size": None,
    }
    if fmt == ModelFormat.TORCH:
        a, c, ch, s = _check_torch_spec(
            arch=arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size
        )
        meta = {"arch": a, "num_classes": c, "in_channels": ch, "input_size": s}
    asset_name = (name or "").strip()[:200] or filename_normalize(Path(clean).stem)
    sha256, counted = _hash_and_size(_source_chunks(uploaded_file, path))
    _check_size(counted, clean)
    stored = _store(
        uploaded_file=uploaded_file,
        path=path,
        storage_name=storage_name_for(organization, "models", _extension(clean)),
    )
    try:
        with transaction.atomic():
            asset = _asset_for_update(
                organization=organization, name=asset_name, user=user, description=description
            )
            version = ModelVersion.objects.create(
                organization=organization,
                asset=asset,
                number=_next_number(asset),
                file=stored,
                format=fmt,
                source_filename=clean,
                size_bytes=counted,
                sha256=sha256,
                status=ItemStatus.PENDING,
                created_by=user,
                preprocessing={"normalization": declared} if declared != "dataset" else {},
                **meta,
            )
            _enqueue(MODEL_VERSION_INSPECT_TASK, version.pk)
    except BaseException:
        storage_delete_quietly(stored)
        raise
    return version


def model_version_create_from_job(
    *,
    organization: Organization,
    parent: ModelVersion,
    job_id: int,
    recipe: dict[str, Any],
    file_path: Path | str,
    format: str,
    label: str = "",
    info: dict[str, Any] | None = None,
    user: User | None = None,
    preprocessing: dict[str, Any] | None = None,
    macs: int | None = None,
) -> ModelVersion:
    """Record a model a job produced as the next version of its parent's asset.

    Lineage: ``parent``, ``produced_by_job_id`` and ``recipe``. Shapes are copied from the parent.
    ``preprocessing`` is the job report's record (``report["preprocessing"]``): the inputs the
    model was measured with; a malformed record is refused.
    With ``info`` (the runner's ``ModelInfo.to_dict()``) the version is ready at once; without
    it a worker inspects the file like an upload.
    ``macs`` is what the job counted for this model (its report's final state): an ONNX file's
    inspection cannot count MACs, so the version keeps the job's count in ``info["macs"]``.
    """
    if parent.organization_id != organization.pk:
        raise CatalogInputError("The parent model belongs to another organisation.", field="parent")
    if format not in ModelFormat.values:
        raise CatalogInputError(f"Unknown model format {format!r}.", field="format")
    if macs is not None and (isinstance(macs, bool) or not isinstance(macs, int) or macs < 0):
        raise CatalogInputError(f"MACs must be a count, not {macs!r}.", field="macs")
    record = _preprocessing_record(preprocessing) if preprocessing else {}
    stored_info = dict(info or {})
    if macs is not None and stored_info.get("macs") is None:
        stored_info["macs"] = macs
    path = Path(file_path)
    ext = ".onnx" if format == ModelFormat.ONNX else (_extension(path.name) or ".safetensors")
    sha256, size = _hash_and_size(_source_chunks(None, path))
    stored = _store(
        uploaded_file=None, path=path, storage_name=storage_name_for(organization, "models", ext)
    )
    try:
        with transaction.atomic():
            asset = ModelAsset.objects.select_for_update().get(pk=parent.asset_id)
            version = ModelVersion.objects.create(
                organization=organization,
                asset=asset,
                number=_next_number(asset),
                file=stored,
                format=format,
                source_filename=filename_normalize(path.name),
                label=label[:40],
                arch=parent.arch if format == ModelFormat.TORCH else "",
                num_classes=parent.num_classes,
                in_channels=parent.in_channels,
                input_size=parent.input_size,
                task=parent.task,
                size_bytes=size,
                sha256=sha256,
                info=stored_info,
                status=ItemStatus.READY if info is not None else ItemStatus.PENDING,
                inspected_at=timezone.now() if info is not None else None,
                parent=parent,
                produced_by_job_id=job_id,
                recipe=recipe,
                preprocessing=record,
                created_by=user,
            )
            if info is None:
                _enqueue(MODEL_VERSION_INSPECT_TASK, version.pk)
            else:
                org_id, pk = organization.pk, version.pk
                transaction.on_commit(
                    lambda: catalog_event_send(
                        organization_id=org_id, item="model_version", pk=pk, status="ready"
                    )
                )
    except BaseException:
        storage_delete_quietly(stored)
        raise
    return version


def model_version_attach_container(*, version: ModelVersion, path: Path | str) -> ModelVersion:
    """Store the compressed container a job wrote for ``version`` (idempotent).

    The container's header and sha256 are checked before it is stored (a refused one raises
    :class:`CatalogInputError`), so a version never carries a container its devices would
    refuse for corruption.
    """
    from compression.container import ContainerError, read_header

    path = Path(path)
    sha256, size = _hash_and_size(_source_chunks(None, path))
    if version.container and version.container_sha256 == sha256:
        return version
    try:
        header, _sections = read_header(path)
    except ContainerError as exc:
        raise CatalogInputError(str(exc), field="container") from exc
    stored = _store(
        uploaded_file=None,
        path=path,
        storage_name=storage_name_for(version.organization, "containers", ".esdc"),
    )
    old = str(version.container.name or "") if version.container else ""
    try:
        ModelVersion.objects.filter(pk=version.pk).update(
            container=stored,
            container_size=size,
            container_sha256=sha256,
            container_decoded_size=header.graph_length + header.data_length,
        )
    except BaseException:
        storage_delete_quietly(stored)
        raise
    storage_delete_quietly(old)
    version.refresh_from_db()
    return version


def _preprocessing_record(data: dict[str, Any]) -> dict[str, Any]:
    from compression.preprocessing import Preprocessing, PreprocessingError

    try:
        return Preprocessing.from_dict(data).to_dict()
    except PreprocessingError as exc:
        raise CatalogInputError(str(exc), field="preprocessing") from None


def declared_preprocessing(
    *, normalization: str, in_channels: int | None, input_size: int | None
) -> dict[str, Any]:
    """The full record of a declared preset (``imagenet``/``unit``) once the shape is known;
    ``{}`` for ``dataset``, whose statistics come from the job's data.

    Raises:
        PreprocessingError: the preset does not fit (ImageNet statistics on 1 channel).
    """
    from compression.preprocessing import Preprocessing

    if normalization == "dataset" or not in_channels or not input_size:
        return {"normalization": normalization} if normalization != "dataset" else {}
    if in_channels not in (1, 3):
        from compression.preprocessing import PreprocessingError

        raise PreprocessingError(
            f"a declared normalization needs 1 or 3 channels, the model has {in_channels}"
        )
    base = Preprocessing(
        input_size=(input_size, input_size),
        channels=in_channels,
        mean=(0.0,) * in_channels,
        std=(1.0,) * in_channels,
        class_names=(),
    )
    return base.with_normalization(normalization).to_dict()


def model_version_mark_ready(
    *,
    version: ModelVersion,
    info: dict[str, Any],
    input_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> ModelVersion:
    """Record a successful inspection (shapes an ONNX file declared fill the blanks)."""
    version.info = info
    version.status = ItemStatus.READY
    version.error = ""
    version.inspected_at = timezone.now()
    version.input_size = version.input_size or input_size
    version.in_channels = version.in_channels or in_channels
    version.num_classes = version.num_classes or num_classes
    if version.declared_normalization != "dataset" and not version.preprocessing.get("mean"):
        version.preprocessing = declared_preprocessing(
            normalization=version.declared_normalization,
            in_channels=version.in_channels,
            input_size=version.input_size,
        )
    version.save(
        update_fields=[
            "info", "status", "error", "inspected_at", "input_size", "in_channels", "num_classes",
            "preprocessing",
        ]
    )  # fmt: skip
    catalog_event_send(
        organization_id=version.organization_id, item="model_version", pk=version.pk, status="ready"
    )
    return version


def model_version_mark_invalid(*, version: ModelVersion, error: str) -> ModelVersion:
    """Record a refused file. Its stored bytes are deleted: nothing hostile stays downloadable."""
    storage_delete_quietly(version.file.name or "")
    version.file = ""
    version.status = ItemStatus.INVALID
    version.error = error[:4000]
    version.inspected_at = timezone.now()
    version.save(update_fields=["file", "status", "error", "inspected_at"])
    catalog_event_send(
        organization_id=version.organization_id,
        item="model_version",
        pk=version.pk,
        status="invalid",
    )
    return version


def model_version_set_file(*, version: ModelVersion, path: Path | str) -> ModelVersion:
    """Attach a generated weights file (the built-in samples are built on a worker)."""
    sha256, size = _hash_and_size(_source_chunks(None, path))
    stored = _store(
        uploaded_file=None,
        path=path,
        storage_name=storage_name_for(version.organization, "models", _extension(str(path))),
    )
    version.file = stored
    version.sha256 = sha256
    version.size_bytes = size
    version.save(update_fields=["file", "sha256", "size_bytes"])
    return version


class ItemInUse(CatalogInputError):
    status_code = 409


def model_version_delete(*, version: ModelVersion) -> None:
    """Delete a version and its file; the asset goes too when it has no versions left.

    Raises:
        ItemInUse: a job still refers to it (its report needs it).
    """
    name = version.file.name or ""
    asset = version.asset
    try:
        with transaction.atomic():
            version.delete()
            if not asset.versions.exists():
                asset.delete()
    except ProtectedError as exc:
        raise ItemInUse(
            f"{version} is used by {len(exc.protected_objects)} job(s); delete those first."
        ) from exc
    transaction.on_commit(lambda: storage_delete_quietly(name))


# --- datasets ---------------------------------------------------------------------------------


MAX_SPLIT_SEED = 2**31 - 1


def split_seed_check(value: Any) -> int:
    """A dataset's split seed: a whole number from 0 to 2**31 - 1 (blank means 0).

    Raises:
        CatalogInputError: anything else (``field="split_seed"``).
    """
    if value in (None, ""):
        return 0
    try:
        seed = int(value)
    except (TypeError, ValueError):
        seed = -1
    if (
        isinstance(value, bool)
        or str(seed) != str(value).strip()
        or not 0 <= seed <= MAX_SPLIT_SEED
    ):
        raise CatalogInputError(
            f"split_seed must be a whole number from 0 to {MAX_SPLIT_SEED}.", field="split_seed"
        )
    return seed


def dataset_upload_create(
    *,
    organization: Organization,
    user: User | None,
    name: str = "",
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None = None,
    path: Path | str | None = None,
    filename: str | None = None,
    split_seed: int | None = None,
) -> Dataset:
    """Store an image-folder zip as a pending dataset and enqueue its validation.

    ``split_seed`` (default 0) fixes how the val and test splits are carved when the zip has no
    ``val/`` or ``test/`` folder; it is stored with the dataset and never changes.

    Raises:
        WrongFileType: not a .zip, or not zip bytes.
        UploadTooLarge: over ``EDGESLIM_MAX_UPLOAD_BYTES``.
        CatalogInputError: a split seed that is not a whole number from 0 to 2**31 - 1.
    """
    seed = split_seed_check(split_seed)
    clean, _size = _prepare_input(uploaded_file=uploaded_file, path=path, filename=filename)
    _check_dataset_filename(clean)
    _sniff(_head(uploaded_file, path), kind="dataset", filename=clean)
    sha256, counted = _hash_and_size(_source_chunks(uploaded_file, path))
    _check_size(counted, clean)
    stored = _store(
        uploaded_file=uploaded_file,
        path=path,
        storage_name=storage_name_for(organization, "datasets", ".zip"),
    )
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                organization=organization,
                name=(name or "").strip()[:200] or filename_normalize(Path(clean).stem),
                kind=DatasetKind.IMAGE_ZIP,
                split_seed=seed,
                file=stored,
                source_filename=clean,
                size_bytes=counted,
                sha256=sha256,
                status=ItemStatus.PENDING,
                created_by=user,
            )
            _enqueue(DATASET_VALIDATE_TASK, dataset.pk)
    except BaseException:
        storage_delete_quietly(stored)
        raise
    return dataset


def dataset_mark_ready(
    *, dataset: Dataset, report: dict[str, Any], thumbnail_files: dict[str, list[Path]]
) -> Dataset:
    """Record a validated dataset; its thumbnails (local PNGs) move into storage."""
    thumbs: dict[str, list[str]] = {}
    for class_name, files in thumbnail_files.items():
        thumbs[class_name] = [
            _store(
                uploaded_file=None,
                path=f,
                storage_name=storage_name_for(dataset.organization, f"thumbs/{dataset.pk}", ".png"),
            )
            for f in files
        ]
    old = dataset.thumbnails
    dataset.report = {**report, "thumbnails": thumbs}
    dataset.num_classes = len(report.get("classes", [])) or None
    dataset.status = ItemStatus.READY
    dataset.error = ""
    dataset.validated_at = timezone.now()
    dataset.save(update_fields=["report", "num_classes", "status", "error", "validated_at"])
    for names in old.values():
        for n in names:
            storage_delete_quietly(n)
    catalog_event_send(
        organization_id=dataset.organization_id, item="dataset", pk=dataset.pk, status="ready"
    )
    return dataset


def dataset_mark_invalid(*, dataset: Dataset, error: str) -> Dataset:
    """Record a refused dataset and delete its stored archive."""
    storage_delete_quietly(dataset.file.name or "")
    dataset.file = ""
    dataset.status = ItemStatus.INVALID
    dataset.error = error[:4000]
    dataset.validated_at = timezone.now()
    dataset.save(update_fields=["file", "status", "error", "validated_at"])
    catalog_event_send(
        organization_id=dataset.organization_id, item="dataset", pk=dataset.pk, status="invalid"
    )
    return dataset


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete a dataset, its archive and thumbnails.

    Raises:
        ItemInUse: a job still refers to it.
    """
    names = [dataset.file.name] if dataset.file.name else []
    names += [n for ns in dataset.thumbnails.values() for n in ns]
    try:
        with transaction.atomic():
            dataset.delete()
    except ProtectedError as exc:
        raise ItemInUse(
            f"{dataset} is used by {len(exc.protected_objects)} job(s); delete those first."
        ) from exc

    def delete_files() -> None:
        for n in names:
            storage_delete_quietly(n)

    transaction.on_commit(delete_files)


# --- built-in samples -------------------------------------------------------------------------


def builtin_samples_ensure(*, organization: Organization) -> None:
    """Give ``organization`` the built-in datasets (digits, mnist) and the zoo samples
    (idempotent, cheap when done), and re-validate its datasets whose stored report predates
    the train/val/test split.

    Rows are created pending; the catalog worker builds the weights (each model trained on the
    built-in MNIST, :data:`BUILTIN_TRAIN_DATASET`) and inspects them, like any upload.
    """
    datasets_revalidate_stale(organization=organization)
    keys = [m["key"] for m in BUILTIN_MODELS]
    have_models = ModelVersion.objects.filter(
        organization=organization, builtin_key__in=keys
    ).count()
    have_datasets = set(
        Dataset.objects.filter(
            organization=organization, builtin_key__in=list(BUILTIN_DATASETS)
        ).values_list("builtin_key", flat=True)
    )
    if len(have_datasets) == len(BUILTIN_DATASETS) and have_models == len(keys):
        return
    from compression import zoo

    with transaction.atomic():
        for key, (name, kind) in BUILTIN_DATASETS.items():
            if key in have_datasets:
                continue
            try:
                with transaction.atomic():
                    dataset = Dataset.objects.create(
                        organization=organization,
                        name=name,
                        kind=kind,
                        status=ItemStatus.PENDING,
                        is_builtin=True,
                        builtin_key=key,
                    )
                    _enqueue(DATASET_VALIDATE_TASK, dataset.pk)
            except IntegrityError:
                pass  # another request made it first
        for spec in BUILTIN_MODELS:
            if ModelVersion.objects.filter(
                organization=organization, builtin_key=spec["key"]
            ).exists():
                continue
            try:
                with transaction.atomic():
                    asset = _asset_for_update(
                        organization=organization,
                        name=spec["name"],
                        user=None,
                        description=spec["description"],
                    )
                    if not asset.is_builtin:
                        asset.is_builtin = True
                        asset.save(update_fields=["is_builtin"])
                    version = ModelVersion.objects.create(
                        organization=organization,
                        asset=asset,
                        number=_next_number(asset),
                        format=ModelFormat.TORCH,
                        source_filename=f"{spec['arch']}.safetensors",
                        arch=spec["arch"],
                        num_classes=10,
                        in_channels=1,
                        input_size=zoo.default_input_size(spec["arch"]),
                        status=ItemStatus.PENDING,
                        is_builtin=True,
                        builtin_key=spec["key"],
                        info={
                            "train_epochs": builtin_train_epochs(spec),
                            "pending_message": f"training on the built-in "
                            f"{BUILTIN_TRAIN_DATASET} ({builtin_train_epochs(spec)} epochs) in "
                            "the background; ready in a few minutes",
                        },
                    )
                    _enqueue(MODEL_VERSION_INSPECT_TASK, version.pk)
            except IntegrityError:
                continue


def datasets_revalidate_stale(*, organization: Organization | None = None) -> int:
    """Send ready datasets whose report has no test count (validated before datasets owned a
    train/val/test split) back to pending and enqueue their validation. Returns how many.

    Their split seed is the field's (0 for migrated rows), so the new report describes exactly
    the split every later load makes. Called on the catalog pages and by the
    ``catalog_revalidate_datasets`` management command.
    """
    qs = Dataset.objects.filter(status=ItemStatus.READY, report__has_key="totals").exclude(
        report__totals__has_key="test"
    )
    if organization is not None:
        qs = qs.filter(organization=organization)
    ids = list(qs.values_list("pk", flat=True)[:500])
    if not ids:
        return 0
    with transaction.atomic():
        changed = Dataset.objects.filter(pk__in=ids, status=ItemStatus.READY).update(
            status=ItemStatus.PENDING
        )
        for pk in ids:
            _enqueue(DATASET_VALIDATE_TASK, pk)
    return int(changed)


def builtin_spec(version: ModelVersion) -> dict[str, Any] | None:
    return next((m for m in BUILTIN_MODELS if m["key"] == version.builtin_key), None)


# --- chunked, resumable uploads ---------------------------------------------------------------


def upload_tmp_dir() -> Path:
    folder = Path(settings.EDGESLIM_UPLOAD_TMP_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upload_temp_path(upload: Upload) -> Path:
    return upload_tmp_dir() / upload.temp_name


def _expiry() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "EDGESLIM_UPLOAD_EXPIRY_S", 24 * 3600)))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


_UPLOAD_PARAM_KEYS = (
    "name", "arch", "num_classes", "in_channels", "input_size", "description", "normalization",
    "split_seed",
)  # fmt: skip


def upload_create(
    *,
    organization: Organization,
    user: User | None,
    kind: str,
    filename: str,
    total_size: int,
    sha256: str = "",
    params: dict[str, Any] | None = None,
) -> Upload:
    """Open a resumable upload session; the file's type, size and model parameters are checked
    now, so a bad upload is refused before a byte is sent.

    Raises:
        UploadTooLarge: ``total_size`` is over the limit (answered 413).
        WrongFileType / CatalogInputError: the name or the parameters are refused.
    """
    if kind not in UploadKind.values:
        raise CatalogInputError(
            f"kind must be one of {', '.join(UploadKind.values)}.", field="kind"
        )
    clean = filename_normalize(filename)
    if total_size <= 0:
        raise CatalogInputError("size must be a positive number of bytes.", field="size")
    _check_size(total_size, clean)
    params = {
        k: v for k, v in (params or {}).items() if k in _UPLOAD_PARAM_KEYS and v not in ("", None)
    }
    if kind == UploadKind.MODEL:
        params.pop("split_seed", None)
        if "normalization" in params:
            params["normalization"] = normalization_check(
                params["normalization"], in_channels=params.get("in_channels")
            )
        if model_format_from_filename(clean) == ModelFormat.TORCH:
            _check_torch_spec(
                arch=params.get("arch"),
                num_classes=params.get("num_classes"),
                in_channels=params.get("in_channels"),
                input_size=params.get("input_size"),
            )
    else:
        for key in ("arch", "num_classes", "in_channels", "input_size", "normalization"):
            params.pop(key, None)
        if "split_seed" in params:
            params["split_seed"] = split_seed_check(params["split_seed"])
        _check_dataset_filename(clean)
    sha256 = (sha256 or "").strip().lower()
    if sha256 and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise CatalogInputError("sha256 must be 64 hex digits.", field="sha256")
    now = timezone.now()
    upload = Upload.objects.create(
        organization=organization,
        user=user,
        kind=kind,
        filename=clean,
        total_size=total_size,
        sha256=sha256,
        params=params,
        created_at=now,
        updated_at=now,
        expires_at=now + _expiry(),
    )
    upload_temp_path(upload).touch()
    if cache.add("catalog:uploads_cleanup", 1, timeout=600):
        transaction.on_commit(_enqueue_cleanup)
    return upload


def _enqueue_cleanup() -> None:
    celery_app.send_task(UPLOADS_CLEANUP_TASK)


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def content_range_parse(header: str | None) -> tuple[int, int, int]:
    """``bytes start-end/total`` -> (start, end inclusive, total), or raise a 400."""
    match = _CONTENT_RANGE.match((header or "").strip())
    if not match:
        raise CatalogInputError(
            "Send each chunk with a Content-Range header: 'bytes START-END/TOTAL'.",
            field="Content-Range",
        )
    start, end, total = (int(g) for g in match.groups())
    if end < start or end >= total:
        raise CatalogInputError(f"Content-Range {header!r} is not a valid range.")
    return start, end, total


def _check_open(upload: Upload) -> None:
    if upload.status != UploadStatus.RECEIVING:
        raise UploadClosed(f"This upload is {upload.status}; start a new one.")
    if upload.expires_at <= timezone.now():
        raise UploadClosed("This upload has expired; start a new one.")


def upload_append_chunk(
    *, upload: Upload, content_range: str | None, stream: IO[bytes] | Any
) -> Upload:
    """Append one chunk, streamed to disk (never held in memory).

    The chunk must start at ``received`` (else 409, with ``received`` to resume from) and match
    its declared length; a chunk cut short leaves ``received`` as it was, so the client resumes.
    """
    start, end, total = content_range_parse(content_range)
    length = end - start + 1
    with transaction.atomic():
        locked = Upload.objects.select_for_update().get(pk=upload.pk)
        _check_open(locked)
        _check_size(end + 1, locked.filename)  # bytes past the limit: 413 whatever the total
        if total != locked.total_size:
            raise CatalogInputError(
                f"Content-Range total {total} differs from the declared size {locked.total_size}.",
                field="Content-Range",
            )
        if start != locked.received:
            raise UploadOffsetMismatch(
                f"This chunk starts at byte {start}, but the upload has {locked.received} bytes; "
                f"resume from {locked.received}.",
                received=locked.received,
            )
        temp = upload_temp_path(locked)
        written = 0
        with open(temp, "r+b" if temp.exists() else "w+b") as out:
            out.seek(start)
            out.truncate()
            while written < length:
                block = stream.read(min(_CHUNK, length - written))
                if not block:
                    break
                out.write(block)
                written += len(block)
            extra = stream.read(1)
            if written != length or extra:
                out.seek(start)
                out.truncate()
                raise CatalogInputError(
                    f"The chunk body has {'more' if extra else written} bytes, but its "
                    f"Content-Range says {length}; resume from {start}.",
                    received=start,
                )
        locked.received = start + length
        locked.updated_at = timezone.now()
        locked.expires_at = locked.updated_at + _expiry()
        locked.save(update_fields=["received", "updated_at", "expires_at"])
    return locked


def upload_complete(*, upload: Upload, user: User | None) -> ModelVersion | Dataset:
    """Turn a fully received upload into a ModelVersion or a Dataset. The temp file is removed
    whatever the outcome: a refused file closes the session and must be uploaded again."""
    temp = upload_temp_path(upload)
    try:
        with transaction.atomic():
            locked = Upload.objects.select_for_update().get(pk=upload.pk)
            _check_open(locked)
            if locked.received != locked.total_size:
                raise UploadOffsetMismatch(
                    f"The upload has {locked.received} of {locked.total_size} bytes; send the "
                    "rest before completing.",
                    received=locked.received,
                )
            item = _upload_item_create(upload=locked, user=user, temp=temp)
            locked.status = UploadStatus.COMPLETE
            locked.updated_at = timezone.now()
            locked.save(update_fields=["status", "updated_at", "model_version", "dataset"])
    except (UploadClosed, UploadOffsetMismatch):
        raise  # the session itself is unchanged: resume it, or it is already closed
    except BaseException:
        _remove(temp)
        Upload.objects.filter(pk=upload.pk, status=UploadStatus.RECEIVING).update(
            status=UploadStatus.ABORTED, updated_at=timezone.now()
        )
        raise
    _remove(temp)
    return item


def _upload_item_create(*, upload: Upload, user: User | None, temp: Path) -> ModelVersion | Dataset:
    if upload.sha256:
        actual, _ = _hash_and_size(_source_chunks(None, temp))
        if actual != upload.sha256:
            raise CatalogInputError(
                f"The received bytes have sha256 {actual}, not {upload.sha256}.", field="sha256"
            )
    p = upload.params
    if upload.kind == UploadKind.MODEL:
        version = model_upload_create(
            organization=upload.organization,
            user=user,
            name=str(p.get("name", "")),
            path=temp,
            filename=upload.filename,
            arch=p.get("arch"),
            num_classes=p.get("num_classes"),
            in_channels=p.get("in_channels"),
            input_size=p.get("input_size"),
            description=str(p.get("description", "")),
            normalization=p.get("normalization"),
        )
        upload.model_version = version
        return version
    dataset = dataset_upload_create(
        organization=upload.organization,
        user=user,
        name=str(p.get("name", "")),
        path=temp,
        filename=upload.filename,
        split_seed=p.get("split_seed"),
    )
    upload.dataset = dataset
    return dataset


def upload_abort(*, upload: Upload) -> Upload:
    """The client gave up: remove the temp file and close the session."""
    with transaction.atomic():
        locked = Upload.objects.select_for_update().get(pk=upload.pk)
        if locked.status == UploadStatus.RECEIVING:
            locked.status = UploadStatus.ABORTED
            locked.updated_at = timezone.now()
            locked.save(update_fields=["status", "updated_at"])
    _remove(upload_temp_path(locked))
    return locked


def upload_expired_cleanup(*, now: Any = None) -> int:
    """Expire sessions past ``expires_at`` and remove their temp files, plus any temp file that
    no open session owns (left by a crash). Returns how many files were removed."""
    now = now or timezone.now()
    removed = 0
    stale = Upload.objects.filter(status=UploadStatus.RECEIVING, expires_at__lte=now)
    for upload in stale:
        path = upload_temp_path(upload)
        if path.exists():
            _remove(path)
            removed += 1
    stale.update(status=UploadStatus.EXPIRED, updated_at=now)
    open_names = {
        u.temp_name for u in Upload.objects.filter(status=UploadStatus.RECEIVING).only("id")
    }
    cutoff = (now - _expiry()).timestamp()
    for path in upload_tmp_dir().glob("*.part"):
        if path.name not in open_names and path.stat().st_mtime < cutoff:
            _remove(path)
            removed += 1
    return removed


def work_dir_remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- inspection on a worker (the tasks call these) ----------------------------------------


def _work_dir(prefix: str) -> Path:
    base = Path(settings.DATA_DIR) / "work"
    base.mkdir(parents=True, exist_ok=True)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


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
        if version.is_builtin and not version.file:
            spec = builtin_spec(version) or {}
            built = run_child(
                {
                    "action": "builtin",
                    "arch": version.arch,
                    "num_classes": version.num_classes or 10,
                    "in_channels": version.in_channels or 1,
                    "input_size": version.input_size or 32,
                    "train_epochs": builtin_train_epochs(spec) if spec else 0,
                    "train_dataset": BUILTIN_TRAIN_DATASET,
                    "train_optimizer": str(spec.get("train_optimizer", "adam")),
                    "train_lr": float(spec.get("train_lr", 0.003)),
                    "max_batches": int(
                        getattr(settings, "EDGESLIM_BUILTIN_TRAIN_MAX_BATCHES", 0) or 0
                    ),
                    "out_path": str(work / f"{version.arch}.safetensors"),
                },
                work_dir=work,
                # Training takes longer than an inspection; the cap on memory stays.
                timeout_s=3 * float(settings.EDGESLIM_INSPECT_TIMEOUT_S),
            )
            model_version_set_file(version=version, path=built["path"])
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
    work = _work_dir(f"dataset-{dataset.pk}-")
    try:
        request: dict[str, Any] = {
            "action": "dataset",
            "kind": dataset.kind,
            "name": dataset.name,
            "split_seed": dataset.split_seed,
            "work_dir": str(work),
        }
        if dataset.kind == DatasetKind.IMAGE_ZIP:
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
        return dataset_mark_ready(dataset=dataset, report=result["report"], thumbnail_files=thumbs)
    finally:
        work_dir_remove(work)
