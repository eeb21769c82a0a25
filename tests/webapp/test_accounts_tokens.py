"""API tokens: the page (named, expiring, shown once, revoke), the REST list/revoke, and auth."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from factories import PASSWORD, client_for, make_organization, make_user

from webapp.accounts import services
from webapp.accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def _me(key: str):
    return Client().get(reverse("api:me"), HTTP_AUTHORIZATION=f"Bearer {key}")


def test_the_page_makes_a_named_expiring_token_shown_once_and_lists_it():
    user = make_user(organization=make_organization())
    client = client_for(user)

    created = client.post(reverse("accounts:api_tokens"), {"name": "CI", "expires_in": "30"})

    assert created.status_code == 201
    key = re.search(r'<code id="new-token"[^>]*>(es_[\w-]+)</code>', created.content.decode())
    assert key
    token = ApiToken.objects.get(user=user)
    assert token.name == "CI"
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert _me(key.group(1)).status_code == 200
    listing = client.get(reverse("accounts:api_tokens")).content.decode()
    assert "CI" in listing and token.prefix in listing
    assert key.group(1) not in listing  # never shown again


def test_a_token_that_never_expires_and_a_nameless_one_are_refused_by_the_form():
    client = client_for(make_user())
    never = client.post(reverse("accounts:api_tokens"), {"name": "Lab", "expires_in": "never"})
    nameless = client.post(reverse("accounts:api_tokens"), {"name": "", "expires_in": "90"})

    assert never.status_code == 201
    assert ApiToken.objects.get().expires_at is None
    assert nameless.status_code == 400
    assert ApiToken.objects.count() == 1


def test_revoked_and_expired_tokens_are_refused_with_a_clear_detail():
    user = make_user()
    revoked, revoked_key = services.api_token_create(user=user, name="old")
    expired, expired_key = services.api_token_create(user=user, name="short", expires_in_days=1)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    client_for(user).post(reverse("accounts:api_token_revoke", args=[revoked.pk]))

    assert _me(revoked_key).status_code == 401
    assert "revoked" in _me(revoked_key).json()["detail"]
    assert _me(expired_key).status_code == 401
    assert "expired" in _me(expired_key).json()["detail"]
    assert [t.name for t in ApiToken.objects.filter(revoked_at=None)] == ["short"]


def test_last_use_is_recorded_at_most_once_a_minute():
    token, key = services.api_token_create(user=make_user())
    _me(key)
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    _me(key)
    token.refresh_from_db()
    assert token.last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    _me(key)
    token.refresh_from_db()
    assert token.last_used_at > first


def test_another_users_token_cannot_be_revoked_from_the_page_or_the_api():
    owner, other = make_user(), make_user()
    token, key = services.api_token_create(user=owner, name="mine")
    _, other_key = services.api_token_create(user=other, name="theirs")

    page = client_for(other).post(reverse("accounts:api_token_revoke", args=[token.pk]))
    api = Client().delete(
        reverse("api:token_revoke", args=[token.pk]), HTTP_AUTHORIZATION=f"Token {other_key}"
    )

    assert (page.status_code, api.status_code) == (404, 404)
    assert _me(key).status_code == 200


def test_the_api_lists_and_revokes_tokens_without_their_keys():
    user = make_user()
    services.api_token_create(user=user, name="first")
    second, key = services.api_token_create(user=user, name="second", expires_in_days=90)
    auth = {"HTTP_AUTHORIZATION": f"Token {key}"}

    listing = Client().get(reverse("api:token_list"), **auth).json()
    assert [t["name"] for t in listing["results"]] == ["second", "first"]
    assert set(listing["results"][0]) == {
        "id",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
    }
    revoke = Client().delete(reverse("api:token_revoke", args=[second.pk]), **auth)
    assert revoke.status_code == 204
    assert Client().get(reverse("api:token_list"), **auth).status_code == 401


def test_the_password_endpoint_makes_named_tokens_with_the_default_or_chosen_expiry(settings):
    settings.EDGESLIM_API_TOKEN_DEFAULT_DAYS = 90
    user = make_user()
    url = reverse("api:token_obtain")
    default = Client().post(url, {"username": user.username, "password": PASSWORD})
    chosen = Client().post(
        url,
        {"username": user.username, "password": PASSWORD, "name": "cli", "expires_in_days": 30},
        content_type="application/json",
    )
    never = Client().post(
        url,
        {"username": user.username, "password": PASSWORD, "expires_in_days": None},
        content_type="application/json",
    )
    odd = Client().post(
        url,
        {"username": user.username, "password": PASSWORD, "expires_in_days": 7},
        content_type="application/json",
    )

    assert (default.status_code, chosen.status_code, never.status_code) == (201, 201, 201)
    assert odd.status_code == 400
    tokens = {t.pk: t for t in ApiToken.objects.filter(user=user)}
    d, c, n = (tokens[r.json()["id"]] for r in (default, chosen, never))
    assert d.name.startswith("Token of ")
    assert timedelta(days=89) < d.expires_at - timezone.now() <= timedelta(days=90)
    assert c.name == "cli" and c.expires_at - timezone.now() <= timedelta(days=30)
    assert n.expires_at is None
    assert chosen.json()["token"].startswith(chosen.json()["prefix"])


def test_the_token_endpoints_are_in_the_openapi_schema():
    schema = client_for(make_user()).get(reverse("api_schema"), HTTP_ACCEPT="application/json")
    paths = schema.json()["paths"]
    assert "get" in paths["/api/v1/auth/tokens/"]
    assert "delete" in paths["/api/v1/auth/tokens/{id}/"]
