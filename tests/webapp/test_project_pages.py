from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from factories import client_for, make_organization

from webapp.accounts.models import Membership

pytestmark = pytest.mark.django_db


def test_healthz_reports_the_database_and_redis():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_healthz_answers_503_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")


def test_the_schema_and_the_docs_page_list_the_api_without_a_cdn():
    schema = Client().get(reverse("api_schema") + "?format=json")
    docs = Client().get(reverse("api_docs")).content.decode()

    assert "/api/v1/me/" in schema.json()["paths"]
    assert "/api/v1/auth/token/" in docs
    assert "cdn" not in docs.lower() and "https://" not in docs


def test_the_dashboard_has_the_nav_live_panel_and_no_plotly():
    org = make_organization(name="Dash Org")
    page = (
        client_for(Membership.objects.get(organization=org).user)
        .get(reverse("home"))
        .content.decode()
    )
    for text in [
        "Models",
        "Datasets",
        "Jobs",
        "Devices",
        "Reports",
        "Activity",
        "js/live.js",
        "htmx",
    ]:
        assert text in page, text
    assert "plotly" not in page
    assert "Send a test event" not in page
