"""Changing one's password, the forced change after a one-time password, and reset by email."""

from __future__ import annotations

import io
import re

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from factories import PASSWORD, client_for, make_organization, make_user

from webapp.accounts.models import Role, User

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-fresh-long-passphrase-42"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.ENGINEER, Role.MANAGER])
def test_every_role_changes_its_password_and_stays_signed_in(role):
    org = make_organization()
    user = make_user(organization=org, role=role)
    client = client_for(user)

    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert client.get(reverse("home")).status_code == 200  # session kept


def test_a_weak_or_wrong_change_is_refused_beside_the_field():
    user = make_user()
    client = client_for(user)

    weak = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": "password", "new_password2": "password"},
    )
    wrong_old = client.post(
        reverse("accounts:password_change"),
        {"old_password": "nope", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )

    assert weak.status_code == wrong_old.status_code == 200
    assert "too common" in weak.content.decode()
    assert "id_old_password-errors" in wrong_old.content.decode()
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_bootstrap_admin_must_change_the_one_time_password_before_any_page():
    out = io.StringIO()
    call_command("edgeslim_bootstrap", stdout=out)
    one_time = re.search(r"One-time password .*: (\S+)", out.getvalue())
    assert one_time, out.getvalue()
    admin = User.objects.get(username="admin")
    assert admin.must_change_password
    client = client_for(admin)

    for url in [reverse("home"), reverse("jobs"), reverse("accounts:organization_settings")]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("accounts:password_change")), url
    # The API stays open: tokens are made by someone who holds the password already.
    assert client.get(reverse("api:me")).status_code == 200
    page = client.get(reverse("accounts:password_change") + "?next=/jobs/")
    assert "one-time password" in page.content.decode()

    response = client.post(
        reverse("accounts:password_change"),
        {
            "old_password": one_time.group(1),
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
            "next": "/jobs/",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/jobs/"
    admin.refresh_from_db()
    assert not admin.must_change_password
    assert client.get(reverse("home")).status_code == 200


def test_a_bootstrap_with_a_chosen_password_is_not_forced_to_change():
    call_command("edgeslim_bootstrap", password=PASSWORD, stdout=io.StringIO())
    assert not User.objects.get(username="admin").must_change_password


def test_a_member_made_with_an_admin_chosen_password_must_change_it():
    org = make_organization()
    admin = User.objects.get(memberships__organization=org)
    client_for(admin).post(
        reverse("accounts:member_add"),
        {"username": "newbie", "role": "engineer", "email": "n@example.com", "password": PASSWORD},
    )
    assert User.objects.get(username="newbie").must_change_password


def test_reset_answers_the_same_for_any_address_and_mails_only_real_ones():
    user = make_user(email="ada@example.com")
    client = Client()

    known = client.post(reverse("accounts:password_reset"), {"email": "ada@example.com"})
    unknown = client.post(reverse("accounts:password_reset"), {"email": "nobody@example.com"})

    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"] == reverse("accounts:password_reset_done")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ada@example.com"]
    body = mail.outbox[0].body
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/\S+/)", body)
    assert link, body
    assert user.username in body

    form = client.get(link.group(1), follow=True)
    assert "Set a new password" in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    # The link works once.
    again = client.get(link.group(1), follow=True)
    assert "does not work any more" in again.content.decode()
