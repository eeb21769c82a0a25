"""Model versions and data set records: numbering, versions made by jobs, containers,
preprocessing, what a worker found (ready or invalid), and deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, ProtectedError
from django.utils import timezone

from webapp.accounts.models import Organization, User
from webapp.catalog.errors import (
    CatalogInputError,
)
from webapp.catalog.models import (
    Dataset,
    DatasetKind,
    DatasetTask,
    ItemStatus,
    ModelAsset,
    ModelFormat,
    ModelVersion,
)
from webapp.catalog.services.common import (
    MODEL_VERSION_INSPECT_TASK,
    _enqueue,
    _extension,
    _hash_and_size,
    _source_chunks,
    _store,
    catalog_event_send,
    filename_normalize,
    storage_delete_quietly,
    storage_name_for,
)


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
            + ", ".join(zoo.list_models(task="classification"))
            + ". Or upload ONNX, which carries its own graph.",
            field="arch",
        )
    classifiers = zoo.list_models(task="classification")
    if not zoo.has_model(str(arch)):
        raise CatalogInputError(
            f"Unknown architecture {arch!r}; known: {', '.join(classifiers)}.", field="arch"
        )
    if zoo.model_task(str(arch)) != "classification":
        raise CatalogInputError(
            f"{arch!r} is a {zoo.model_task(str(arch))} architecture; weights files are read for "
            f"classification architectures only: {', '.join(classifiers)}.",
            field="arch",
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
    task: str | None = None,
) -> ModelVersion:
    """Record a successful inspection (shapes an ONNX file declared fill the blanks; ``task``
    is what the file says it is: "detection" for an ONNX carrying detection metadata is kept,
    the default "classification" never overrides a task the version already has)."""
    version.info = info
    if task and task != "classification":
        version.task = task
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
            "preprocessing", "task",
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
    if report.get("task") == DatasetTask.DETECTION:
        # An image zip whose layout turned out to be YOLO, VOC or COCO becomes a detection zip.
        dataset.task = DatasetTask.DETECTION
        if dataset.kind == DatasetKind.IMAGE_ZIP:
            dataset.kind = DatasetKind.DETECTION_ZIP
    dataset.status = ItemStatus.READY
    dataset.error = ""
    dataset.validated_at = timezone.now()
    dataset.save(
        update_fields=["report", "num_classes", "task", "kind", "status", "error", "validated_at"]
    )
    if dataset.task == DatasetTask.DETECTION:
        _detection_class_rows(dataset)
    for names in old.values():
        for n in names:
            storage_delete_quietly(n)
    catalog_event_send(
        organization_id=dataset.organization_id, item="dataset", pk=dataset.pk, status="ready"
    )
    return dataset


def _detection_class_rows(dataset: Dataset) -> None:
    """Store the detection page's per-class rows in the report, in class-id order: boxes per
    split and where each class's sample images sit in the stored thumbnails.

    The thumbnail URL indexes the stored mapping's values, and PostgreSQL's jsonb keeps keys
    in its own order (shorter first), not the class order, so the positions are read back
    from the saved row."""
    dataset.refresh_from_db(fields=["report"])
    report = dict(dataset.report)
    positions = {name: i for i, name in enumerate(dataset.thumbnails)}
    raw = report.get("counts")
    counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
    rows = []
    for name in report.get("classes") or []:
        per_split = {k: int((counts.get(k) or {}).get(name, 0)) for k in ("train", "val", "test")}
        rows.append(
            {
                "name": name,
                "boxes": sum(per_split.values()),
                **per_split,
                "thumb_index": positions.get(name),
                "thumbs": list(range(len(dataset.thumbnails.get(name) or []))),
            }
        )
    report["class_rows"] = rows
    dataset.report = report
    dataset.save(update_fields=["report"])


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
