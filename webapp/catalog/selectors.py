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
