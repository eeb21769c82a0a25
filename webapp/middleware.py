"""Project-wide middleware that must run before Django's host and HTTPS checks."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

from webapp.views import healthz

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class HealthCheckMiddleware:
    """Answers ``/healthz`` asked for by a loopback host name, before any other middleware.

    A container's health check runs ``GET http://127.0.0.1:8000/healthz`` inside the container:
    plain HTTP and a host that production's ``ALLOWED_HOSTS`` does not list, so Django would
    answer it with an HTTPS redirect or a 400. Only this path and only loopback host names are let
    through; the answer is the same JSON ``/healthz`` gives everyone and reveals no host-dependent
    content. ``/healthz`` with a listed host (a load balancer's probe) goes through the stack as
    usual; ``SECURE_REDIRECT_EXEMPT`` keeps it on plain HTTP.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz" and request.method in {"GET", "HEAD"}:
            domain, _port = split_domain_port(request.META.get("HTTP_HOST", ""))
            if domain in LOOPBACK_HOSTS:
                return healthz(request)
        return self.get_response(request)
