"""The catalog's Celery tasks: inspect an uploaded model version, validate a dataset, clean up uploads.

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
    return services.upload_expired_cleanup()
