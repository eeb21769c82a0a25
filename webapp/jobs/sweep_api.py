"""REST endpoints for sweeps: create (recipe and grid checked before anything is queued), list,
status with every child, and cancel. Results and the recommendation are in
``webapp/reports/sweep_api.py``. Every lookup is scoped to the caller's organisation."""

from __future__ import annotations

from typing import Any

from django.urls import path, reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compression.sweep import MAX_SWEEP_PARAMS, MAX_SWEEP_POINTS
from webapp.accounts.permissions import api_organization
from webapp.catalog import selectors as catalog_selectors
from webapp.jobs import sweep_selectors, sweep_services
from webapp.jobs.api import ErrorSerializer
from webapp.jobs.errors import JobInputError
from webapp.jobs.models import Job, Sweep


class SweepChildSerializer(serializers.ModelSerializer[Job]):
    values = serializers.JSONField(source="sweep_point", help_text="This point's grid values.")

    class Meta:
        model = Job
        fields = ["id", "name", "status", "progress", "message", "error", "values", "finished_at"]
        read_only_fields = fields


class SweepStateSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(
        choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
    )
    baseline_status = serializers.ChoiceField(choices=["pending", "measuring", "done", "failed"])
    progress = serializers.FloatField(help_text="0..1 over the baseline and every child.")
    message = serializers.CharField()
    error = serializers.CharField()
    counts = serializers.DictField(
        child=serializers.IntegerField(), help_text="Children by status."
    )
    total = serializers.IntegerField()
    finished_at = serializers.DateTimeField(allow_null=True)


class SweepSerializer(serializers.ModelSerializer[Sweep]):
    model_version = serializers.IntegerField(source="model_version_id", read_only=True)
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    state = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()
    results_url = serializers.SerializerMethodField()

    class Meta:
        model = Sweep
        fields = [
            "id", "name", "model_version", "dataset", "queue", "grid", "constraints", "recipe",
            "baseline_status", "created_at", "state", "children", "url", "page_url",
            "results_url",
        ]  # fmt: skip
        read_only_fields = fields

    def _children(self, obj: Sweep) -> list[Job]:
        cache: dict[int, list[Job]] = self.__dict__.setdefault("_children_cache", {})
        if obj.pk not in cache:
            cache[obj.pk] = sweep_selectors.sweep_children(sweep=obj)
        return list(cache[obj.pk])

    @extend_schema_field(SweepStateSerializer)
    def get_state(self, obj: Sweep) -> dict[str, Any]:
        return sweep_selectors.sweep_state(sweep=obj, children=self._children(obj))

    @extend_schema_field(SweepChildSerializer(many=True))
    def get_children(self, obj: Sweep) -> list[dict[str, Any]]:
        return list(SweepChildSerializer(self._children(obj), many=True).data)

    def get_url(self, obj: Sweep) -> str:
        return reverse("api:sweeps-detail", args=[obj.pk])

    def get_page_url(self, obj: Sweep) -> str:
        return reverse("sweeps:detail", args=[obj.pk])

    def get_results_url(self, obj: Sweep) -> str:
        return reverse("api:sweeps-results", args=[obj.pk])


class SweepCreateSerializer(serializers.Serializer[Any]):
    model_version = serializers.IntegerField(help_text="Id of a ready model version.")
    dataset = serializers.IntegerField(help_text="Id of a ready dataset.")
    recipe = serializers.JSONField(
        help_text="The base recipe (object or YAML text), validated against the registry."
    )
    grid = serializers.JSONField(
        help_text=f"Up to {MAX_SWEEP_PARAMS} stage parameters and their values, at most "
        f'{MAX_SWEEP_POINTS} points: {{"target_mac_reduction": [2, 4, 8, 16], '
        '"importance": ["l1", "bn_scale"]}. A parameter two stages share is named '
        "'<stage index>.<param>'. Each must be a parameter of its stage's method."
    )
    constraints = serializers.JSONField(
        required=False,
        help_text="What the recommendation must meet: {max_accuracy_drop (pt), device (a "
        "device name; blank: the host), max_p50_ms, prefer: latency | accuracy | size}.",
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    queue = serializers.ChoiceField(choices=["auto", "cpu", "gpu"], default="auto")


def _error(exc: JobInputError) -> Response:
    return Response(exc.as_dict(), status=exc.status_code)


class SweepListView(APIView):
    @extend_schema(summary="List sweeps", responses=SweepSerializer(many=True))
    def get(self, request: Request) -> Response:
        qs = sweep_selectors.sweep_list(organization=api_organization(request))[:100]
        return Response(SweepSerializer(qs, many=True).data)

    @extend_schema(
        summary="Create a sweep: check the recipe and grid, measure the baseline once, then "
        "queue one child job per grid point",
        request=SweepCreateSerializer,
        responses={201: SweepSerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        org = api_organization(request)
        form = SweepCreateSerializer(data=request.data)
        if not form.is_valid():
            field, messages = next(iter(form.errors.items()))
            return Response(
                {"detail": f"{field}: {' '.join(str(m) for m in messages)}", "field": field},
                status=status.HTTP_400_BAD_REQUEST,
            )
        data = form.validated_data
        if not isinstance(data["recipe"], (dict, str)):
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
            sweep = sweep_services.sweep_create(
                organization=org,
                user=request.user,  # type: ignore[arg-type]
                model_version=mv,
                dataset=ds,
                recipe=data["recipe"],
                grid=data["grid"],
                name=data.get("name", ""),
                constraints=data.get("constraints"),
                queue=data["queue"],
            )
        except JobInputError as exc:
            return _error(exc)
        return Response(SweepSerializer(sweep).data, status=status.HTTP_201_CREATED)


class SweepDetailView(APIView):
    @extend_schema(summary="A sweep's status and its children", responses=SweepSerializer)
    def get(self, request: Request, pk: int) -> Response:
        sweep = sweep_selectors.sweep_get(organization=api_organization(request), pk=pk)
        return Response(SweepSerializer(sweep).data)


class SweepCancelView(APIView):
    @extend_schema(
        summary="Cancel every unfinished child (and the baseline if it is being measured)",
        request=None,
        responses={200: SweepSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        sweep = sweep_selectors.sweep_get(organization=api_organization(request), pk=pk)
        try:
            sweep = sweep_services.sweep_cancel(sweep=sweep, user=request.user)  # type: ignore[arg-type]
        except JobInputError as exc:
            return _error(exc)
        return Response(SweepSerializer(sweep).data)


api_urlpatterns = [
    path("sweeps/", SweepListView.as_view(), name="sweeps-list"),
    path("sweeps/<int:pk>/", SweepDetailView.as_view(), name="sweeps-detail"),
    path("sweeps/<int:pk>/cancel/", SweepCancelView.as_view(), name="sweeps-cancel"),
]
