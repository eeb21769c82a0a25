"""REST endpoints for jobs: create (validated before it is queued), list, status, cancel,
duplicate, events (resume after a seq), the report and artifact downloads.

Every lookup is scoped to the caller's organisation: another organisation's job answers 404.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpResponse
from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compression.registry import config_json_schema, list_methods
from webapp.accounts.permissions import api_organization
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs import selectors, services
from webapp.jobs.downloads import artifact_response
from webapp.jobs.errors import JobInputError
from webapp.jobs.models import Job, JobEvent


def _error(exc: JobInputError) -> Response:
    return Response(exc.as_dict(), status=exc.status_code)


class JobSerializer(serializers.ModelSerializer[Job]):
    model_version = serializers.IntegerField(source="model_version_id", read_only=True)
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    duplicated_from = serializers.IntegerField(
        source="duplicated_from_id", read_only=True, allow_null=True
    )
    url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()
    report_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "name",
            "status",
            "progress",
            "message",
            "error",
            "model_version",
            "dataset",
            "queue",
            "target_device",
            "attempts",
            "max_attempts",
            "completed_stages",
            "stage_count",
            "cancel_requested",
            "event_seq",
            "created_at",
            "started_at",
            "finished_at",
            "duplicated_from",
            "recipe",
            "recipe_yaml",
            "url",
            "page_url",
            "report_url",
        ]
        read_only_fields = fields

    def get_url(self, obj: Job) -> str:
        return reverse("api:jobs-detail", args=[obj.pk])

    def get_page_url(self, obj: Job) -> str:
        return reverse("jobs:detail", args=[obj.pk])

    def get_report_url(self, obj: Job) -> str:
        return reverse("reports:detail", args=[obj.pk])


class JobCreateSerializer(serializers.Serializer[Any]):
    model_version = serializers.IntegerField(help_text="Id of a ready model version.")
    dataset = serializers.IntegerField(help_text="Id of a ready dataset.")
    recipe = serializers.JSONField(
        help_text="The recipe: an object ({stages: [{method, config}], targets, eval, seed}) "
        "or the same as YAML text. Validated against the method registry before queueing."
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    target_device = serializers.CharField(required=False, allow_blank=True, max_length=200)
    queue = serializers.ChoiceField(choices=["auto", "cpu", "gpu"], default="auto")


class JobEventSerializer(serializers.ModelSerializer[JobEvent]):
    class Meta:
        model = JobEvent
        fields = ["seq", "kind", "payload", "ts"]


class ErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    field = serializers.CharField(required=False)


class JobListView(APIView):
    @extend_schema(
        summary="List jobs",
        parameters=[
            OpenApiParameter(
                "status", str, enum=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
            )
        ],
        responses=JobSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        qs = selectors.job_list(
            organization=api_organization(request),
            status=request.query_params.get("status") or None,
        )[:200]
        return Response(JobSerializer(qs, many=True).data)

    @extend_schema(
        summary="Create a job: validate the recipe, then queue it",
        request=JobCreateSerializer,
        responses={201: JobSerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        org = api_organization(request)
        form = JobCreateSerializer(data=request.data)
        if not form.is_valid():
            field, messages = next(iter(form.errors.items()))
            return Response(
                {"detail": f"{field}: {' '.join(str(m) for m in messages)}", "field": field},
                status=status.HTTP_400_BAD_REQUEST,
            )
        data = form.validated_data
        recipe = data["recipe"]
        if not isinstance(recipe, (dict, str)):
            return _error(JobInputError("must be an object or YAML text", field="recipe"))
        try:
            try:
                mv = catalog_selectors.model_version_get(organization=org, pk=data["model_version"])
            except Exception:
                raise JobInputError("no such model version", field="model_version") from None
            try:
                ds = catalog_selectors.dataset_get(organization=org, pk=data["dataset"])
            except Exception:
                raise JobInputError("no such dataset", field="dataset") from None
            job = services.job_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                model_version=mv,
                dataset=ds,
                recipe=recipe,
                name=data.get("name", ""),
                target_device=data.get("target_device", ""),
                queue=data["queue"],
            )
        except JobInputError as exc:
            return _error(exc)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailView(APIView):
    @extend_schema(summary="A job's status and recipe", responses=JobSerializer)
    def get(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        return Response(JobSerializer(job).data)


class JobCancelView(APIView):
    @extend_schema(
        summary="Cancel a job (queued: at once; running: within seconds)",
        request=None,
        responses={200: JobSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        try:
            job = services.job_cancel(job=job, user=request.user)  # type: ignore[arg-type]
        except JobInputError as exc:
            return _error(exc)
        return Response(JobSerializer(job).data)


class JobDuplicateView(APIView):
    @extend_schema(
        summary="Queue a copy of a job (same model, dataset and recipe)",
        request=None,
        responses={201: JobSerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        try:
            copy = services.job_duplicate(job=job, user=request.user)  # type: ignore[arg-type]
        except JobInputError as exc:
            return _error(exc)
        return Response(JobSerializer(copy).data, status=status.HTTP_201_CREATED)


class JobEventListView(APIView):
    @extend_schema(
        summary="A job's persisted events after a seq (poll, or render history before going live)",
        parameters=[
            OpenApiParameter("after", int, description="only events with a larger seq"),
            OpenApiParameter("limit", int, description="at most this many (default 500)"),
        ],
        responses=JobEventSerializer(many=True),
    )
    def get(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        try:
            after = max(0, int(request.query_params.get("after", 0)))
            limit = min(5000, max(1, int(request.query_params.get("limit", 500))))
        except ValueError:
            return Response(
                {"detail": "after and limit must be integers"}, status=status.HTTP_400_BAD_REQUEST
            )
        events = selectors.job_event_list(job=job, after_seq=after, limit=limit)
        return Response(JobEventSerializer(events, many=True).data)


class JobReportView(APIView):
    @extend_schema(
        summary="The job's report (report.json): baseline, each stage, final, targets",
        responses={200: OpenApiTypes.OBJECT, 404: ErrorSerializer},
    )
    def get(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        report = selectors.job_report(job=job)
        if report is None:
            return Response(
                {"detail": f"the job has no report yet ({job.status})"},
                status=status.HTTP_404_NOT_FOUND,
            )
        return Response(report)


class JobArtifactListView(APIView):
    @extend_schema(summary="The job's downloadable files", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, pk: int) -> Response:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        items = selectors.job_artifact_list(job=job)
        for item in items:
            item["url"] = reverse("api:jobs-artifact", args=[job.pk, item["key"]])
        return Response(items)


class JobArtifactDownloadView(APIView):
    @extend_schema(
        summary="Download one artifact: onnx, onnx_int8, report, recipe or checkpoint:<file>",
        operation_id="v1_jobs_artifact_download",
        responses={200: OpenApiTypes.BINARY},
    )
    def get(self, request: Request, pk: int, key: str) -> HttpResponse | FileResponse:
        job = selectors.job_get(organization=api_organization(request), pk=pk)
        return artifact_response(job, key)


class MethodListView(APIView):
    @extend_schema(
        summary="The registered compression methods and their config schemas",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        return Response(
            [
                {
                    "name": m.name,
                    "summary": m.summary,
                    "inputs": sorted(m.scope.inputs),
                    "tasks": sorted(m.scope.tasks),
                    "output": m.scope.output,
                    "config_schema": config_json_schema(m.config_cls),
                }
                for m in list_methods()
            ]
        )


api_urlpatterns = [
    path("jobs/", JobListView.as_view(), name="jobs-list"),
    path("jobs/<int:pk>/", JobDetailView.as_view(), name="jobs-detail"),
    path("jobs/<int:pk>/cancel/", JobCancelView.as_view(), name="jobs-cancel"),
    path("jobs/<int:pk>/duplicate/", JobDuplicateView.as_view(), name="jobs-duplicate"),
    path("jobs/<int:pk>/events/", JobEventListView.as_view(), name="jobs-events"),
    path("jobs/<int:pk>/report/", JobReportView.as_view(), name="jobs-report"),
    path("jobs/<int:pk>/artifacts/", JobArtifactListView.as_view(), name="jobs-artifacts"),
    path(
        "jobs/<int:pk>/artifacts/<str:key>/",
        JobArtifactDownloadView.as_view(),
        name="jobs-artifact",
    ),
    path("methods/", MethodListView.as_view(), name="methods-list"),
]
