"""REST endpoints of the catalog: model versions, datasets, and chunked resumable uploads.

Every lookup is scoped to the caller's organisation (another organisation's id answers 404).
Small files can be posted as multipart; large ones go through ``/uploads/``: create a session,
``PUT`` chunks with ``Content-Range``, ask ``GET`` for the offset to resume, then ``complete``.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.accounts.models import User
from webapp.accounts.permissions import api_organization
from webapp.catalog import selectors, services
from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import Dataset, ModelVersion, Upload
from webapp.catalog.views import (
    request_body_too_large,
    stored_file_download,
    thumbnail_response,
)
from webapp.names import validate_name


def _error(exc: CatalogInputError) -> Response:
    return Response(exc.as_dict(), status=exc.status_code)


# --- serializers ----------------------------------------------------------------------------


class ModelVersionSerializer(serializers.ModelSerializer[ModelVersion]):
    name = serializers.CharField(source="asset.name", read_only=True)
    asset_id = serializers.IntegerField(read_only=True)
    params = serializers.IntegerField(read_only=True, allow_null=True)
    macs = serializers.IntegerField(read_only=True, allow_null=True)
    parent_id = serializers.IntegerField(read_only=True, allow_null=True)
    url = serializers.SerializerMethodField()
    download_url = serializers.SerializerMethodField()
    preprocessing_summary = serializers.SerializerMethodField(
        help_text="The preprocessing record in one line (empty until the record is complete)."
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id", "asset_id", "name", "number", "format", "label", "source_filename", "arch",
            "num_classes", "in_channels", "input_size", "task", "size_bytes", "sha256",
            "status", "error", "params", "macs", "info", "parent_id", "produced_by_job_id",
            "recipe", "preprocessing", "preprocessing_summary", "is_builtin", "created_at",
            "inspected_at", "url", "download_url", "container_size", "container_sha256",
            "container_decoded_size",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, obj: ModelVersion) -> str:
        return reverse("api:catalog-model-detail", args=[obj.pk])

    def get_download_url(self, obj: ModelVersion) -> str | None:
        return reverse("api:catalog-model-download", args=[obj.pk]) if obj.file else None

    def get_preprocessing_summary(self, obj: ModelVersion) -> str:
        summary = selectors.preprocessing_summary(obj.preprocessing)
        return str(summary["line"]) if summary else ""


class DatasetSerializer(serializers.ModelSerializer[Dataset]):
    url = serializers.SerializerMethodField()
    thumbnail_urls = serializers.SerializerMethodField()
    splits = serializers.SerializerMethodField(
        help_text="{train, val, test}: {count, source}; source is folder, carved or fixed. "
        "Reports are scored on test."
    )

    class Meta:
        model = Dataset
        fields = [
            "id", "name", "kind", "task", "source_filename", "size_bytes", "sha256", "num_classes",
            "status", "error", "split_seed", "splits", "report", "is_builtin", "created_at",
            "validated_at", "url", "thumbnail_urls",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, obj: Dataset) -> str:
        return reverse("api:catalog-dataset-detail", args=[obj.pk])

    def get_splits(self, obj: Dataset) -> dict[str, dict[str, Any]]:
        return {
            r["name"]: {"count": r["count"], "source": r["source"] or None}
            for r in selectors.dataset_splits(dataset=obj)["rows"]
        }

    def get_thumbnail_urls(self, obj: Dataset) -> dict[str, list[str]]:
        return {
            name: [
                reverse("catalog:dataset_thumbnail", args=[obj.pk, ci, n])
                for n in range(len(files))
            ]
            for ci, (name, files) in enumerate(obj.thumbnails.items())
        }


class ModelUploadSerializer(serializers.Serializer[Any]):
    file = serializers.FileField()
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=200, validators=[validate_name]
    )
    arch = serializers.CharField(required=False, allow_blank=True, help_text="Zoo architecture.")
    num_classes = serializers.IntegerField(required=False, min_value=1)
    in_channels = serializers.IntegerField(required=False, min_value=1)
    input_size = serializers.IntegerField(required=False, min_value=1)
    description = serializers.CharField(required=False, allow_blank=True)
    normalization = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="dataset (default), imagenet (3-channel models) or unit (plain 0-1 scaling).",
    )


SPLIT_SEED_HELP = "Seeds the val/test carving of a zip without val/ or test/ folders (default 0)."


TASK_HELP = (
    "auto (default): image folders, or detection when the zip's layout is YOLO, Pascal VOC or "
    "COCO; detection: read as one of those, refused otherwise (docs/detection.md)."
)


class DatasetUploadSerializer(serializers.Serializer[Any]):
    file = serializers.FileField()
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=200, validators=[validate_name]
    )
    split_seed = serializers.IntegerField(
        required=False, min_value=0, max_value=2**31 - 1, help_text=SPLIT_SEED_HELP
    )
    task = serializers.ChoiceField(
        choices=["auto", "detection"], required=False, allow_blank=True, help_text=TASK_HELP
    )


class UploadCreateSerializer(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=["model", "dataset"])
    filename = serializers.CharField(max_length=1000)
    size = serializers.IntegerField(min_value=1)
    sha256 = serializers.CharField(required=False, allow_blank=True, max_length=64)
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=200, validators=[validate_name]
    )
    arch = serializers.CharField(required=False, allow_blank=True)
    num_classes = serializers.IntegerField(required=False, min_value=1)
    in_channels = serializers.IntegerField(required=False, min_value=1)
    input_size = serializers.IntegerField(required=False, min_value=1)
    description = serializers.CharField(required=False, allow_blank=True)
    normalization = serializers.CharField(
        required=False, allow_blank=True, help_text="Models: dataset, imagenet or unit."
    )
    split_seed = serializers.IntegerField(
        required=False, min_value=0, max_value=2**31 - 1, help_text=SPLIT_SEED_HELP
    )
    task = serializers.ChoiceField(
        choices=["auto", "detection"],
        required=False,
        allow_blank=True,
        help_text="Datasets: " + TASK_HELP,
    )


class UploadSerializer(serializers.ModelSerializer[Upload]):
    url = serializers.SerializerMethodField()
    model_version_id = serializers.IntegerField(read_only=True, allow_null=True)
    dataset_id = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Upload
        fields = [
            "id", "kind", "filename", "total_size", "received", "status", "expires_at",
            "model_version_id", "dataset_id", "url",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, obj: Upload) -> str:
        return reverse("api:catalog-upload-detail", args=[obj.pk])


class CatalogErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    field = serializers.CharField(required=False)
    received = serializers.IntegerField(required=False)


# --- models ---------------------------------------------------------------------------------


class ModelVersionListView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        summary="List model versions",
        parameters=[OpenApiParameter("status", str, enum=["pending", "ready", "invalid"])],
        responses=ModelVersionSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        org = api_organization(request)
        services.builtin_samples_ensure(organization=org)
        qs = selectors.model_version_list(
            organization=org, status=request.query_params.get("status") or None
        )
        return Response(ModelVersionSerializer(qs, many=True).data)

    @extend_schema(
        summary="Upload a small model file (multipart); large files use /uploads/",
        request={"multipart/form-data": ModelUploadSerializer},
        responses={
            201: ModelVersionSerializer,
            400: CatalogErrorSerializer,
            413: CatalogErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        if (too_large := request_body_too_large(request._request)) is not None:
            return _error(too_large)
        form = ModelUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            version = services.model_upload_create(
                organization=api_organization(request),
                user=request.user,  # type: ignore[arg-type]
                name=data.get("name", ""),
                uploaded_file=data["file"],
                arch=data.get("arch") or None,
                num_classes=data.get("num_classes"),
                in_channels=data.get("in_channels"),
                input_size=data.get("input_size"),
                description=data.get("description", ""),
                normalization=data.get("normalization") or None,
            )
        except CatalogInputError as exc:
            return _error(exc)
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class ModelVersionDetailView(APIView):
    @extend_schema(summary="A model version", responses=ModelVersionSerializer)
    def get(self, request: Request, pk: int) -> Response:
        version = selectors.model_version_get(organization=api_organization(request), pk=pk)
        return Response(ModelVersionSerializer(version).data)

    @extend_schema(summary="Delete a model version and its file", responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        version = selectors.model_version_get(organization=api_organization(request), pk=pk)
        try:
            services.model_version_delete(version=version)
        except CatalogInputError as exc:
            return _error(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionDownloadView(APIView):
    @extend_schema(summary="Download a model version's file", responses={200: OpenApiTypes.BINARY})
    def get(self, request: Request, pk: int) -> FileResponse:
        version = selectors.model_version_get(organization=api_organization(request), pk=pk)
        return stored_file_download(version)


# --- new models from the zoo ---------------------------------------------------------------


class ZooArchitectureSerializer(serializers.Serializer[Any]):
    arch = serializers.CharField()
    task = serializers.CharField()
    options = serializers.ListField(child=serializers.CharField())
    defaults = serializers.DictField()
    input_size = serializers.IntegerField()


class ZooModelCreateSerializer(serializers.Serializer[Any]):
    arch = serializers.CharField(help_text="A zoo architecture (GET /zoo/ lists them).")
    dataset = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="A data set of the architecture's task; its classes size the model.",
    )
    num_classes = serializers.IntegerField(
        required=False, allow_null=True, help_text="Only without a data set."
    )
    options = serializers.DictField(
        required=False,
        help_text='The architecture\'s options, e.g. {"width": 0.25, "input_size": 64} '
        "for a YOLO detector.",
    )
    input_size = serializers.IntegerField(required=False, allow_null=True)
    in_channels = serializers.IntegerField(required=False, allow_null=True)
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=200, validators=[validate_name]
    )
    description = serializers.CharField(required=False, allow_blank=True)


class ZooArchitectureListView(APIView):
    @extend_schema(
        summary="The zoo's architectures, with their task and options",
        parameters=[OpenApiParameter("task", str, enum=["classification", "detection"])],
        responses=ZooArchitectureSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        api_organization(request)
        task = request.query_params.get("task") or None
        if task not in (None, "classification", "detection"):
            return _error(
                CatalogInputError("task must be classification or detection.", field="task")
            )
        return Response(services.zoo_architectures(task))


class ZooModelCreateView(APIView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        summary="A new, untrained model version from the zoo (a job trains it with finetune)",
        request=ZooModelCreateSerializer,
        responses={201: ModelVersionSerializer, 400: CatalogErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        org = api_organization(request)
        form = ZooModelCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        dataset = None
        if data.get("dataset") is not None:
            dataset = selectors.dataset_get(organization=org, pk=data["dataset"])
        try:
            version = services.zoo_model_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                arch=data["arch"],
                dataset=dataset,
                num_classes=data.get("num_classes"),
                options=data.get("options") or None,
                input_size=data.get("input_size"),
                in_channels=data.get("in_channels"),
                name=data.get("name", ""),
                description=data.get("description", ""),
            )
        except CatalogInputError as exc:
            return _error(exc)
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)


# --- datasets -------------------------------------------------------------------------------


class DatasetListView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(summary="List datasets", responses=DatasetSerializer(many=True))
    def get(self, request: Request) -> Response:
        org = api_organization(request)
        services.builtin_samples_ensure(organization=org)
        return Response(DatasetSerializer(selectors.dataset_list(organization=org), many=True).data)

    @extend_schema(
        summary="Upload a small image-folder zip (multipart); large files use /uploads/",
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={
            201: DatasetSerializer,
            400: CatalogErrorSerializer,
            413: CatalogErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        if (too_large := request_body_too_large(request._request)) is not None:
            return _error(too_large)
        form = DatasetUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            dataset = services.dataset_upload_create(
                organization=api_organization(request),
                user=request.user,  # type: ignore[arg-type]
                name=form.validated_data.get("name", ""),
                uploaded_file=form.validated_data["file"],
                split_seed=form.validated_data.get("split_seed"),
                task=form.validated_data.get("task"),
            )
        except CatalogInputError as exc:
            return _error(exc)
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    @extend_schema(summary="A dataset and its report", responses=DatasetSerializer)
    def get(self, request: Request, pk: int) -> Response:
        dataset = selectors.dataset_get(organization=api_organization(request), pk=pk)
        return Response(DatasetSerializer(dataset).data)

    @extend_schema(summary="Delete a dataset", responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        dataset = selectors.dataset_get(organization=api_organization(request), pk=pk)
        try:
            services.dataset_delete(dataset=dataset)
        except CatalogInputError as exc:
            return _error(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetThumbnailView(APIView):
    @extend_schema(summary="A dataset thumbnail (PNG)", responses={200: OpenApiTypes.BINARY})
    def get(self, request: Request, pk: int, class_index: int, n: int) -> Any:
        dataset = selectors.dataset_get(organization=api_organization(request), pk=pk)
        return thumbnail_response(dataset, class_index, n)


# --- chunked uploads ------------------------------------------------------------------------


class UploadCreateView(APIView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        summary="Start a resumable upload (the size and type are checked now)",
        request=UploadCreateSerializer,
        responses={201: UploadSerializer, 400: CatalogErrorSerializer, 413: CatalogErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        form = UploadCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        try:
            upload = services.upload_create(
                organization=api_organization(request),
                user=request.user,  # type: ignore[arg-type]
                kind=data.pop("kind"),
                filename=data.pop("filename"),
                total_size=data.pop("size"),
                sha256=data.pop("sha256", ""),
                params=data,
            )
        except CatalogInputError as exc:
            return _error(exc)
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)


class UploadDetailView(APIView):
    serializer_class = UploadSerializer
    # PUT bodies are raw bytes read from the stream, never parsed.
    parser_classes: list[type] = []

    @extend_schema(
        summary="An upload session: ``received`` is the offset to resume from",
        responses=UploadSerializer,
    )
    def get(self, request: Request, pk: str) -> Response:
        upload = selectors.upload_get(organization=api_organization(request), pk=pk)
        return Response(UploadSerializer(upload).data)

    @extend_schema(
        summary="Append a chunk: body = bytes, header Content-Range: bytes START-END/TOTAL",
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: UploadSerializer, 409: CatalogErrorSerializer, 413: CatalogErrorSerializer},
    )
    def put(self, request: Request, pk: str) -> Response:
        upload = selectors.upload_get(organization=api_organization(request), pk=pk)
        try:
            upload = services.upload_append_chunk(
                upload=upload,
                content_range=request.headers.get("Content-Range"),
                stream=request._request,
            )
        except CatalogInputError as exc:
            return _error(exc)
        return Response(UploadSerializer(upload).data)

    @extend_schema(summary="Abort an upload and remove its bytes", responses={204: None})
    def delete(self, request: Request, pk: str) -> Response:
        upload = selectors.upload_get(organization=api_organization(request), pk=pk)
        services.upload_abort(upload=upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadCompleteView(APIView):
    @extend_schema(
        summary="Finish an upload: creates the model version or dataset",
        request=None,
        responses={
            201: OpenApiTypes.OBJECT,
            400: CatalogErrorSerializer,
            409: CatalogErrorSerializer,
        },
    )
    def post(self, request: Request, pk: str) -> Response:
        upload = selectors.upload_get(organization=api_organization(request), pk=pk)
        user: User = request.user  # type: ignore[assignment]
        try:
            item = services.upload_complete(upload=upload, user=user)
        except CatalogInputError as exc:
            return _error(exc)
        if isinstance(item, ModelVersion):
            body = {"kind": "model", "model_version": ModelVersionSerializer(item).data}
            body["page_url"] = reverse("catalog:model_version_detail", args=[item.pk])
        else:
            body = {"kind": "dataset", "dataset": DatasetSerializer(item).data}
            body["page_url"] = reverse("catalog:dataset_detail", args=[item.pk])
        return Response(body, status=status.HTTP_201_CREATED)


api_urlpatterns = [
    path("models/", ModelVersionListView.as_view(), name="catalog-model-list"),
    path("models/from-zoo/", ZooModelCreateView.as_view(), name="catalog-model-from-zoo"),
    path("zoo/", ZooArchitectureListView.as_view(), name="catalog-zoo-list"),
    path("models/<int:pk>/", ModelVersionDetailView.as_view(), name="catalog-model-detail"),
    path(
        "models/<int:pk>/download/",
        ModelVersionDownloadView.as_view(),
        name="catalog-model-download",
    ),
    path("datasets/", DatasetListView.as_view(), name="catalog-dataset-list"),
    path("datasets/<int:pk>/", DatasetDetailView.as_view(), name="catalog-dataset-detail"),
    path(
        "datasets/<int:pk>/thumbnails/<int:class_index>/<int:n>.png",
        DatasetThumbnailView.as_view(),
        name="catalog-dataset-thumbnail",
    ),
    path("uploads/", UploadCreateView.as_view(), name="catalog-upload-list"),
    path("uploads/<uuid:pk>/", UploadDetailView.as_view(), name="catalog-upload-detail"),
    path(
        "uploads/<uuid:pk>/complete",
        UploadCompleteView.as_view(),
        name="catalog-upload-complete",
    ),
]
