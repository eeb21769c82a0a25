"""Project-level pages: the dashboard and its activity feed, the API console, the error pages and
/healthz."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.views.decorators.cache import never_cache
from drf_spectacular.generators import SchemaGenerator

from webapp import dashboard
from webapp.accounts.models import Role
from webapp.accounts.permissions import READ, org_page
from webapp.accounts.selectors import membership_list_for_org

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


# The dashboard's sections, in the order each role reads them: managers look at results first,
# engineers at their jobs and uploads, admins at the same plus members and devices.
ROLE_SECTIONS: dict[str, list[str]] = {
    Role.MANAGER: ["results", "best_versions", "jobs", "devices"],
    Role.ENGINEER: ["jobs", "attention", "best_versions", "devices"],
    Role.ADMIN: ["jobs", "attention", "admin", "devices", "best_versions"],
}


@org_page(READ)
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard of the current organisation, ordered for the user's role."""
    organization = request.organization  # type: ignore[attr-defined]
    membership = request.membership  # type: ignore[attr-defined]
    role = membership.role if membership is not None else Role.ENGINEER
    devices = dashboard.fleet(organization=organization)
    jobs = dashboard.recent_jobs(organization=organization)
    context = {
        "role": role,
        "sections": ROLE_SECTIONS.get(role, ROLE_SECTIONS[Role.ENGINEER]),
        "jobs": jobs,
        "finished_jobs": [row for row in jobs if row.job.status == "SUCCEEDED"],
        "job_counts": dashboard.job_counts(organization=organization),
        "best_versions": dashboard.best_versions(organization=organization),
        "fleet": devices,
        "attention": dashboard.attention_items(organization=organization, offline=devices.offline),
        "activity": dashboard.activity_feed(organization=organization),
        "member_count": membership_list_for_org(organization=organization).count(),
        # "Get started" only until the organisation has run its first job.
        "quick_links": QUICK_LINKS if not jobs else [],
    }
    return render(request, "home.html", context)


@org_page(READ)
def activity(request: HttpRequest) -> HttpResponse:
    """The newest activity rows (``dashboard/_activity.html``), re-read by js/live.js when an
    event arrives, for the live panel to swap in."""
    rows = dashboard.activity_feed(organization=request.organization)  # type: ignore[attr-defined]
    return render(request, "dashboard/_activity.html", {"activity": rows})


def api_docs(request: HttpRequest) -> HttpResponse:
    """The interactive API console (Swagger UI from the sidecar package, no CDN) and, for
    browsers without JavaScript, the list of endpoints generated from the OpenAPI schema."""
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


def too_many_requests(
    request: HttpRequest, *, message: str = "", retry_after_s: int | None = None
) -> HttpResponse:
    """The styled 429 page (``429.html``), with ``Retry-After`` when the wait is known.

    For HTML views that throttle; API views answer JSON ``{detail}`` instead.
    """
    response = render(
        request, "429.html", {"message": message, "retry_after_s": retry_after_s}, status=429
    )
    if retry_after_s is not None:
        response["Retry-After"] = str(int(retry_after_s))
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: the styled page with the navigation when the request context still
    renders, else the same template without it (the error may be in a context processor)."""
    try:
        return render(request, "500.html", status=500)
    except Exception:
        logger.exception("500 page: rendering with the request context failed")
        return HttpResponse(loader.get_template("500.html").render({}), status=500)
