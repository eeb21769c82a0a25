"""Project-level pages: the dashboard, the sections' list pages, API docs and /healthz."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from drf_spectacular.generators import SchemaGenerator

from webapp.accounts.permissions import org_required

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    slug: str
    title: str
    empty_title: str
    empty_text: str
    docs: str


SECTIONS = {
    s.slug: s
    for s in [
        Section(
            "models",
            "Models",
            "No models yet — upload one",
            "Uploaded CNNs appear here with their size, parameter count and MACs. Upload "
            "safetensors weights for a zoo architecture or an ONNX file; pickled modules are "
            "refused.",
            "Every model you upload is inspected in a separate process, then kept as a version.",
        ),
        Section(
            "datasets",
            "Datasets",
            "No datasets yet — add one",
            "Calibration and evaluation datasets appear here: image folders or zip archives, "
            "checked for size and for unsafe entries before anything is unpacked.",
            "A dataset drives accuracy evaluation and quantisation calibration.",
        ),
        Section(
            "jobs",
            "Jobs",
            "No compression jobs yet",
            "Compression jobs appear here with live progress: pruning, distillation, "
            "quantisation, tensor decomposition and weight coding, run stage by stage by the "
            "workers.",
            "Build a recipe in the wizard once a model is uploaded.",
        ),
        Section(
            "devices",
            "Devices",
            "No devices yet — register one",
            "Edge devices (Raspberry Pi, Jetson, phones, x86 boxes) appear here once their "
            "agent has enrolled, with their status and the artifacts deployed to them.",
            "Each device runs a small agent that benchmarks artifacts with ONNX Runtime.",
        ),
        Section(
            "reports",
            "Reports",
            "No reports yet",
            "Reports put size, accuracy and on-device latency side by side, across jobs and "
            "across devices, as soon as a job has finished and a device has benchmarked it.",
            "Reports are drawn from finished jobs and device benchmarks.",
        ),
    ]
}


@org_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"sections": SECTIONS.values()})


@org_required
def section(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        current = SECTIONS[slug]
    except KeyError as exc:
        raise Http404 from exc
    return render(request, "sections/section.html", {"section": current})


def api_docs(request: HttpRequest) -> HttpResponse:
    """A plain list of the API's endpoints, generated from the OpenAPI schema (no CDN)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    endpoints = [
        {
            "method": method.upper(),
            "path": path,
            "summary": op.get("summary") or op.get("description", "").split("\n")[0],
        }
        for path, operations in schema.get("paths", {}).items()
        for method, op in operations.items()
    ]
    return render(request, "api_docs.html", {"endpoints": endpoints})


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Database and Redis reachability, as JSON; 503 when either fails."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        logger.warning("healthz: database check failed: %s", exc)
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except Exception as exc:
        logger.warning("healthz: redis check failed: %s", exc)
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503
    )
