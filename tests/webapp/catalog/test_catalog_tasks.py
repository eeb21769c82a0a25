"""The catalog tasks, called as plain functions: thin wrappers that fetch by id."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from factories import make_organization

from webapp.accounts.models import Membership
from webapp.catalog import services
from webapp.catalog import tasks as catalog_tasks
from webapp.catalog.models import ItemStatus, Upload, UploadStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EDGESLIM_UPLOAD_TMP_DIR = tmp_path / "uploads"
    settings.DATA_DIR = tmp_path / "data"


def test_the_inspect_task_marks_a_version_ready(tmp_path):
    from compression import zoo
    from compression.model_io import save_model_safetensors

    org = make_organization()
    path = save_model_safetensors(
        zoo.create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "l.safetensors"
    )
    version = services.model_upload_create(organization=org, user=None, path=path, arch="lenet5")

    catalog_tasks.model_version_inspect(version.pk)

    version.refresh_from_db()
    assert version.status == ItemStatus.READY and version.params == 61706


def test_tasks_for_rows_deleted_meanwhile_do_nothing():
    catalog_tasks.model_version_inspect(10**12)
    catalog_tasks.dataset_validate(10**12)


def test_the_validate_task_marks_the_builtin_digits_ready():
    org = make_organization()
    services.builtin_samples_ensure(organization=org)
    digits = org.catalog_dataset_set.get(builtin_key="digits")

    catalog_tasks.dataset_validate(digits.pk)

    digits.refresh_from_db()
    assert digits.status == ItemStatus.READY and len(digits.thumbnails) == 10


def test_the_cleanup_task_expires_abandoned_uploads_and_removes_their_bytes(tmp_path):
    org = make_organization()
    user = Membership.objects.get(organization=org).user
    upload = services.upload_create(
        organization=org, user=user, kind="model", filename="m.onnx", total_size=100
    )
    Upload.objects.filter(pk=upload.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert catalog_tasks.uploads_cleanup() == 1

    assert Upload.objects.get().status == UploadStatus.EXPIRED
    assert list((tmp_path / "uploads").iterdir()) == []
