"""Writes for the catalog, one module per concern; every public name is importable from here.

- ``uploads``: check names and bytes, store a model or data set upload, chunked upload sessions;
- ``versions``: model versions (numbering, made by jobs, containers, preprocessing, ready or
  invalid, delete) and data set records;
- ``inspection``: what a worker runs for an upload (the catalog's tasks call it);
- ``builtin_samples``: the built-in models and data sets every organisation starts with;
- ``zoo_models``: a new, untrained model from the zoo (detectors included), sized for a data set;
- ``common``: storage names, the live event, and sending the catalog's tasks by name.

Inspection never runs in a web process: services store the bytes, mark the row ``pending`` and
send a worker task by name with ``transaction.on_commit``. Keyword-only and typed; views, the
API, the tasks and the jobs runner call these.
"""

from __future__ import annotations

from webapp.catalog.services.builtin_samples import (
    BUILTIN_DATASET_KEY,
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    BUILTIN_TRAIN_DATASET,
    builtin_samples_ensure,
    builtin_spec,
    builtin_train_epochs,
    datasets_revalidate_stale,
)
from webapp.catalog.services.common import (
    DATASET_VALIDATE_TASK,
    INSPECTIONS_REAP_TASK,
    MODEL_VERSION_INSPECT_TASK,
    UPLOADS_CLEANUP_TASK,
    catalog_event_send,
    filename_normalize,
    storage_delete_quietly,
    storage_name_for,
)
from webapp.catalog.services.inspection import (
    InspectionsReap,
    dataset_validate,
    inspections_reap,
    model_version_inspect,
    work_dir_remove,
)
from webapp.catalog.services.uploads import (
    DATASET_EXTENSIONS,
    EXPORT_HINT,
    MODEL_EXTENSIONS,
    content_range_parse,
    dataset_upload_create,
    max_upload_bytes,
    model_format_from_filename,
    model_upload_create,
    upload_abort,
    upload_append_chunk,
    upload_complete,
    upload_create,
    upload_expired_cleanup,
    upload_records_purge,
    upload_temp_path,
    upload_tmp_dir,
)
from webapp.catalog.services.versions import (
    MAX_SPLIT_SEED,
    ItemInUse,
    dataset_delete,
    dataset_mark_invalid,
    dataset_mark_ready,
    declared_preprocessing,
    model_version_attach_container,
    model_version_create_from_job,
    model_version_delete,
    model_version_mark_invalid,
    model_version_mark_ready,
    model_version_set_file,
    normalization_check,
    split_seed_check,
)
from webapp.catalog.services.zoo_models import zoo_architectures, zoo_model_create

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_DATASET_KEY",
    "BUILTIN_MODELS",
    "BUILTIN_TRAIN_DATASET",
    "DATASET_EXTENSIONS",
    "DATASET_VALIDATE_TASK",
    "EXPORT_HINT",
    "INSPECTIONS_REAP_TASK",
    "MAX_SPLIT_SEED",
    "MODEL_EXTENSIONS",
    "MODEL_VERSION_INSPECT_TASK",
    "UPLOADS_CLEANUP_TASK",
    "InspectionsReap",
    "ItemInUse",
    "builtin_samples_ensure",
    "builtin_spec",
    "builtin_train_epochs",
    "catalog_event_send",
    "content_range_parse",
    "dataset_delete",
    "dataset_mark_invalid",
    "dataset_mark_ready",
    "dataset_upload_create",
    "dataset_validate",
    "datasets_revalidate_stale",
    "declared_preprocessing",
    "filename_normalize",
    "inspections_reap",
    "max_upload_bytes",
    "model_format_from_filename",
    "model_upload_create",
    "model_version_attach_container",
    "model_version_create_from_job",
    "model_version_delete",
    "model_version_inspect",
    "model_version_mark_invalid",
    "model_version_mark_ready",
    "model_version_set_file",
    "normalization_check",
    "split_seed_check",
    "storage_delete_quietly",
    "storage_name_for",
    "upload_abort",
    "upload_append_chunk",
    "upload_complete",
    "upload_create",
    "upload_expired_cleanup",
    "upload_records_purge",
    "upload_temp_path",
    "upload_tmp_dir",
    "work_dir_remove",
    "zoo_architectures",
    "zoo_model_create",
]
