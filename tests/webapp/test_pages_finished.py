"""Error pages look like the product: styled, with the navigation, and DEBUG off."""

from __future__ import annotations

import sys

import pytest
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from factories import client_for, make_organization, make_user

from webapp import urls as project_urls
from webapp.views import too_many_requests

pytestmark = pytest.mark.django_db


def _forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


def _broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def _throttled(request: HttpRequest) -> HttpResponse:
    return too_many_requests(request, message="Slow down.", retry_after_s=90)


# This module doubles as the URLconf: the product's URLs plus three views that fail on purpose.
urlpatterns = [
    path("boom/forbidden/", _forbidden),
    path("boom/broken/", _broken),
    path("boom/throttled/", _throttled),
    *project_urls.urlpatterns,
]
handler500 = project_urls.handler500


@pytest.fixture
def signed_in(settings) -> Client:
    settings.DEBUG = False
    settings.ROOT_URLCONF = sys.modules[__name__]
    user = make_user(username="erin")
    make_organization(name="Errors Inc", owner=user)
    client = client_for(user)
    client.raise_request_exception = False
    return client


@pytest.mark.parametrize(
    ("url", "status", "title"),
    [
        ("/boom/forbidden/", 403, "You can't do that here"),
        ("/jobs/987654321/", 404, "Nothing here"),
        ("/no-such-page/", 404, "Nothing here"),
        ("/boom/throttled/", 429, "Too many requests"),
        ("/boom/broken/", 500, "Something went wrong on our side"),
    ],
)
def test_each_error_page_is_styled_with_the_navigation(signed_in, url, status, title):
    response = signed_in.get(url)
    page = response.content.decode()

    assert response.status_code == status
    assert f'<h1 id="error-title">{title}</h1>' in page
    assert "css/edgeslim.css" in page
    assert '<nav class="nav" aria-label="Main">' in page
    assert 'href="/jobs/"' in page and "Errors Inc" in page
    assert "Traceback" not in page and "boom" not in page


def test_the_429_page_says_the_wait_and_sends_retry_after(signed_in):
    response = signed_in.get("/boom/throttled/")

    assert response["Retry-After"] == "90"
    assert "Slow down. Try again in 90 seconds." in response.content.decode()


def test_a_signed_out_visitor_gets_a_styled_404_with_a_sign_in_link(settings):
    settings.DEBUG = False
    response = Client().get("/no-such-page/")
    page = response.content.decode()

    assert response.status_code == 404
    assert "Nothing here" in page and "css/edgeslim.css" in page
    assert 'href="/accounts/login/"' in page
