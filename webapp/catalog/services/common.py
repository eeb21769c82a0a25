"""Plumbing the catalog's services share: storage names and writes, the live event, and
sending the catalog's Celery tasks by name (on commit)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from webapp.accounts.models import Organization
from workers.celery import app as celery_app

log = logging.getLogger(__name__)

# The catalog's Celery tasks (webapp/catalog/tasks.py), sent by name: services never import the
# task module. ``catalog.*`` names go to the catalog queue, the two sweeps that beat sends to the
# maintenance queue (workers/celery.py).
MODEL_VERSION_INSPECT_TASK = "catalog.model_version_inspect"
DATASET_VALIDATE_TASK = "catalog.dataset_validate"
UPLOADS_CLEANUP_TASK = "catalog.uploads_cleanup"
INSPECTIONS_REAP_TASK = "catalog.inspections_reap"
_CHUNK = 1024 * 1024


def _source_chunks(
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None, path: Path | str | None
) -> Iterator[bytes]:
    if uploaded_file is not None:
        if isinstance(uploaded_file, UploadedFile):
            uploaded_file.seek(0)
            yield from uploaded_file.chunks(_CHUNK)
        else:
            uploaded_file.seek(0)
            while block := uploaded_file.read(_CHUNK):
                yield block
        return
    assert path is not None
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            yield block


def _head(uploaded_file: UploadedFile[bytes] | IO[bytes] | None, path: Path | str | None) -> bytes:
    if uploaded_file is not None:
        uploaded_file.seek(0)
        head = uploaded_file.read(16)
        uploaded_file.seek(0)
        return bytes(head)
    assert path is not None
    with open(path, "rb") as fh:
        return fh.read(16)


def _hash_and_size(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for block in chunks:
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _store(
    *,
    uploaded_file: UploadedFile[bytes] | IO[bytes] | None,
    path: Path | str | None,
    storage_name: str,
) -> str:
    """Save into the default storage under ``storage_name`` (generated, never the user's name)."""
    if uploaded_file is not None:
        uploaded_file.seek(0)
        return default_storage.save(storage_name, File(uploaded_file))
    assert path is not None
    with open(path, "rb") as fh:
        return default_storage.save(storage_name, File(fh))


def storage_name_for(organization: Organization, folder: str, ext: str) -> str:
    return f"catalog/{organization.pk}/{folder}/{uuid.uuid4().hex}{ext}"


def storage_delete_quietly(name: str) -> None:
    if not name:
        return
    try:
        default_storage.delete(name)
    except Exception:  # a file that is already gone is fine; log anything else
        log.warning("could not delete stored file %s", name, exc_info=True)


def catalog_event_send(*, organization_id: int, item: str, pk: int, status: str) -> None:
    """Tell the organisation's open pages that a catalog item changed (``catalog.updated``)."""
    from webapp.live.services import org_event_send

    try:
        org_event_send(
            organization_id=organization_id,
            kind="catalog.updated",
            payload={"item": item, "id": pk, "status": status},
        )
    except Exception:  # a page missing one live update is not worth failing the write for
        log.warning("catalog.updated event not sent for %s %s", item, pk, exc_info=True)


def _enqueue(task_name: str, pk: int) -> None:
    transaction.on_commit(lambda: celery_app.send_task(task_name, args=(pk,)))


def filename_normalize(name: str, *, max_length: int = 200) -> str:
    """A safe display form of an uploaded name: the last path part, NFC, no control characters,
    at most ``max_length`` characters with the extension kept. Never used as a storage name."""
    name = unicodedata.normalize("NFC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if not name:
        return "upload"
    if len(name) > max_length:
        stem, ext = os.path.splitext(name)
        ext = ext[:16]
        name = stem[: max_length - len(ext) - 1] + "…" + ext
    return name


def _extension(filename: str) -> str:
    return os.path.splitext(filename)[1].lower()
