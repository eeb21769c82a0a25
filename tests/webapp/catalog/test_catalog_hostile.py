"""Hostile files through the catalog's real entry points: uploaded with the API, then inspected
by the worker's service in the sandboxed inspection child (``webapp.catalog.inspect_child``).

Every refusal must read as a sentence a person can act on, never an exception's name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from hostile_corpus import zip_many_small_bombs

from webapp.catalog import services
from webapp.catalog.models import Dataset, ItemStatus

pytestmark = pytest.mark.django_db


def _upload_dataset(client: Client, path: Path) -> Dataset:
    with path.open("rb") as fh:
        response = client.post(reverse("api:catalog-dataset-list"), {"file": fh, "name": path.stem})
    assert response.status_code == 201, response.content
    return Dataset.objects.get(pk=response.json()["id"])


def test_a_zip_of_a_thousand_small_bombs_is_refused_as_a_whole(client_a, tmp_path):
    bomb = zip_many_small_bombs(tmp_path / "thousand.zip")  # 1,000 x 1 MiB of zeros
    assert bomb.stat().st_size < 2 * 1024**2
    dataset = _upload_dataset(client_a, bomb)

    services.dataset_validate(dataset=dataset)

    dataset.refresh_from_db()
    assert dataset.status == ItemStatus.INVALID
    assert "expand to 1048576000 bytes" in dataset.error
    assert "more than 100 times its size (zip bomb?)" in dataset.error
    assert not dataset.file  # the refused archive is deleted
