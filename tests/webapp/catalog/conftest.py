"""Fixtures for the catalog tests: two organisations, and storage in a private temp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client
from factories import client_for, make_organization

from webapp.accounts.models import Membership, Organization, User


@pytest.fixture(autouse=True)
def catalog_storage(settings, tmp_path: Path) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Uploads, temp chunks, worker scratch and the built-in cache go under this test's own
    folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EDGESLIM_UPLOAD_TMP_DIR = tmp_path / "uploads"
    settings.DATA_DIR = tmp_path / "data"
    # Each test builds the built-in samples afresh (the suite's shared cache is for the stack).
    settings.EDGESLIM_BUILTIN_CACHE_DIR = tmp_path / "data" / "cache" / "builtin"
    yield tmp_path


@pytest.fixture
def org_a(db: None) -> Organization:
    return make_organization(name="Org A")


@pytest.fixture
def org_b(db: None) -> Organization:
    return make_organization(name="Org B")


@pytest.fixture
def user_a(org_a: Organization) -> User:
    return Membership.objects.get(organization=org_a).user


@pytest.fixture
def user_b(org_b: Organization) -> User:
    return Membership.objects.get(organization=org_b).user


@pytest.fixture
def client_a(user_a: User) -> Client:
    return client_for(user_a)


@pytest.fixture
def client_b(user_b: User) -> Client:
    return client_for(user_b)
