"""The catalog's Celery tasks: inspect an uploaded model version, validate a dataset, and the two
sweeps Celery beat sends (stuck inspections, abandoned uploads; the maintenance queue).

Thin on purpose: fetch the row by id, call the service. The service runs the untrusted file in
a separate, memory-capped process, so a hostile upload cannot take this worker down.
"""

from __future__ import annotations

import logging

from webapp.catalog import services
from webapp.catalog.models import Dataset, ModelVersion
from workers.celery import app

log = logging.getLogger(__name__)


@app.task(name=services.MODEL_VERSION_INSPECT_TASK, ignore_result=True, acks_late=True)
def model_version_inspect(version_id: int) -> None:
    version = (
        ModelVersion.objects.select_related("asset", "organization").filter(pk=version_id).first()
    )
    if version is None:  # deleted before the worker got to it
        log.info("model version %s is gone; nothing to inspect", version_id)
        return
    services.model_version_inspect(version=version)


@app.task(name=services.DATASET_VALIDATE_TASK, ignore_result=True, acks_late=True)
def dataset_validate(dataset_id: int) -> None:
    dataset = Dataset.objects.select_related("organization").filter(pk=dataset_id).first()
    if dataset is None:
        log.info("dataset %s is gone; nothing to validate", dataset_id)
        return
    services.dataset_validate(dataset=dataset)


@app.task(name=services.UPLOADS_CLEANUP_TASK, ignore_result=True)
def uploads_cleanup() -> int:
    """Expire abandoned upload sessions (their partial files go) and delete old ended records;
    returns how many partial files were removed."""
    removed = services.upload_expired_cleanup()
    purged = services.upload_records_purge()
    if removed or purged:
        log.info("uploads: %d partial files removed, %d old records deleted", removed, purged)
    return removed


@app.task(name=services.INSPECTIONS_REAP_TASK, ignore_result=True)
def inspections_reap() -> dict[str, int]:
    result = services.inspections_reap()
    return {"resent": len(result.resent), "failed": len(result.failed)}
