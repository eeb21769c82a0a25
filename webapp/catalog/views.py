"""Catalog pages: model and dataset lists with the upload zone, item pages that follow the
worker's inspection, org-scoped downloads and thumbnails. Views orchestrate; services write."""

from __future__ import annotations

from pathlib import Path

from django import forms
from django.contrib import messages
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from device_registry import model_versions as device_versions
from webapp.accounts.permissions import READ, WRITE, can_write, org_page
from webapp.catalog import selectors, services
from webapp.catalog.errors import CatalogInputError, UploadTooLarge
from webapp.catalog.forms import DatasetUploadForm, ModelUploadForm, ZooModelForm
from webapp.catalog.models import Dataset, ItemStatus, ModelVersion

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- shared with the API ------------------------------------------------------------------------


def stored_file_download(version: ModelVersion) -> FileResponse:
    """The version's file as an attachment (never inline), named after the asset."""
    name = version.file.name
    if not name:
        raise Http404("This version has no file (it was refused, or is still being built).")
    ext = Path(name).suffix
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in version.asset.name)[:80]
    label = f"-{version.label}" if version.label else ""
    response = FileResponse(
        default_storage.open(name, "rb"),
        as_attachment=True,
        filename=f"{stem or 'model'}-v{version.number}{label}{ext}",
        content_type="application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


def thumbnail_response(dataset: Dataset, class_index: int, n: int) -> HttpResponse:
    """One thumbnail, as the PNG the worker wrote (checked again; never the raw upload)."""
    thumbs = list(dataset.thumbnails.values())
    if not 0 <= class_index < len(thumbs) or not 0 <= n < len(thumbs[class_index]):
        raise Http404("No such thumbnail.")
    name = thumbs[class_index][n]
    expected_prefix = f"catalog/{dataset.organization_id}/thumbs/{dataset.pk}/"
    if not name.startswith(expected_prefix):
        raise Http404("No such thumbnail.")
    try:
        with default_storage.open(name, "rb") as fh:
            data = fh.read(2 * 1024 * 1024)
    except (FileNotFoundError, OSError) as exc:
        raise Http404("No such thumbnail.") from exc
    if not data.startswith(PNG_MAGIC):
        raise Http404("No such thumbnail.")
    response = HttpResponse(data, content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = 'inline; filename="thumbnail.png"'
    response["Cache-Control"] = "private, max-age=3600"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def request_body_too_large(request: HttpRequest) -> CatalogInputError | None:
    """Refuse an over-limit single-request upload from its Content-Length, before the body is
    read (and spooled to a temp file) at all."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return CatalogInputError("Content-Length is not a number.")
    limit = services.max_upload_bytes()
    # Multipart framing and the other fields add a little; 64 KiB of slack is plenty.
    if length > limit + 64 * 1024:
        return UploadTooLarge(
            f"The request is {length} bytes, over the upload limit of {limit} bytes. "
            "Files this large must also be under the limit when sent in chunks.",
            field="file",
            limit=limit,
        )
    return None


def _show_error(form: forms.Form, exc: CatalogInputError) -> bool:
    """Put a service's refusal beside the field it names; False when no field of the form
    (other than the file, whose errors show in the drop zone) is named."""
    if exc.field and exc.field in form.fields and exc.field != "file":
        form.add_error(exc.field, exc.message)
        return True
    return False


# --- models -------------------------------------------------------------------------------------


@org_page(WRITE)
def model_list(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    services.builtin_samples_ensure(organization=org)
    form = ModelUploadForm()
    status_code, upload_error = 200, ""
    if request.method == "POST":
        too_large = request_body_too_large(request)
        if too_large is not None:
            upload_error = too_large.message
            status_code = too_large.status_code
        elif (form := ModelUploadForm(request.POST, request.FILES)).is_valid():
            data = form.cleaned_data
            try:
                version = services.model_upload_create(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    name=data["name"],
                    uploaded_file=data["file"],
                    arch=data["arch"] or None,
                    num_classes=data["num_classes"],
                    in_channels=data["in_channels"],
                    input_size=data["input_size"],
                    normalization=data["normalization"] or None,
                )
            except CatalogInputError as exc:
                upload_error = "" if _show_error(form, exc) else exc.message
                status_code = exc.status_code
            else:
                messages.success(request, f"{version} uploaded; it is being inspected.")
                return redirect("catalog:model_version_detail", pk=version.pk)
        else:
            status_code = 400
    versions = selectors.model_version_list(organization=org)
    return render(
        request,
        "catalog/model_list.html",
        {
            "versions": versions,
            "form": form,
            "upload_error": upload_error,
            "max_upload_bytes": services.max_upload_bytes(),
            "can_write": can_write(request),
        },
        status=status_code,
    )


def zoo_dataset_choices(organization: object) -> list[tuple[int, str]]:
    """The organisation's ready data sets, labelled with their task and class count."""
    rows = selectors.dataset_list(organization=organization, status=ItemStatus.READY)  # type: ignore[arg-type]
    return [
        (d.pk, f"{d.name} ({d.get_task_display().lower()}, {d.num_classes or '?'} classes)")
        for d in rows
    ]


@org_page(WRITE)
def model_zoo_create(request: HttpRequest) -> HttpResponse:
    """A new, untrained model from the zoo, sized for a data set; a job trains it first."""
    org = request.organization  # type: ignore[attr-defined]
    services.builtin_samples_ensure(organization=org)
    choices = zoo_dataset_choices(org)
    form = ZooModelForm(initial={"arch": "yolov3_tiny"}, datasets=choices)
    status_code, error = 200, ""
    if request.method == "POST":
        form = ZooModelForm(request.POST, datasets=choices)
        if form.is_valid():
            data = form.cleaned_data
            dataset = None
            if data["dataset"] is not None:
                dataset = selectors.dataset_get(organization=org, pk=data["dataset"])
            try:
                version = services.zoo_model_create(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    arch=data["arch"],
                    dataset=dataset,
                    num_classes=data["num_classes"],
                    in_channels=data["in_channels"],
                    input_size=data["input_size"],
                    options={"width": data["width"]} if data["width"] is not None else None,
                    name=data["name"],
                )
            except CatalogInputError as exc:
                error = "" if _show_error(form, exc) else exc.message
                status_code = exc.status_code
            else:
                messages.success(
                    request,
                    f"{version} created (untrained): the wizard trains it with a finetune "
                    "stage first.",
                )
                return redirect("catalog:model_version_detail", pk=version.pk)
        else:
            status_code = 400
    return render(
        request,
        "catalog/model_zoo_create.html",
        {"form": form, "error": error, "architectures": services.zoo_architectures()},
        status=status_code,
    )


@org_page(READ)
@require_GET
def model_version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    version = selectors.model_version_get(organization=org, pk=pk)
    context = {
        "version": version,
        "deploy_reason": device_versions.deploy_refusal_reason(version),
        "device_rows": device_versions.on_device_results_for_model_version(
            organization=org, model_version=version
        ),
        "preprocessing": selectors.model_version_preprocessing_view(version=version),
        "lineage": selectors.model_version_lineage(version=version),
        "children": selectors.model_version_children(version=version),
        "can_write": can_write(request),
        "pending": version.status == ItemStatus.PENDING,
    }
    if getattr(request, "htmx", False):
        return render(request, "catalog/_model_version_body.html", context)
    return render(request, "catalog/model_version_detail.html", context)


@org_page(READ)
@require_GET
def model_version_download(request: HttpRequest, pk: int) -> FileResponse:
    version = selectors.model_version_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return stored_file_download(version)


@org_page(WRITE)
@require_POST
def model_version_delete(request: HttpRequest, pk: int) -> HttpResponse:
    version = selectors.model_version_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    label = str(version)
    try:
        services.model_version_delete(version=version)
    except CatalogInputError as exc:
        messages.error(request, exc.message)
        return redirect("catalog:model_version_detail", pk=pk)
    messages.success(request, f"{label} deleted.")
    return redirect("models")


# --- datasets -----------------------------------------------------------------------------------


@org_page(WRITE)
def dataset_list(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    services.builtin_samples_ensure(organization=org)
    form = DatasetUploadForm()
    status_code, upload_error = 200, ""
    if request.method == "POST":
        too_large = request_body_too_large(request)
        if too_large is not None:
            upload_error = too_large.message
            status_code = too_large.status_code
        elif (form := DatasetUploadForm(request.POST, request.FILES)).is_valid():
            try:
                dataset = services.dataset_upload_create(
                    organization=org,
                    user=request.user,  # type: ignore[arg-type]
                    name=form.cleaned_data["name"],
                    uploaded_file=form.cleaned_data["file"],
                    split_seed=form.cleaned_data["split_seed"],
                    task=form.cleaned_data.get("task"),
                )
            except CatalogInputError as exc:
                upload_error = "" if _show_error(form, exc) else exc.message
                status_code = exc.status_code
            else:
                messages.success(request, f"{dataset} uploaded; it is being checked.")
                return redirect("catalog:dataset_detail", pk=dataset.pk)
        else:
            status_code = 400
    return render(
        request,
        "catalog/dataset_list.html",
        {
            "datasets": selectors.dataset_list(organization=org),
            "form": form,
            "upload_error": upload_error,
            "max_upload_bytes": services.max_upload_bytes(),
            "can_write": can_write(request),
        },
        status=status_code,
    )


@org_page(READ)
@require_GET
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = selectors.dataset_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    report = dataset.report or {}
    counts = report.get("counts", {})
    classes = report.get("classes", [])
    # The thumbnail URL indexes the stored mapping, whose keys PostgreSQL's jsonb keeps in its
    # own order (shorter first), not in class order.
    positions = {name: i for i, name in enumerate(dataset.thumbnails)}
    rows = [
        {
            "index": positions.get(name),
            "name": name,
            "train": counts.get("train", {}).get(name, 0),
            "val": counts.get("val", {}).get(name, 0),
            "test": counts.get("test", {}).get(name),
            "thumbs": range(len(dataset.thumbnails.get(name, []))),
        }
        for name in classes
    ]
    context = {
        "dataset": dataset,
        "report": report,
        "splits": selectors.dataset_splits(dataset=dataset),
        "rows": rows,
        "can_write": can_write(request),
        "pending": dataset.status == ItemStatus.PENDING,
    }
    if getattr(request, "htmx", False):
        return render(request, "catalog/_dataset_body.html", context)
    return render(request, "catalog/dataset_detail.html", context)


@org_page(READ)
@require_GET
def dataset_thumbnail(request: HttpRequest, pk: int, class_index: int, n: int) -> HttpResponse:
    dataset = selectors.dataset_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    return thumbnail_response(dataset, class_index, n)


@org_page(WRITE)
@require_POST
def dataset_delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = selectors.dataset_get(organization=request.organization, pk=pk)  # type: ignore[attr-defined]
    name = dataset.name
    try:
        services.dataset_delete(dataset=dataset)
    except CatalogInputError as exc:
        messages.error(request, exc.message)
        return redirect("catalog:dataset_detail", pk=pk)
    messages.success(request, f"{name} deleted.")
    return redirect("datasets")
