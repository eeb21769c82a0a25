"""The catalog's sweeps on rows, against the real database and broker: an inspection pending too
long is sent again (on the catalog queue in Redis) a bounded number of times, then marked invalid
with a reason; a fresh one is left alone. Abandoned uploads lose their partial file, and ended
sessions' records go after the documented age; a fresh upload keeps both."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.utils import timezone
from factories import make_organization

from webapp.accounts.models import Membership
from webapp.catalog import services
from webapp.catalog import tasks as catalog_tasks
from webapp.catalog.models import (
    Dataset,
    ItemStatus,
    ModelVersion,
    Upload,
    UploadStatus,
)
from webapp.catalog.services import inspection
from workers.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[redis.Redis, str]]:
    """The sweep's tasks go to the real broker under a key prefix no worker reads."""
    prefix = f"edgeslim-reap-{uuid.uuid4().hex[:8]}:"

    def enqueue(task_name: str, pk: int) -> None:
        def send() -> None:
            with celery_app.connection_for_write() as conn:
                conn.transport_options.update({"global_keyprefix": prefix})
                celery_app.send_task(task_name, args=(pk,), connection=conn)

        from django.db import transaction

        transaction.on_commit(send)

    monkeypatch.setattr(inspection, "_enqueue", enqueue)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _sent(broker: tuple[redis.Redis, str]) -> list[tuple[str, list[int]]]:
    client, prefix = broker
    out = []
    for raw in client.lrange(f"{prefix}catalog", 0, -1):
        message = json.loads(raw)
        out.append((message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[0]))
    return out


@pytest.fixture
def pending_version(tmp_path: Path) -> ModelVersion:
    from compression import zoo
    from compression.model_io import save_model_safetensors

    org = make_organization()
    path = save_model_safetensors(
        zoo.create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "l.safetensors"
    )
    version = services.model_upload_create(organization=org, user=None, path=path, arch="lenet5")
    assert version.status == ItemStatus.PENDING
    return version


def _age(row: ModelVersion | Dataset, seconds: float) -> None:
    type(row).objects.filter(pk=row.pk).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_an_inspection_pending_too_long_is_sent_again_then_marked_invalid(
    pending_version, broker, settings, django_capture_on_commit_callbacks
):
    settings.EDGESLIM_INSPECT_STUCK_S = 1800
    settings.EDGESLIM_INSPECT_RETRIES = 2
    _age(pending_version, 1801)
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        first = services.inspections_reap(now=now)
        # The next sweep, seconds later, waits: the clock restarted when it was sent again.
        again = services.inspections_reap(now=now + timedelta(seconds=15))

    assert first.resent == [("model_version", pending_version.pk)] and not first.failed
    assert again.resent == [] and again.failed == []
    assert _sent(broker) == [("catalog.model_version_inspect", [pending_version.pk])]
    version = ModelVersion.objects.get(pk=pending_version.pk)
    assert version.status == ItemStatus.PENDING and version.info["inspect_requeues"] == 1

    with django_capture_on_commit_callbacks(execute=True):
        second = services.inspections_reap(now=now + timedelta(seconds=1801))
        third = services.inspections_reap(now=now + timedelta(seconds=2 * 1801))
    assert second.resent == [("model_version", pending_version.pk)]
    assert third.failed == [("model_version", pending_version.pk)] and third.resent == []
    assert len(_sent(broker)) == 2
    version.refresh_from_db()
    assert version.status == ItemStatus.INVALID
    assert "no worker finished checking this file in 3 tries" in version.error
    assert "upload it again" in version.error


def test_a_fresh_pending_inspection_is_left_alone(
    pending_version, broker, django_capture_on_commit_callbacks
):
    _age(pending_version, 60)

    with django_capture_on_commit_callbacks(execute=True):
        result = catalog_tasks.inspections_reap()

    assert result == {"resent": 0, "failed": 0}
    assert _sent(broker) == []
    assert ModelVersion.objects.get(pk=pending_version.pk).status == ItemStatus.PENDING


def test_a_data_set_validation_pending_too_long_is_sent_again(
    broker, django_capture_on_commit_callbacks
):
    org = make_organization()
    services.builtin_samples_ensure(organization=org)
    digits = Dataset.objects.get(organization=org, builtin_key="digits")
    assert digits.status == ItemStatus.PENDING
    for row in Dataset.objects.filter(organization=org):
        _age(row, 3600)
    ModelVersion.objects.filter(organization=org).update(status=ItemStatus.READY)

    with django_capture_on_commit_callbacks(execute=True):
        result = services.inspections_reap()

    assert ("dataset", digits.pk) in result.resent
    assert ("catalog.dataset_validate", [digits.pk]) in _sent(broker)


def _upload(org, **fields: object) -> Upload:  # type: ignore[no-untyped-def]
    user = Membership.objects.get(organization=org).user
    upload = services.upload_create(
        organization=org, user=user, kind="model", filename="m.onnx", total_size=100
    )
    if fields:
        Upload.objects.filter(pk=upload.pk).update(**fields)
    return Upload.objects.get(pk=upload.pk)


def test_abandoned_uploads_are_removed_and_fresh_ones_kept(settings, tmp_path):
    settings.EDGESLIM_UPLOAD_RECORD_S = 7 * 24 * 3600
    org = make_organization()
    now = timezone.now()
    fresh = _upload(org)
    services.upload_append_chunk(
        upload=fresh, content_range="bytes 0-9/100", stream=io.BytesIO(b"x" * 10)
    )
    abandoned = _upload(org, expires_at=now - timedelta(seconds=1))
    old_expired = _upload(org, status=UploadStatus.EXPIRED, updated_at=now - timedelta(days=8))
    old_aborted = _upload(org, status=UploadStatus.ABORTED, updated_at=now - timedelta(days=8))
    recent_expired = _upload(org, status=UploadStatus.EXPIRED, updated_at=now - timedelta(days=1))
    old_complete = _upload(org, status=UploadStatus.COMPLETE, updated_at=now - timedelta(days=30))
    for ended in (old_expired, old_aborted, recent_expired, old_complete):
        services.upload_temp_path(ended).unlink(missing_ok=True)

    assert catalog_tasks.uploads_cleanup() == 1  # the abandoned session's partial file

    assert not services.upload_temp_path(abandoned).exists()
    assert Upload.objects.get(pk=abandoned.pk).status == UploadStatus.EXPIRED
    assert services.upload_temp_path(fresh).read_bytes() == b"x" * 10
    assert Upload.objects.get(pk=fresh.pk).status == UploadStatus.RECEIVING
    left = set(Upload.objects.values_list("pk", flat=True))
    assert left == {fresh.pk, abandoned.pk, recent_expired.pk, old_complete.pk}
