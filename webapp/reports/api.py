"""REST endpoint of the comparison: the same data as the page and its JSON export.

Every lookup is scoped to the caller's organisation: another organisation's version or job
answers 404. Any member may read it.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.accounts.permissions import api_organization
from webapp.reports.comparison import (
    MAX_COMPARE_VERSIONS,
    ComparisonInputError,
    comparison_from_query,
)
from webapp.reports.fleet import fleet_build
from webapp.reports.lineage import MAX_LINEAGE_VERSIONS, LineageTooLarge, lineage_build


class CompareErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()


class CompareCellSerializer(serializers.Serializer[Any]):
    value = serializers.FloatField(allow_null=True, help_text="The figure, in the column's unit.")
    spread = serializers.FloatField(
        allow_null=True,
        help_text="accuracy: standard deviation across seeds of the same recipe (n seeds); "
        "host_p50_ms: interquartile range of the round medians (n rounds); else null.",
    )
    n = serializers.IntegerField(allow_null=True, help_text="Seeds or rounds behind the spread.")
    note = serializers.CharField(help_text="What the figure is, where it needs saying.")
    delta = serializers.FloatField(
        allow_null=True,
        help_text="Against the baseline: value / baseline (ratio columns) or value - baseline "
        "(points columns); null when either is blank.",
    )
    best = serializers.BooleanField(help_text="The best value of its column (ties all marked).")
    blank_reason = serializers.CharField(help_text="Why the value is blank ('' when it is not).")


class CompareColumnSerializer(serializers.Serializer[Any]):
    key = serializers.CharField(help_text="params, macs, size_bytes, compressed_bytes, accuracy, "
                                "host_p50_ms, host_p90_ms, or device:<id>:p50_ms|p90_ms|top1_pct; "
                                "a detection comparison adds map50_95 and host_e2e_p50_ms, and "
                                "its device columns end in map50_pct instead of top1_pct")  # fmt: skip
    label = serializers.CharField()  # type: ignore[assignment]
    unit = serializers.CharField(help_text="'', bytes, %, ms")
    better = serializers.ChoiceField(choices=["lower", "higher"])
    delta = serializers.ChoiceField(choices=["ratio", "points"])
    device = serializers.IntegerField(allow_null=True)


class CompareRowSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField(help_text="The model's name.")
    number = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]
    title = serializers.CharField()
    format = serializers.CharField()
    task = serializers.CharField(help_text="classification or detection.")
    metric = serializers.CharField(
        help_text="What its accuracy is: top-1 (a classifier) or mAP@0.5 (a detector)."
    )
    parent = serializers.IntegerField(allow_null=True)  # type: ignore[assignment]
    job = serializers.IntegerField(allow_null=True, help_text="The job that produced it.")
    is_baseline = serializers.BooleanField()
    host_job = serializers.IntegerField(
        allow_null=True, help_text="The job whose report gave the host figures."
    )
    cells = serializers.DictField(child=CompareCellSerializer(), help_text="By column key.")


class CompareDeviceSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class ComparisonSerializer(serializers.Serializer[Any]):
    baseline = serializers.IntegerField()
    versions = serializers.ListField(child=serializers.IntegerField())
    max_versions = serializers.IntegerField()
    accuracy_split = serializers.CharField(help_text="The test split accuracies are compared on.")
    task = serializers.CharField(
        help_text="The baseline's task (classification or detection): whose metric the "
        "accuracy column holds."
    )
    metric = serializers.CharField(
        help_text="The accuracy column's metric: top-1, or mAP@0.5 (percent) for detection."
    )
    mixed_tasks = serializers.CharField(
        help_text="When detectors and classifiers are compared together, why the other task's "
        "accuracy is blank; '' otherwise."
    )
    devices = CompareDeviceSerializer(many=True)
    columns = CompareColumnSerializer(many=True)
    rows = CompareRowSerializer(many=True)
    pareto = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="Version ids on the Pareto front of test accuracy against host (host p50), "
        "size (file size) and device:<id> (that device's p50), cheapest first.",
    )


class CompareView(APIView):
    @extend_schema(
        summary="Compare model versions: host and on-device figures, deltas, Pareto fronts",
        description=f"Give one of `versions`, `family` or `job`; at most {MAX_COMPARE_VERSIONS} "
        "versions. Fields are documented in docs/reports.md.",
        parameters=[
            OpenApiParameter(
                "versions", OpenApiTypes.STR, description="Version ids, comma separated."
            ),
            OpenApiParameter(
                "family",
                OpenApiTypes.INT,
                description="A version: it and every version derived from it.",
            ),
            OpenApiParameter(
                "job",
                OpenApiTypes.INT,
                description="A job: the version it started from and those it produced.",
            ),
            OpenApiParameter(
                "baseline",
                OpenApiTypes.INT,
                description="One of the versions (default: the family root, the job's input, else the oldest).",
            ),
        ],
        responses={
            200: ComparisonSerializer,
            400: CompareErrorSerializer,
            404: CompareErrorSerializer,
        },
    )
    def get(self, request: Request) -> Response:
        q = request.query_params
        try:
            comparison = comparison_from_query(
                organization=api_organization(request),
                versions=q.getlist("versions"),
                family=q.get("family", ""),
                job=q.get("job", ""),
                baseline=q.get("baseline", ""),
            )
        except ComparisonInputError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(comparison)


class LatencySerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField(allow_null=True, help_text="Timed runs (runs x rounds).")
    mean_ms = serializers.FloatField(allow_null=True)
    stdev_ms = serializers.FloatField(allow_null=True, help_text="Of the single timed runs.")
    p50_ms = serializers.FloatField(allow_null=True)
    p90_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True, help_text="Null below 100 timed runs.")


class FleetDeviceSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    hardware = serializers.CharField()


class FleetRowSerializer(serializers.Serializer[Any]):
    device = FleetDeviceSerializer()
    cpu = serializers.CharField()
    isa = serializers.CharField(
        help_text="The CPU's vector and int8 instruction sets the agent found, e.g. \"avx2 avx512f "
        'avx512_vnni" or "asimd asimddp"; "" when the agent did not say.'
    )
    cores = serializers.IntegerField(allow_null=True)
    os = serializers.CharField()
    arch = serializers.CharField()
    runtime = serializers.CharField(help_text='e.g. "onnxruntime 1.20.1".')
    provider = serializers.CharField(
        help_text='The execution provider, e.g. "CPUExecutionProvider".'
    )
    batch_size = serializers.IntegerField(allow_null=True)
    threads = serializers.IntegerField(allow_null=True)
    latency = LatencySerializer()
    throughput = serializers.FloatField(allow_null=True, help_text="Samples per second.")
    peak_mem_mb = serializers.FloatField(allow_null=True, help_text="Peak resident memory, MB.")
    load_time_ms = serializers.FloatField(allow_null=True)
    top1_pct = serializers.FloatField(allow_null=True)
    eval_samples = serializers.IntegerField(allow_null=True)
    eval_set = serializers.CharField(help_text="What the accuracy was measured on.")
    deployment = serializers.IntegerField(allow_null=True, help_text="Whose latency this is.")
    accuracy_deployment = serializers.IntegerField(allow_null=True)
    measured_at = serializers.DateTimeField(allow_null=True)
    op_profile_ms = serializers.DictField(
        child=serializers.FloatField(), help_text="Op type to ms per inference, costliest first."
    )
    map50_pct = serializers.FloatField(
        allow_null=True, help_text="A detector's mAP@0.5 on the device, percent; else null."
    )
    map50_95_pct = serializers.FloatField(allow_null=True, help_text="mAP@0.5:0.95, percent.")
    e2e_p50_ms = serializers.FloatField(
        allow_null=True, help_text="A detector's p50 end to end (network + decode + NMS)."
    )
    e2e_p90_ms = serializers.FloatField(allow_null=True)
    fps = serializers.FloatField(allow_null=True, help_text="A detector's FPS, network alone.")
    fps_e2e = serializers.FloatField(allow_null=True, help_text="A detector's FPS end to end.")


class VersionSummarySerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    title = serializers.CharField()
    name = serializers.CharField()
    number = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]
    format = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    parent = serializers.IntegerField(allow_null=True)  # type: ignore[assignment]
    job = serializers.IntegerField(allow_null=True, help_text="The job that produced it.")


class FleetSerializer(serializers.Serializer[Any]):
    version = VersionSummarySerializer()
    task = serializers.CharField(help_text="The version's task: classification or detection.")
    devices = serializers.IntegerField(help_text="How many devices ran it (rows).")
    rows = FleetRowSerializer(many=True)
    op_types = serializers.ListField(
        child=serializers.CharField(),
        help_text="Profiled op types, costliest over all devices first.",
    )


class FleetView(APIView):
    @extend_schema(
        summary="A model version across the fleet: one row per device that ran it",
        description="Each device's newest deployment at its smallest batch size, its newest "
        "accuracy, its facts and per-operator profile. Fields in docs/reports.md.",
        responses={200: FleetSerializer, 404: CompareErrorSerializer},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(fleet_build(organization=api_organization(request), version_id=pk))


class LineageJobSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()


class LineageRecipeSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    methods = serializers.ListField(child=serializers.CharField())


class LineageDeviceSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    p50_ms = serializers.FloatField(allow_null=True)
    p90_ms = serializers.FloatField(allow_null=True)
    top1_pct = serializers.FloatField(allow_null=True)
    map50_pct = serializers.FloatField(
        allow_null=True, help_text="A detector's mAP@0.5 on the device, percent; else null."
    )


class LineageNodeSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    title = serializers.CharField()
    name = serializers.CharField()
    number = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]
    format = serializers.CharField()
    status = serializers.CharField()
    task = serializers.CharField(help_text="classification or detection.")
    metric = serializers.CharField(
        help_text="What its accuracy is: top-1 (a classifier) or mAP@0.5 (a detector)."
    )
    parent = serializers.IntegerField(allow_null=True)  # type: ignore[assignment]
    children = serializers.ListField(child=serializers.IntegerField())
    depth = serializers.IntegerField(help_text="Generations below the root.")
    size_bytes = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    job = LineageJobSerializer(allow_null=True, help_text="The job that produced it.")
    recipe = LineageRecipeSerializer(allow_null=True, help_text="The recipe that job ran.")
    devices = LineageDeviceSerializer(many=True)
    x = serializers.IntegerField(help_text="The page's tree layout (pixels).")
    y = serializers.IntegerField()


class LineageSerializer(serializers.Serializer[Any]):
    root = serializers.IntegerField(help_text="The first version of the family.")  # type: ignore[assignment]
    focus = serializers.IntegerField(help_text="The version asked for.")
    devices = CompareDeviceSerializer(many=True)
    versions = LineageNodeSerializer(many=True)
    width = serializers.IntegerField()
    height = serializers.IntegerField()


class LineageView(APIView):
    @extend_schema(
        summary="A model's family tree: every version, the job and recipe that made it, "
        "its parent and its device results",
        description="The family of the version: its root and everything derived from it, "
        f"at most {MAX_LINEAGE_VERSIONS} versions. Fields in docs/reports.md.",
        responses={
            200: LineageSerializer,
            400: CompareErrorSerializer,
            404: CompareErrorSerializer,
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        try:
            data = lineage_build(organization=api_organization(request), version_id=pk)
        except LineageTooLarge as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(data)


api_urlpatterns = [
    path("reports/compare/", CompareView.as_view(), name="reports-compare"),
    path("reports/versions/<int:pk>/fleet/", FleetView.as_view(), name="reports-fleet"),
    path("reports/versions/<int:pk>/lineage/", LineageView.as_view(), name="reports-lineage"),
]
