"""Names with Unicode bidi controls or other invisible format characters are refused, through
every entry point that stores one: catalog pages and API (models, datasets, resumable uploads),
the device registry's page and API, and organisations."""

from __future__ import annotations

import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from factories import client_for, make_organization, make_user
from hostile_corpus import FORMAT_CONTROL_NAMES

from device_registry.models import Device
from webapp.accounts import services as account_services
from webapp.accounts.models import Organization, Role
from webapp.catalog.models import Dataset, ModelAsset, Upload
from webapp.names import name_problem

pytestmark = pytest.mark.django_db
RLO_NAME = "dog\u202egnp.exe"  # shows as "dogexe.png"


@pytest.fixture
def engineer_client(settings, tmp_path) -> Client:  # type: ignore[no-untyped-def]
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EDGESLIM_UPLOAD_TMP_DIR = tmp_path / "uploads"
    user = make_user(role=Role.ENGINEER)
    make_organization(owner=user)
    return client_for(user)


@pytest.mark.parametrize("name", FORMAT_CONTROL_NAMES)
def test_the_validator_names_the_character(name):
    problem = name_problem(name)
    assert problem is not None and problem.startswith(
        "Names cannot contain invisible control or formatting characters; this one contains U+"
    )


@pytest.mark.parametrize("name", ["Modèle 猫 🐱", "résumé-v2 (final)", "עברית", "مرحبا", "a.b_c"])
def test_ordinary_names_in_any_script_pass(name):
    assert name_problem(name) is None


def test_dataset_names_are_refused_by_the_api_the_page_and_resumable_uploads(engineer_client):
    zip_bytes = io.BytesIO(b"PK\x05\x06" + b"\0" * 18)
    zip_bytes.name = "pets.zip"
    response = engineer_client.post(
        reverse("api:catalog-dataset-list"), {"file": zip_bytes, "name": RLO_NAME}
    )
    assert response.status_code == 400
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE)" in json.dumps(response.json())

    zip_bytes.seek(0)
    page = engineer_client.post(reverse("datasets"), {"file": zip_bytes, "name": RLO_NAME})
    assert page.status_code == 400
    assert "RIGHT-TO-LEFT OVERRIDE" in page.content.decode()

    session = engineer_client.post(
        reverse("api:catalog-upload-list"),
        data=json.dumps({"kind": "dataset", "filename": "pets.zip", "size": 100, "name": RLO_NAME}),
        content_type="application/json",
    )
    assert session.status_code == 400
    assert not Dataset.objects.filter(name__contains="\u202e").exists()
    assert not Upload.objects.exists()


def test_model_names_are_refused_by_the_api_and_the_service(engineer_client):
    onnx_bytes = io.BytesIO(b"\x08\x07" + b"\0" * 64)
    onnx_bytes.name = "m.onnx"
    response = engineer_client.post(
        reverse("api:catalog-model-list"), {"file": onnx_bytes, "name": "model\u2066x\u2069"}
    )
    assert response.status_code == 400
    assert "U+2066 (LEFT-TO-RIGHT ISOLATE)" in json.dumps(response.json())

    from webapp.catalog import services
    from webapp.catalog.errors import CatalogInputError

    org = Organization.objects.get()
    with pytest.raises(CatalogInputError, match="U\\+200B") as caught:
        services.model_upload_create(
            organization=org, user=None, name="zero\u200bwidth", uploaded_file=onnx_bytes
        )
    assert caught.value.field == "name"
    assert not ModelAsset.objects.filter(name__contains="\u200b").exists()


def test_device_names_are_refused_by_the_page_and_the_api(engineer_client):
    page = engineer_client.post(reverse("devices:register"), {"name": RLO_NAME})
    assert page.status_code == 200  # the form again, with the reason beside the field
    assert "RIGHT-TO-LEFT OVERRIDE" in page.content.decode()
    api = engineer_client.post(
        reverse("api_devices"), data=json.dumps({"name": "bom\ufeffname"}),
        content_type="application/json",
    )  # fmt: skip
    assert api.status_code == 400
    assert "U+FEFF" in json.dumps(api.json())
    from device_registry import services as device_services

    with pytest.raises(ValidationError, match="U\\+2066"):
        device_services.device_register(
            organization=Organization.objects.get(), name="model\u2066x\u2069"
        )
    assert not Device.objects.exists()


def test_organisation_names_are_refused():
    owner = make_user()
    with pytest.raises(ValidationError, match="U\\+00AD"):
        account_services.organization_create(name="soft\u00adhyphen", owner=owner)
    assert not Organization.objects.filter(name__contains="\u00ad").exists()
