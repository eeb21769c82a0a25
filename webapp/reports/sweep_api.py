"""REST endpoint of a sweep's results: each point's numbers, the Pareto fronts and the
recommendation under the constraints (the stored ones, overridden by the query). The same data
as the sweep page; any member may read it."""

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
from webapp.jobs import sweep_selectors
from webapp.reports.sweeps import ConstraintsError, sweep_results


class SweepResultsErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()


class SweepResultsView(APIView):
    @extend_schema(
        summary="A sweep's points, Pareto fronts and the recommended version under constraints",
        description="Keys: sweep, name, state, grid, baseline {version, status, accuracy, "
        "host_p50_ms}, constraints, devices, points [{job, status, progress, values, label, "
        "version, accuracy, accuracy_drop, host_p50_ms, size_bytes, macs, on_device_p50_ms}], "
        "pareto {host, size, device:<id>: [version ids]}, recommendation {choice (version id "
        "or null), job, summary, constraints, eligible, excluded {version id: [reasons]}}, "
        "figures (Plotly). See docs/reports.md.",
        parameters=[
            OpenApiParameter("max_accuracy_drop", float, description="largest drop allowed (pt)"),
            OpenApiParameter(
                "device", str, description="device name for the latency limit; blank: the host"
            ),
            OpenApiParameter("max_p50_ms", float, description="largest p50 latency allowed (ms)"),
            OpenApiParameter("prefer", str, enum=["latency", "accuracy", "size"]),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: SweepResultsErrorSerializer},
    )
    def get(self, request: Request, pk: int) -> Response:
        sweep = sweep_selectors.sweep_get(organization=api_organization(request), pk=pk)
        try:
            results = sweep_results(sweep=sweep, query=request.query_params)
        except ConstraintsError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        if request.query_params.get("figures") != "1":
            results.pop("figures", None)
        return Response(results)


api_urlpatterns = [
    path("sweeps/<int:pk>/results/", SweepResultsView.as_view(), name="sweeps-results"),
]
