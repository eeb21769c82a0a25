"""MACs and provenance on the model pages: a version a job produced carries the job's MACs and
names the job that made it; an uploaded ONNX says that MACs are not counted for it."""

from __future__ import annotations

import re

import pytest
from catalog_files import lenet5_onnx, lenet5_safetensors

from webapp.catalog import services
from webapp.catalog.errors import CatalogInputError
from webapp.catalog.models import ModelVersion

pytestmark = pytest.mark.django_db

JOB_MACS = 251440  # what a job's report counted for its final model


def _macs_cell(html: str) -> str:
    found = re.search(r"<dd data-macs>(.*?)</dd>", html, re.S)
    assert found
    return found.group(1)


def _list_row(html: str, version: ModelVersion) -> str:
    found = re.search(rf'href="/models/{version.pk}/".*?</tr>', html, re.S)
    assert found
    return found.group(0)


def _parent(org_a, user_a, tmp_path) -> ModelVersion:  # type: ignore[no-untyped-def]
    parent = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_safetensors(tmp_path / "l.safetensors"),
        arch="lenet5",
    )  # fmt: skip
    return services.model_version_inspect(version=parent)


def test_a_job_produced_onnx_shows_the_jobs_macs_and_the_job_that_made_it(
    client_a, org_a, user_a, tmp_path
):
    child = services.model_version_create_from_job(
        organization=org_a, parent=_parent(org_a, user_a, tmp_path), job_id=7, recipe={},
        file_path=lenet5_onnx(tmp_path / "final.int8.onnx"), format="onnx", label="int8",
        info={"params": 61706, "format": "onnx", "macs": None}, macs=JOB_MACS,
    )  # fmt: skip
    assert child.info["macs"] == JOB_MACS and child.macs == JOB_MACS

    page = client_a.get(f"/models/{child.pk}/").content.decode()
    assert _macs_cell(page) == str(JOB_MACS)
    assert 'Produced by <a href="/jobs/7/">job 7</a> (final.int8.onnx)' in page
    assert "Uploaded as" not in page
    row = _list_row(client_a.get("/models/").content.decode(), child)
    assert f"<td data-macs>{JOB_MACS}" in row


def test_the_jobs_macs_survive_a_later_inspection_of_the_onnx(org_a, user_a, tmp_path):
    child = services.model_version_create_from_job(
        organization=org_a, parent=_parent(org_a, user_a, tmp_path), job_id=8, recipe={},
        file_path=lenet5_onnx(tmp_path / "final.onnx"), format="onnx", macs=JOB_MACS,
    )  # fmt: skip
    assert child.status == "pending"
    child = services.model_version_inspect(version=child)
    assert child.status == "ready" and child.macs == JOB_MACS and child.params


def test_an_uploaded_onnx_says_its_macs_are_not_counted(client_a, org_a, user_a, tmp_path):
    version = services.model_upload_create(
        organization=org_a, user=user_a, path=lenet5_onnx(tmp_path / "mine.onnx")
    )
    version = services.model_version_inspect(version=version)
    assert version.status == "ready" and version.macs is None

    page = client_a.get(f"/models/{version.pk}/").content.decode()
    assert "not counted for ONNX uploads" in _macs_cell(page)
    assert "Uploaded as</dt><dd data-source>mine.onnx" in page and "Produced by <a" not in page
    row = _list_row(client_a.get("/models/").content.decode(), version)
    assert "not counted for ONNX uploads" in row


def test_a_job_output_refuses_macs_that_are_not_a_count(org_a, user_a, tmp_path):
    parent = _parent(org_a, user_a, tmp_path)
    for macs in (-1, 2.5, True):
        with pytest.raises(CatalogInputError, match="MACs must be a count"):
            services.model_version_create_from_job(
                organization=org_a, parent=parent, job_id=9, recipe={},
                file_path=lenet5_onnx(tmp_path / "final.onnx"), format="onnx", macs=macs,
            )  # fmt: skip
    assert not ModelVersion.objects.filter(produced_by_job_id=9).exists()
