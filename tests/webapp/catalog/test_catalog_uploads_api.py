"""Chunked, resumable uploads over the API, and the single-request multipart endpoints."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from catalog_files import image_folder_zip, lenet5_safetensors, media_files
from django.utils import timezone

from webapp.catalog import services
from webapp.catalog.models import Dataset, ModelVersion, Upload, UploadStatus

pytestmark = pytest.mark.django_db
UPLOADS = "/api/v1/uploads/"


def _create(client, data: bytes, filename: str, kind: str = "model", **extra):  # type: ignore[no-untyped-def]
    body = {"kind": kind, "filename": filename, "size": len(data), **extra}
    return client.post(UPLOADS, body, content_type="application/json")


def _put(client, url: str, data: bytes, start: int, total: int):  # type: ignore[no-untyped-def]
    end = start + len(data) - 1
    return client.put(
        url, data, content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{total}",
    )  # fmt: skip


def _temp_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "uploads"
    return sorted(folder.glob("*")) if folder.exists() else []


def test_a_model_arrives_in_chunks_and_completes_into_a_pending_version(client_a, tmp_path):
    data = lenet5_safetensors(tmp_path / "l.safetensors").read_bytes()
    created = _create(
        client_a, data, "lenet.safetensors", arch="lenet5", name="LeNet",
        sha256=hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    assert created.status_code == 201, created.content
    url = created.json()["url"]
    half = len(data) // 2

    assert _put(client_a, url, data[:half], 0, len(data)).json()["received"] == half
    assert client_a.get(url).json()["received"] == half  # where a client resumes from
    assert _put(client_a, url, data[half:], half, len(data)).json()["received"] == len(data)
    done = client_a.post(url + "complete")

    assert done.status_code == 201, done.content
    version = ModelVersion.objects.get(pk=done.json()["model_version"]["id"])
    assert version.asset.name == "LeNet" and version.arch == "lenet5"
    assert version.sha256 == hashlib.sha256(data).hexdigest() and version.status == "pending"
    assert done.json()["page_url"] == f"/models/{version.pk}/"
    assert _temp_files(tmp_path) == []
    assert Upload.objects.get().status == UploadStatus.COMPLETE


def test_a_chunk_at_the_wrong_offset_gets_409_with_the_offset_to_resume_from(client_a, tmp_path):
    data = b"\x08" + b"\0" * 999
    url = _create(client_a, data, "m.onnx").json()["url"]
    _put(client_a, url, data[:100], 0, len(data))

    again = _put(client_a, url, data[:100], 0, len(data))
    ahead = _put(client_a, url, data[300:400], 300, len(data))

    assert again.status_code == 409 and again.json()["received"] == 100
    assert ahead.status_code == 409 and ahead.json()["received"] == 100
    assert _put(client_a, url, data[100:], 100, len(data)).json()["received"] == len(data)


def test_a_chunk_shorter_than_its_content_range_is_dropped_so_the_client_can_resume(client_a):
    data = b"\x08" + b"\0" * 999
    url = _create(client_a, data, "m.onnx").json()["url"]

    response = client_a.put(
        url, data[:50], content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-99/{len(data)}",
    )  # fmt: skip

    assert response.status_code == 400 and response.json()["received"] == 0
    assert client_a.get(url).json()["received"] == 0


def test_a_chunk_without_content_range_is_refused(client_a):
    url = _create(client_a, b"x" * 10, "m.onnx").json()["url"]
    response = client_a.put(url, b"x" * 10, content_type="application/octet-stream")
    assert response.status_code == 400 and "Content-Range" in response.json()["detail"]


def test_an_upload_over_the_limit_is_refused_up_front_with_413(client_a, settings, tmp_path):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    response = client_a.post(
        UPLOADS, {"kind": "model", "filename": "big.onnx", "size": 1001},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert not Upload.objects.exists() and _temp_files(tmp_path) == []


def test_a_chunk_past_the_limit_is_refused_with_413(client_a, settings):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    url = _create(client_a, b"\x08" * 1000, "m.onnx").json()["url"]

    response = _put(client_a, url, b"\x08" * 1001, 0, 2000)

    assert response.status_code == 413, response.content
    assert "over the upload limit of 1000 bytes" in response.json()["detail"]
    assert client_a.get(url).json()["received"] == 0


def test_a_chunk_past_a_limit_lowered_mid_upload_is_refused_with_413(client_a, settings):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    url = _create(client_a, b"\x08" * 1000, "m.onnx").json()["url"]
    assert _put(client_a, url, b"\x08" * 400, 0, 1000).status_code == 200
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 600

    response = _put(client_a, url, b"\x08" * 600, 400, 1000)

    assert response.status_code == 413, response.content
    assert "over the upload limit of 600 bytes" in response.json()["detail"]
    assert client_a.get(url).json()["received"] == 400


def test_a_wrong_file_type_is_refused_when_the_upload_starts(client_a, tmp_path):
    response = _create(client_a, b"MZ" * 10, "setup.exe")
    assert response.status_code == 415 and "not a model file" in response.json()["detail"]
    assert not Upload.objects.exists() and _temp_files(tmp_path) == []


def test_bytes_that_are_not_what_the_name_says_are_refused_at_complete_and_the_temp_removed(
    client_a, tmp_path
):
    data = b"MZ\x90\x00" + b"\0" * 200  # a Windows executable named .onnx
    url = _create(client_a, data, "model.onnx").json()["url"]
    _put(client_a, url, data, 0, len(data))

    response = client_a.post(url + "complete")

    assert response.status_code == 415 and "Windows executable" in response.json()["detail"]
    assert _temp_files(tmp_path) == [] and media_files(tmp_path) == []
    assert Upload.objects.get().status == UploadStatus.ABORTED
    assert client_a.put(url, b"x", HTTP_CONTENT_RANGE="bytes 0-0/206").status_code == 410


def test_a_sha256_mismatch_is_refused_at_complete(client_a, tmp_path):
    data = b"\x08" + b"\0" * 99
    url = _create(client_a, data, "m.onnx", sha256="0" * 64).json()["url"]
    _put(client_a, url, data, 0, len(data))

    response = client_a.post(url + "complete")

    assert response.status_code == 400 and response.json()["field"] == "sha256"
    assert _temp_files(tmp_path) == []


def test_completing_before_every_byte_arrived_says_how_many_are_missing(client_a):
    data = b"\x08" + b"\0" * 99
    url = _create(client_a, data, "m.onnx").json()["url"]
    _put(client_a, url, data[:10], 0, len(data))

    response = client_a.post(url + "complete")

    assert response.status_code == 409 and response.json()["received"] == 10
    assert Upload.objects.get().status == UploadStatus.RECEIVING


def test_a_client_that_aborts_leaves_no_temp_file(client_a, tmp_path):
    data = b"\x08" + b"\0" * 99
    url = _create(client_a, data, "m.onnx").json()["url"]
    _put(client_a, url, data[:10], 0, len(data))
    assert len(_temp_files(tmp_path)) == 1

    assert client_a.delete(url).status_code == 204

    assert _temp_files(tmp_path) == [] and Upload.objects.get().status == UploadStatus.ABORTED


def test_a_session_the_client_walked_away_from_expires_and_its_temp_file_is_removed(
    client_a, tmp_path
):
    data = b"\x08" + b"\0" * 99
    url = _create(client_a, data, "m.onnx").json()["url"]
    _put(client_a, url, data[:10], 0, len(data))
    orphan = tmp_path / "uploads" / "deadbeef.part"  # left by a crash, owned by no session
    orphan.write_bytes(b"x")
    old = (timezone.now() - timedelta(days=3)).timestamp()
    import os

    os.utime(orphan, (old, old))

    removed = services.upload_expired_cleanup(now=timezone.now() + timedelta(days=2))

    assert removed == 2 and _temp_files(tmp_path) == []
    assert Upload.objects.get().status == UploadStatus.EXPIRED
    assert _put(client_a, url, data[10:], 10, len(data)).status_code == 410


def test_a_unicode_long_filename_is_kept_only_as_normalised_metadata(client_a, tmp_path):
    data = image_folder_zip(tmp_path / "d.zip").read_bytes()
    name = "dätä/../" + "ø" * 300 + "\u202e.zip"
    url = _create(client_a, data, name, kind="dataset").json()["url"]
    _put(client_a, url, data, 0, len(data))

    body = client_a.post(url + "complete").json()

    dataset = Dataset.objects.get(pk=body["dataset"]["id"])
    assert dataset.source_filename.endswith(".zip") and len(dataset.source_filename) <= 200
    assert "/" not in dataset.source_filename and "\u202e" not in dataset.source_filename
    assert dataset.file.name.startswith(f"catalog/{dataset.organization_id}/datasets/")


def test_multipart_model_upload_for_small_files(client_a, tmp_path):
    path = lenet5_safetensors(tmp_path / "l.safetensors")
    with path.open("rb") as fh:
        response = client_a.post("/api/v1/models/", {"file": fh, "arch": "lenet5", "name": "Small"})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Small" and body["status"] == "pending" and body["format"] == "torch"


@pytest.mark.parametrize("name", ["notes.txt", "virus.exe"])
def test_multipart_wrong_type_gets_a_clear_error(client_a, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"MZ not a model")
    with path.open("rb") as fh:
        response = client_a.post("/api/v1/models/", {"file": fh, "arch": "lenet5"})
    assert response.status_code == 415 and "not a model file" in response.json()["detail"]
    assert media_files(tmp_path) == []


def test_multipart_over_the_limit_gets_413_before_the_body_is_read(client_a, settings, tmp_path):
    settings.EDGESLIM_MAX_UPLOAD_BYTES = 1000
    path = tmp_path / "big.zip"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 200_000)
    with path.open("rb") as fh:
        response = client_a.post("/api/v1/datasets/", {"file": fh})
    assert response.status_code == 413 and media_files(tmp_path) == []


def test_a_manager_can_read_but_not_upload(org_a, tmp_path):
    from factories import client_for, make_member

    manager = client_for(make_member(org_a, role="manager"))
    assert manager.get("/api/v1/models/").status_code == 200
    response = manager.post(
        UPLOADS,
        {"kind": "model", "filename": "m.onnx", "size": 10},
        content_type="application/json",
    )
    assert response.status_code == 403


def test_token_authentication_works_for_scripts(user_a, tmp_path):
    from django.test import Client

    from webapp.accounts.services import api_token_create

    _token, key = api_token_create(user=user_a)
    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    data = b"\x08" + b"\0" * 99

    created = _create(client, data, "m.onnx")
    listing = client.get("/api/v1/models/")

    assert created.status_code == 201 and listing.status_code == 200
    assert {v["name"] for v in listing.json()} >= {"LeNet-5 (built-in)"}
