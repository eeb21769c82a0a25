from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from factories import PASSWORD, make_organization, make_user

from webapp.accounts.models import ApiToken
from webapp.accounts.throttling import throttled_message

_WAIT = re.compile(
    r"^Too many failed sign-in attempts\. Try again in (?:(\d+) min)? ?(?:(\d+) s)?\.$"
)


def _wait_s(text: str) -> int:
    match = _WAIT.match(text)
    assert match, text
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


pytestmark = pytest.mark.django_db


def _login(client: Client, username: str, password: str):
    return client.post(reverse("accounts:login"), {"username": username, "password": password})


def _error_text(response) -> str:
    match = re.search(
        r'<div class="flash flash-error" role="alert">(.*?)</div>', response.content.decode(), re.S
    )
    assert match, "the login page shows no error"
    return match.group(1).strip()


def test_login_with_the_right_password_lands_on_the_dashboard(settings):
    org = make_organization(name="Acme Vision")
    user = make_user(organization=org)
    client = Client()

    response = _login(client, user.username, PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert "Acme Vision" in home.content.decode()


def test_pages_redirect_to_login_when_signed_out():
    client = Client()
    for name in [
        "home",
        "models",
        "datasets",
        "jobs",
        "devices",
        "reports",
        "accounts:organization_settings",
    ]:
        response = client.get(reverse(name))
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("accounts:login")), name


def test_wrong_passwords_are_refused_with_429_and_the_real_wait(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    settings.LOGIN_THROTTLE_WINDOW_S = 300
    user = make_user()
    client = Client(REMOTE_ADDR="10.0.0.1")

    answers = [_login(client, user.username, "wrong").status_code for _ in range(3)]
    throttled = _login(client, user.username, "wrong")

    assert answers == [200, 200, 200]
    assert throttled.status_code == 429
    wait = _wait_s(_error_text(throttled))
    assert 290 <= wait <= 300
    assert 290 <= int(throttled["Retry-After"]) <= 300
    # Even the right password is refused while throttled: guessing can't probe it.
    assert _login(client, user.username, PASSWORD).status_code == 429


def test_the_wait_is_written_in_minutes_and_seconds():
    assert throttled_message(252) == "Too many failed sign-in attempts. Try again in 4 min 12 s."
    assert throttled_message(120) == "Too many failed sign-in attempts. Try again in 2 min."
    assert throttled_message(9) == "Too many failed sign-in attempts. Try again in 9 s."
    assert throttled_message(0) == "Too many failed sign-in attempts. Try again in 1 s."


def test_one_users_typos_lock_neither_other_users_at_that_address_nor_other_addresses(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 2
    typist, colleague = make_user(), make_user()
    office = Client(REMOTE_ADDR="10.0.1.1")
    for _ in range(2):
        _login(office, typist.username.upper(), "wrong")
    assert _login(office, typist.username, PASSWORD).status_code == 429

    assert _login(Client(REMOTE_ADDR="10.0.1.1"), colleague.username, PASSWORD).status_code == 302
    assert _login(Client(REMOTE_ADDR="10.0.1.2"), typist.username, PASSWORD).status_code == 302


def test_an_address_spraying_many_usernames_hits_the_looser_address_cap(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 5
    settings.LOGIN_THROTTLE_ADDRESS_ATTEMPTS = 4
    user = make_user()
    client = Client(REMOTE_ADDR="10.0.2.1")
    answers = [_login(client, f"nobody-{n}", "wrong").status_code for n in range(4)]

    assert answers == [200, 200, 200, 200]
    assert _login(client, "carol-nobody", "wrong").status_code == 429
    assert _login(client, user.username, PASSWORD).status_code == 429
    assert _login(Client(REMOTE_ADDR="10.0.2.2"), user.username, PASSWORD).status_code == 302


def test_unknown_username_and_wrong_password_get_identical_answers(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 2
    user = make_user()
    known, unknown = Client(REMOTE_ADDR="10.0.3.1"), Client(REMOTE_ADDR="10.0.3.2")

    for _ in range(3):
        a = _login(known, user.username, "wrong")
        b = _login(unknown, "no-such-user", "wrong")
        assert a.status_code == b.status_code
        assert _WAIT.sub("", _error_text(a)) == _WAIT.sub("", _error_text(b))
    assert a.status_code == 429
    assert abs(_wait_s(_error_text(a)) - _wait_s(_error_text(b))) <= 2


def test_a_successful_login_resets_the_pair_counter(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    user = make_user()
    client = Client(REMOTE_ADDR="10.0.4.1")
    _login(client, user.username, "wrong")
    _login(client, user.username, "wrong")
    assert _login(client, user.username, PASSWORD).status_code == 302
    client.post(reverse("accounts:logout"))

    assert _login(client, user.username, "wrong").status_code == 200
    assert _login(client, user.username, "wrong").status_code == 200
    assert _login(client, user.username, PASSWORD).status_code == 302


def test_token_endpoint_shows_the_token_once_and_stores_only_its_hash():
    org = make_organization(name="Tokens Inc")
    user = make_user(organization=org)
    client = Client()

    response = client.post(
        reverse("api:token_obtain"), {"username": user.username, "password": PASSWORD}
    )

    assert response.status_code == 201
    key = response.json()["token"]
    stored = ApiToken.objects.get(user=user)
    assert stored.key_hash == ApiToken.hash_key(key)
    assert key not in {stored.key_hash, stored.prefix, stored.name}
    me = Client().get(reverse("api:me"), HTTP_AUTHORIZATION=f"Token {key}")
    assert me.status_code == 200
    assert me.json()["username"] == user.username
    assert [o["name"] for o in me.json()["organizations"]] == ["Tokens Inc"]


def test_token_endpoint_is_throttled_like_login(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 2
    user = make_user()
    client = Client(REMOTE_ADDR="10.0.5.1")
    url = reverse("api:token_obtain")
    answers = [
        client.post(url, {"username": user.username, "password": "wrong"}).status_code,
        client.post(url, {"username": user.username, "password": "wrong"}).status_code,
    ]
    refused = client.post(url, {"username": user.username, "password": PASSWORD})
    assert answers == [400, 400]
    assert refused.status_code == 429
    assert _wait_s(refused.json()["detail"]) > 0


def test_a_wrong_token_is_refused():
    response = Client().get(reverse("api:me"), HTTP_AUTHORIZATION="Token es_not-a-real-token")
    assert response.status_code == 401


def test_me_with_a_session_lists_organisations_and_the_current_one():
    user = make_user()
    first = make_organization(name="Alpha", owner=user)
    make_organization(name="Beta", owner=user)
    client = Client()
    client.force_login(user)

    body = client.get(reverse("api:me")).json()

    assert body["current_organization_id"] == first.pk
    assert [(o["name"], o["role"]) for o in body["organizations"]] == [
        ("Alpha", "admin"),
        ("Beta", "admin"),
    ]


def test_me_refuses_anonymous_requests():
    assert Client().get(reverse("api:me")).status_code in {401, 403}
