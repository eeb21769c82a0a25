"""REST endpoints for layer sensitivity: start an analysis, list, read one (with its result),
and turn a finished one into a channel_pruning stage for a tolerance. Org-scoped: another
organisation's analysis answers 404."""

from __future__ import annotations

from typing import Any

from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compression.sensitivity import DEFAULT_RATIOS, IMPORTANCES
from webapp.accounts.permissions import api_organization
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs.errors import JobInputError
from webapp.sensitivity import selectors, services
from webapp.sensitivity.models import SensitivityAnalysis


class AnalysisSerializer(serializers.ModelSerializer[SensitivityAnalysis]):
    model_version = serializers.IntegerField(source="model_version_id", read_only=True)
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = SensitivityAnalysis
        fields = [
            "id",
            "status",
            "progress",
            "message",
            "error",
            "model_version",
            "dataset",
            "ratios",
            "importance",
            "round_to",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "result",
            "url",
            "page_url",
        ]
        read_only_fields = fields

    def get_url(self, obj: SensitivityAnalysis) -> str:
        return reverse("api:sensitivity-detail", args=[obj.pk])

    def get_page_url(self, obj: SensitivityAnalysis) -> str:
        return reverse("sensitivity:detail", args=[obj.pk])


class AnalysisCreateSerializer(serializers.Serializer[Any]):
    model_version = serializers.IntegerField(help_text="Id of a ready PyTorch model version.")
    dataset = serializers.IntegerField(help_text="Id of a ready dataset (its val split is used).")
    ratios = serializers.JSONField(
        required=False,
        help_text="Fractions of each layer's channels to remove (default [0.25, 0.5, 0.75]).",
    )
    importance = serializers.ChoiceField(choices=list(IMPORTANCES), default="l1")
    round_to = serializers.IntegerField(default=1, min_value=1, max_value=64)


class StageRequestSerializer(serializers.Serializer[Any]):
    max_drop = serializers.FloatField(
        min_value=0.0, max_value=100.0, help_text="Allowed val accuracy drop per layer, in points."
    )


def _bad(field: str, messages: Any) -> Response:
    text = " ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
    return Response(
        {"detail": f"{field}: {text}", "field": field}, status=status.HTTP_400_BAD_REQUEST
    )


def _error(exc: JobInputError) -> Response:
    return Response(exc.as_dict(), status=exc.status_code)


class AnalysisListView(APIView):
    @extend_schema(
        summary="List layer sensitivity analyses", responses=AnalysisSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        qs = selectors.analysis_list(organization=api_organization(request))[:200]
        return Response(AnalysisSerializer(qs, many=True).data)

    @extend_schema(
        summary="Start a layer sensitivity analysis (prune each layer alone, measure val accuracy)",
        request=AnalysisCreateSerializer,
        responses={201: AnalysisSerializer},
    )
    def post(self, request: Request) -> Response:
        org = api_organization(request)
        form = AnalysisCreateSerializer(data=request.data)
        if not form.is_valid():
            field, messages = next(iter(form.errors.items()))
            return _bad(field, messages)
        data = form.validated_data
        try:
            try:
                mv = catalog_selectors.model_version_get(organization=org, pk=data["model_version"])
            except Exception:
                raise JobInputError("no such model version", field="model_version") from None
            try:
                ds = catalog_selectors.dataset_get(organization=org, pk=data["dataset"])
            except Exception:
                raise JobInputError("no such dataset", field="dataset") from None
            analysis = services.analysis_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                model_version=mv,
                dataset=ds,
                ratios=data.get("ratios", list(DEFAULT_RATIOS)),
                importance=data["importance"],
                round_to=data["round_to"],
            )
        except JobInputError as exc:
            return _error(exc)
        return Response(AnalysisSerializer(analysis).data, status=status.HTTP_201_CREATED)


class AnalysisDetailView(APIView):
    @extend_schema(
        summary="A sensitivity analysis, with its result when finished",
        responses=AnalysisSerializer,
    )
    def get(self, request: Request, pk: int) -> Response:
        analysis = selectors.analysis_get(organization=api_organization(request), pk=pk)
        return Response(AnalysisSerializer(analysis).data)


class AnalysisStageView(APIView):
    @extend_schema(
        summary="A channel_pruning stage with per-layer ratios within an accuracy-drop tolerance",
        request=StageRequestSerializer,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request, pk: int) -> Response:
        analysis = selectors.analysis_get(organization=api_organization(request), pk=pk)
        form = StageRequestSerializer(data=request.data)
        if not form.is_valid():
            field, messages = next(iter(form.errors.items()))
            return _bad(field, messages)
        try:
            stage = services.analysis_stage(
                analysis=analysis, max_drop=form.validated_data["max_drop"]
            )
        except JobInputError as exc:
            return _error(exc)
        return Response(stage)


api_urlpatterns = [
    path("sensitivity/", AnalysisListView.as_view(), name="sensitivity-list"),
    path("sensitivity/<int:pk>/", AnalysisDetailView.as_view(), name="sensitivity-detail"),
    path("sensitivity/<int:pk>/stage/", AnalysisStageView.as_view(), name="sensitivity-stage"),
]
