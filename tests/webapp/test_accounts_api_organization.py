"""The organisation an API call acts in (``webapp.accounts.permissions.api_organization``), the
same for every app's API: a token acts in the user's current organisation, ``X-Organization``
picks another of theirs, and someone else's organisation answers 404. Writers are WRITE_ROLES."""

from __future__ import annotations

import pytest
from django.test import Client
from factories import make_member, make_organization, make_user

from device_registry.services import device_register
from webapp.accounts.models import Role
from webapp.accounts.permissions import WRITE_ROLES
from webapp.accounts.services import api_token_create

pytestmark = pytest.mark.django_db


def _token_client(user, **headers: str) -> Client:  # type: ignore[no-untyped-def]
    _token, key = api_token_create(user=user, name="t")
    return Client(HTTP_AUTHORIZATION=f"Token {key}", **headers)


def test_x_organization_picks_another_of_the_users_organisations_in_every_api():
    user = make_user()
    first = make_organization(owner=user)
    second = make_organization(owner=user)
    device_register(organization=first, name="pi-first")
    device_register(organization=second, name="pi-second")
    stranger_org = make_organization()
    device_register(organization=stranger_org, name="pi-stranger")

    default = _token_client(user).get("/api/v1/devices/")
    assert [d["name"] for d in default.json()] == ["pi-first"]
    chosen = _token_client(user, HTTP_X_ORGANIZATION=str(second.pk)).get("/api/v1/devices/")
    assert [d["name"] for d in chosen.json()] == ["pi-second"]
    # Another organisation's id is not the user's: the current one stays.
    other = _token_client(user, HTTP_X_ORGANIZATION=str(stranger_org.pk)).get("/api/v1/devices/")
    assert [d["name"] for d in other.json()] == ["pi-first"]
    # The catalog and jobs APIs resolve it the same way.
    for url in ("/api/v1/models/", "/api/v1/jobs/"):
        assert _token_client(user, HTTP_X_ORGANIZATION=str(second.pk)).get(url).status_code == 200


def test_a_user_without_an_organisation_gets_404_and_managers_cannot_write():
    lonely = make_user()
    assert _token_client(lonely).get("/api/v1/devices/").status_code == 404
    assert _token_client(lonely).get("/api/v1/models/").status_code == 404

    org = make_organization()
    manager = make_member(org, role=Role.MANAGER)
    answer = _token_client(manager).post(
        "/api/v1/jobs/", {"recipe": "{}"}, content_type="application/json"
    )
    assert answer.status_code == 403
    assert set(WRITE_ROLES) == {Role.ADMIN, Role.ENGINEER}
