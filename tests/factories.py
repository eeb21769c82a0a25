"""Row factories for tests: plain functions that go through the services, like the app does."""

from __future__ import annotations

import itertools
from typing import Any

from django.test import Client

from webapp.accounts import services
from webapp.accounts.models import Organization, Role, User

PASSWORD = "correct-horse-battery-staple"
_seq = itertools.count(1)


def make_user(
    *,
    username: str | None = None,
    password: str = PASSWORD,
    organization: Organization | None = None,
    role: str = Role.ENGINEER,
    **extra: Any,
) -> User:
    n = next(_seq)
    return services.user_create(
        username=username or f"user{n}",
        email=extra.pop("email", f"user{n}@example.com"),
        password=password,
        organization=organization,
        role=role,
        **extra,
    )


def make_organization(*, name: str | None = None, owner: User | None = None) -> Organization:
    owner = owner or make_user()
    return services.organization_create(name=name or f"Org {next(_seq)}", owner=owner)


def make_member(organization: Organization, *, role: str = Role.ENGINEER, **kw: Any) -> User:
    return make_user(organization=organization, role=role, **kw)


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client
