"""Reads for the catalog. Every query starts from the organisation: another organisation's id
finds nothing (views turn that into 404)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from webapp.accounts.models import Organization
from webapp.catalog.models import Dataset, ModelAsset, ModelVersion, Upload


def model_version_list(
    *, organization: Organization, status: str | None = None, asset: ModelAsset | None = None
) -> QuerySet[ModelVersion]:
    """Versions of ``organization``, newest asset activity first within each asset name."""
    qs = ModelVersion.objects.for_org(organization).select_related("asset", "parent__asset")
    if status:
        qs = qs.filter(status=status)
    if asset is not None:
        qs = qs.filter(asset=asset)
    return qs.order_by("asset__name", "-number")


def model_version_get(*, organization: Organization, pk: Any) -> ModelVersion:
    """One version of ``organization`` or Http404 (also for a foreign or malformed id)."""
    try:
        return (
            ModelVersion.objects.for_org(organization)
            .select_related("asset", "parent__asset", "created_by")
            .get(pk=pk)
        )
    except (ModelVersion.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such model version.") from exc


def model_version_children(*, version: ModelVersion) -> QuerySet[ModelVersion]:
    return (
        ModelVersion.objects.for_org(version.organization_id)
        .filter(parent=version)
        .select_related("asset")
        .order_by("number")
    )


def model_version_lineage(*, version: ModelVersion, limit: int = 20) -> list[ModelVersion]:
    """The chain of parents, nearest first (bounded, in case of a cycle made by hand)."""
    chain: list[ModelVersion] = []
    current = version.parent
    while current is not None and len(chain) < limit:
        if current.organization_id != version.organization_id:
            break
        chain.append(current)
        current = current.parent
    return chain


def model_asset_list(*, organization: Organization) -> QuerySet[ModelAsset]:
    return ModelAsset.objects.for_org(organization).prefetch_related("versions").order_by("name")


def model_asset_get(*, organization: Organization, pk: Any) -> ModelAsset:
    try:
        return ModelAsset.objects.for_org(organization).get(pk=pk)
    except (ModelAsset.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such model.") from exc


def dataset_list(*, organization: Organization, status: str | None = None) -> QuerySet[Dataset]:
    qs = Dataset.objects.for_org(organization)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-is_builtin", "name", "id")


def dataset_get(*, organization: Organization, pk: Any) -> Dataset:
    try:
        return Dataset.objects.for_org(organization).get(pk=pk)
    except (Dataset.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such dataset.") from exc


def upload_get(*, organization: Organization, pk: Any) -> Upload:
    try:
        return Upload.objects.for_org(organization).get(pk=pk)
    except (Upload.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such upload.") from exc


# --- splits and preprocessing, as pages show them ----------------------------------------------

SPLIT_NAMES = ("train", "val", "test")
SPLIT_SOURCE_LABELS = {
    "folder": "the zip's own folder",
    "carved": "carved from the training images with the split seed",
    "fixed": "the built-in set's fixed split",
}
NORMALIZATION_LABELS = {
    "dataset": "the data set's own statistics (training split)",
    "imagenet": "ImageNet statistics (declared)",
    "unit": "plain 0-1 scaling (declared)",
}


def dataset_splits(*, dataset: Dataset) -> dict[str, Any]:
    """The dataset's train/val/test sizes, where each came from, and its split seed.

    ``known`` is False for a report from before the three-way split (it is being re-validated).
    """
    report = dataset.report if isinstance(dataset.report, dict) else {}
    raw_totals, raw_sources = report.get("totals"), report.get("split_sources")
    totals: dict[str, Any] = raw_totals if isinstance(raw_totals, dict) else {}
    sources: dict[str, Any] = raw_sources if isinstance(raw_sources, dict) else {}
    rows = [
        {
            "name": name,
            "count": totals.get(name),
            "source": sources.get(name, ""),
            "source_label": SPLIT_SOURCE_LABELS.get(str(sources.get(name, "")), "—"),
        }
        for name in SPLIT_NAMES
    ]
    return {
        "rows": rows,
        "split_seed": report.get("split_seed", dataset.split_seed),
        "known": dataset.has_split_report,
        "total": sum(int(r["count"] or 0) for r in rows),
    }


def preprocessing_summary(record: Any) -> dict[str, Any] | None:
    """A preprocessing record (``Preprocessing.to_dict()``) as a line and a small table.

    None when there is no record; a record that only declares a preset (the model is not
    inspected yet) or that does not parse gives the table without the line.
    """
    from compression.preprocessing import Preprocessing, PreprocessingError

    if not isinstance(record, dict) or not record:
        return None
    normalization = str(record.get("normalization") or "dataset")
    try:
        line = Preprocessing.from_dict(record).describe() if record.get("mean") else ""
    except PreprocessingError:
        line = ""

    def numbers(key: str) -> str:
        values = record.get(key)
        return ", ".join(f"{float(v):.4f}" for v in values) if isinstance(values, list) else "—"

    size = record.get("input_size")
    classes = record.get("class_names") if isinstance(record.get("class_names"), list) else []
    rows = [
        ("Input", f"{size[0]} × {size[1]}" if isinstance(size, list) and len(size) == 2 else "—"),
        ("Channels", f"{record['channels']} ({record.get('color', '')})"
         if record.get("channels") else "—"),
        ("Resize", str(record.get("resize") or "—")),
        ("Scale", "pixels / 255" if record.get("mean") else "—"),
        ("Mean", numbers("mean")),
        ("Std", numbers("std")),
        ("Normalization", NORMALIZATION_LABELS.get(normalization, normalization)),
        ("Classes", f"{len(classes)}: {', '.join(str(c) for c in classes[:20])}"
         f"{' …' if len(classes) > 20 else ''}" if classes else "—"),
    ]  # fmt: skip
    return {"line": line, "rows": rows, "normalization": normalization}


def model_version_preprocessing_view(*, version: ModelVersion) -> dict[str, Any]:
    """What the version page shows about its inputs: the record, or what stands in for it."""
    summary = preprocessing_summary(version.preprocessing)
    return {
        "summary": summary,
        "normalization": version.declared_normalization,
        "normalization_label": NORMALIZATION_LABELS.get(
            version.declared_normalization, version.declared_normalization
        ),
    }
