"""The catalog pages: lists with the upload zone, item pages with the inspection's results,
downloads as attachments and thumbnails as PNG that browsers never sniff."""

from __future__ import annotations

import re

import pytest
from catalog_files import image_folder_zip, lenet5_safetensors, media_files, pickled_module

from webapp.catalog import services
from webapp.catalog.models import ModelVersion

pytestmark = pytest.mark.django_db


def test_the_nav_links_reach_the_model_and_dataset_lists_with_the_builtins(client_a):
    models = client_a.get("/models/").content.decode()
    datasets = client_a.get("/datasets/").content.decode()

    assert (
        "LeNet-5 (built-in)" in models and "data-upload-form" in models and "js/upload.js" in models
    )
    assert "Digits (built-in)" in datasets and 'accept=".zip"' in datasets


def test_a_small_model_posted_from_the_page_goes_to_its_item_page(client_a, tmp_path):
    with lenet5_safetensors(tmp_path / "l.safetensors").open("rb") as fh:
        response = client_a.post("/models/", {"file": fh, "arch": "lenet5", "name": "Paged"})

    version = ModelVersion.objects.get(asset__name="Paged")
    assert response.status_code == 302 and response["Location"] == f"/models/{version.pk}/"
    page = client_a.get(response["Location"]).content.decode()
    assert "Inspecting on a worker" in page and 'hx-trigger="every 2s"' in page
    # each poll gives up after 10 s: one lost request must not stop the page's polling
    assert "hx-request='{\"timeout\": 10000}'" in page


@pytest.mark.parametrize("name", ["virus.exe", "readme.txt"])
def test_a_wrong_file_type_posted_from_the_page_shows_the_error(client_a, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"MZ nope")
    with path.open("rb") as fh:
        response = client_a.post("/models/", {"file": fh, "arch": "lenet5"})

    assert response.status_code == 415
    assert "is not a model file EdgeSlim accepts" in response.content.decode()
    assert media_files(tmp_path) == []


def test_an_oversized_page_upload_gets_413_and_the_error(client_a, tmp_path, settings):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    path = tmp_path / "big.zip"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100_000)
    with path.open("rb") as fh:
        response = client_a.post("/datasets/", {"file": fh})
    assert response.status_code == 413 and "over the upload limit" in response.content.decode()


def test_a_ready_model_page_shows_params_macs_shape_classes_and_the_layer_table(
    client_a, org_a, user_a, tmp_path
):
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_safetensors(tmp_path / "l.safetensors"),
        arch="lenet5",
    )  # fmt: skip
    services.model_version_inspect(version=version)

    page = client_a.get(f"/models/{version.pk}/").content.decode()

    assert 'data-item-status="ready"' in page and "hx-trigger" not in page
    assert "61706" in page and "416520" in page and "1 × 32 × 32" in page
    assert "data-layer-table" in page and "features.0" in page
    assert f"/models/{version.pk}/download/" in page


def test_a_ready_model_page_starts_a_new_job_with_that_model(client_a, org_a, user_a, tmp_path):
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_safetensors(tmp_path / "l.safetensors"),
        arch="lenet5",
    )  # fmt: skip
    assert "data-new-job" not in client_a.get(f"/models/{version.pk}/").content.decode()
    services.model_version_inspect(version=version)

    page = client_a.get(f"/models/{version.pk}/").content.decode()
    assert f'href="/jobs/new/?model={version.pk}" data-new-job' in page
    wizard = client_a.get(f"/jobs/new/?model={version.pk}", follow=True).content.decode()
    assert re.search(rf'<option value="{version.pk}"[^>]*selected', wizard)


def test_an_invalid_model_page_shows_the_reason(client_a, org_a, user_a, tmp_path):
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=pickled_module(tmp_path / "m.pt"), arch="lenet5"
    )
    services.model_version_inspect(version=version)

    page = client_a.get(f"/models/{version.pk}/").content.decode()

    assert "Refused:" in page and "pickled" in page and "safetensors" in page
    assert "/download/" not in page
    assert client_a.get(f"/models/{version.pk}/download/").status_code == 404


def test_the_download_is_an_attachment_never_inline(client_a, org_a, user_a, tmp_path):
    src = lenet5_safetensors(tmp_path / "l.safetensors")
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=src, arch="lenet5", name="Net"
    )

    response = client_a.get(f"/models/{version.pk}/download/")

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert 'filename="Net-v1.safetensors"' in response["Content-Disposition"]
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content) == src.read_bytes()


def test_the_dataset_page_shows_classes_counts_sizes_corrupt_files_and_png_thumbnails(
    client_a, org_a, user_a, tmp_path
):
    dataset = services.dataset_upload_create(
        organization=org_a, user=user_a, path=image_folder_zip(tmp_path / "pets.zip", corrupt=1)
    )
    services.dataset_validate(dataset=dataset)

    page = client_a.get(f"/datasets/{dataset.pk}/").content.decode()
    thumb = client_a.get(f"/datasets/{dataset.pk}/thumbnails/1/0.png")

    assert "cat" in page and "dog" in page and "data-class-table" in page
    assert "cat/broken0.png" in page and "16×16 to 21×21" in page
    assert f"/datasets/{dataset.pk}/thumbnails/0/0.png" in page
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/png"
    assert thumb["X-Content-Type-Options"] == "nosniff"
    assert thumb.content.startswith(b"\x89PNG")
    assert client_a.get(f"/datasets/{dataset.pk}/thumbnails/5/0.png").status_code == 404


def test_the_pending_item_body_is_served_alone_to_htmx_polls(client_a, org_a, user_a, tmp_path):
    dataset = services.dataset_upload_create(
        organization=org_a, user=user_a, path=image_folder_zip(tmp_path / "pets.zip")
    )

    fragment = client_a.get(f"/datasets/{dataset.pk}/", HTTP_HX_REQUEST="true").content.decode()

    assert fragment.lstrip().startswith('<div id="item-body"') and "<html" not in fragment


def test_deleting_a_model_removes_its_file(
    client_a, org_a, user_a, tmp_path, django_capture_on_commit_callbacks
):
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_safetensors(tmp_path / "l.safetensors"),
        arch="lenet5",
    )  # fmt: skip
    assert len(media_files(tmp_path)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(f"/models/{version.pk}/delete/")

    assert response.status_code == 302 and not ModelVersion.objects.filter(pk=version.pk).exists()
    assert media_files(tmp_path) == []
