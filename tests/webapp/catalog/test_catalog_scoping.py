"""Organisation B cannot see A's models, datasets, uploads, thumbnails or downloads: every page
and API endpoint answers 404, and lists leave A's rows out (RELIABILITY item 27)."""

from __future__ import annotations

import pytest
from catalog_files import image_folder_zip, lenet5_safetensors
from scoping import assert_other_org_gets_404

from webapp.catalog import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def a_items(org_a, user_a, tmp_path):  # type: ignore[no-untyped-def]
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_safetensors(tmp_path / "l.safetensors"),
        arch="lenet5", name="Secret model",
    )  # fmt: skip
    dataset = services.dataset_upload_create(
        organization=org_a,
        user=user_a,
        path=image_folder_zip(tmp_path / "d.zip"),
        name="Secret data",
    )
    services.dataset_validate(dataset=dataset)
    dataset.refresh_from_db()
    upload = services.upload_create(
        organization=org_a, user=user_a, kind="model", filename="m.onnx", total_size=10
    )
    return version, dataset, upload


def test_org_b_gets_404_on_every_page_and_endpoint_of_org_a(client_a, client_b, a_items):
    version, dataset, upload = a_items
    page_urls = [
        f"/models/{version.pk}/",
        f"/models/{version.pk}/download/",
        f"/models/{version.pk}/delete/",
        f"/datasets/{dataset.pk}/",
        f"/datasets/{dataset.pk}/thumbnails/0/0.png",
        f"/datasets/{dataset.pk}/delete/",
    ]
    api_urls = [
        f"/api/v1/models/{version.pk}/",
        f"/api/v1/models/{version.pk}/download/",
        f"/api/v1/datasets/{dataset.pk}/",
        f"/api/v1/datasets/{dataset.pk}/thumbnails/0/0.png",
        f"/api/v1/uploads/{upload.pk}/",
        f"/api/v1/uploads/{upload.pk}/complete",
    ]
    # The owner reaches the readable ones (so the 404s below are about scoping, not typos).
    for url in [page_urls[0], page_urls[3], page_urls[4], api_urls[0], api_urls[2], api_urls[4]]:
        assert client_a.get(url).status_code == 200, url

    assert_other_org_gets_404(
        client_b, [u for u in page_urls if "delete" not in u], methods=("get",)
    )
    assert_other_org_gets_404(client_b, [u for u in page_urls if "delete" in u], methods=("post",))
    for url in api_urls:
        for method in ("get", "put", "post", "delete"):
            response = getattr(client_b, method)(url)
            assert response.status_code in (404, 405), f"{method} {url}: {response.status_code}"
            if response.status_code == 405:  # method not offered there: check GET said 404 too
                assert client_b.get(url).status_code in (404, 405)
    version.refresh_from_db()
    dataset.refresh_from_db()
    upload.refresh_from_db()
    assert upload.status == "receiving"


def test_org_b_lists_leave_org_a_out(client_b, a_items):
    pages = client_b.get("/models/").content.decode() + client_b.get("/datasets/").content.decode()
    api = str(client_b.get("/api/v1/models/").json()) + str(
        client_b.get("/api/v1/datasets/").json()
    )

    for text in ("Secret model", "Secret data"):
        assert text not in pages and text not in api
