"""Project-level pages: the dashboard, the API docs page and /healthz."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from drf_spectacular.generators import SchemaGenerator

from webapp.accounts.permissions import org_required

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickLink:
    url_name: str
    title: str
    blurb: str


QUICK_LINKS = [
    QuickLink(
        "models",
        "Models",
        "Upload safetensors weights for a zoo architecture or an ONNX file; each upload is "
        "inspected in a separate process and kept as a version.",
    ),
    QuickLink(
        "datasets",
        "Datasets",
        "Calibration and evaluation data: image folders or zip archives, checked before "
        "anything is unpacked.",
    ),
    QuickLink(
        "jobs",
        "Jobs",
        "Build a recipe in the wizard — pruning, distillation, quantisation, decomposition — "
        "and watch it run stage by stage.",
    ),
    QuickLink(
        "devices",
        "Devices",
        "Register Raspberry Pis, Jetsons, phones and x86 boxes; their agent benchmarks "
        "artifacts with ONNX Runtime.",
    ),
    QuickLink(
        "reports",
        "Reports",
        "Size, accuracy and on-device latency side by side, across jobs and devices.",
    ),
]


@org_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"quick_links": QUICK_LINKS})


def api_docs(request: HttpRequest) -> HttpResponse:
    """A plain list of the API's endpoints, generated from the OpenAPI schema (no CDN)."""
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]
    schema = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
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
