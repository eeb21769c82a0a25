"""Uploads: check names and bytes, store a model or data set file under a generated name and
enqueue its inspection, and run chunked, resumable upload sessions."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
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
    DatasetTask,
    ItemStatus,
    ModelFormat,
    ModelVersion,
    Upload,
    UploadKind,
    UploadStatus,
)
from webapp.catalog.services.common import (
    _CHUNK,
    DATASET_VALIDATE_TASK,
    MODEL_VERSION_INSPECT_TASK,
    UPLOADS_CLEANUP_TASK,
    _enqueue,
    _extension,
    _hash_and_size,
    _head,
    _source_chunks,
    _store,
    filename_normalize,
    storage_delete_quietly,
    storage_name_for,
)
from webapp.catalog.services.versions import (
    _asset_for_update,
    _check_torch_spec,
    _next_number,
    normalization_check,
    split_seed_check,
)
from webapp.names import name_problem
from workers.celery import app as celery_app

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


def model_head_check(head: bytes, *, filename: str) -> None:
    """The first bytes of a model file (ONNX, whatever its name says) are not plainly another
    kind of file: an executable, a script, a PDF, an archive."""
    onnx_name = filename if filename.lower().endswith(".onnx") else f"{filename}.onnx"
    try:
        _sniff(head, kind="model", filename=onnx_name)
    except CatalogInputError as exc:
        exc.message = exc.message.replace(repr(onnx_name), repr(filename))
        exc.args = (exc.message,)
        raise


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


def _check_name(name: str | None) -> None:
    """Names with invisible control or formatting characters are refused (webapp.names)."""
    problem = name_problem(name or "")
    if problem is not None:
        raise CatalogInputError(problem, field="name")


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
    _check_name(name)
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


def dataset_upload_create(
    *,
    organization: Organization,
    user: User | None,
    name: str = "",
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None = None,
    path: Path | str | None = None,
    filename: str | None = None,
    split_seed: int | None = None,
    task: str | None = None,
) -> Dataset:
    """Store a dataset zip as a pending dataset and enqueue its validation.

    ``split_seed`` (default 0) fixes how the val and test splits are carved when the zip has no
    ``val/`` or ``test/`` folder; it is stored with the dataset and never changes.

    ``task``: ``"detection"`` reads the zip as YOLO, Pascal VOC or COCO (and refuses it when it
    is none of them); ``"auto"`` or none reads it as image folders unless its entry names look
    like a detection format, then as detection (docs/detection.md).

    Raises:
        WrongFileType: not a .zip, or not zip bytes.
        UploadTooLarge: over ``EDGESLIM_MAX_UPLOAD_BYTES``.
        CatalogInputError: a split seed that is not a whole number from 0 to 2**31 - 1.
    """
    _check_name(name)
    seed = split_seed_check(split_seed)
    detection = dataset_task_check(task) == DatasetTask.DETECTION
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
                kind=DatasetKind.DETECTION_ZIP if detection else DatasetKind.IMAGE_ZIP,
                task=DatasetTask.DETECTION if detection else DatasetTask.CLASSIFICATION,
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


# "auto" reads image folders unless the entry names look like a detection format.
DATASET_TASK_CHOICES = ("auto", "detection")


def dataset_task_check(value: Any) -> str:
    """A dataset upload's task: ``auto`` (blank) or ``detection``.

    Raises:
        CatalogInputError: anything else (``field="task"``).
    """
    if value in (None, ""):
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in DATASET_TASK_CHOICES:
        raise CatalogInputError(
            f"task must be one of {', '.join(DATASET_TASK_CHOICES)}.", field="task"
        )
    return value.strip().lower()


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
    "split_seed", "task",
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
    _check_name((params or {}).get("name"))
    clean = filename_normalize(filename)
    if total_size <= 0:
        raise CatalogInputError("size must be a positive number of bytes.", field="size")
    _check_size(total_size, clean)
    params = {
        k: v for k, v in (params or {}).items() if k in _UPLOAD_PARAM_KEYS and v not in ("", None)
    }
    if kind == UploadKind.MODEL:
        params.pop("split_seed", None)
        params.pop("task", None)
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
        if "task" in params:
            params["task"] = dataset_task_check(params["task"])
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
        task=p.get("task"),
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


def upload_records_purge(*, now: Any = None) -> int:
    """Delete the records of upload sessions that ended without a file (expired or aborted)
    more than ``EDGESLIM_UPLOAD_RECORD_S`` ago (default 7 days); their temp files went when they
    ended. Completed sessions stay: they name the version or data set they made. Returns how many
    rows were deleted."""
    now = now or timezone.now()
    keep = timedelta(seconds=int(getattr(settings, "EDGESLIM_UPLOAD_RECORD_S", 7 * 24 * 3600)))
    deleted, _ = Upload.objects.filter(
        status__in=[UploadStatus.EXPIRED, UploadStatus.ABORTED], updated_at__lte=now - keep
    ).delete()
    return int(deleted)
