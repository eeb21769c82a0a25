"""The catalog: uploaded models (assets with numbered versions and lineage), datasets, and the
resumable upload sessions that feed them.

State logic stays small and on the rows; every write goes through ``services.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from webapp.accounts.models import OrgScopedModel


class ItemStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    INVALID = "invalid", "Invalid"


class ModelFormat(models.TextChoices):
    TORCH = "torch", "PyTorch weights"
    ONNX = "onnx", "ONNX"


class ModelAsset(OrgScopedModel):
    """A named model of one organisation. Uploads with the same name add versions to it."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    is_builtin = models.BooleanField(default=False)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], name="catalog_asset_name_unique"
            )
        ]

    def __str__(self) -> str:
        return self.name


class ModelVersion(OrgScopedModel):
    """One stored model file: an upload, a built-in sample, or an artifact a job produced.

    Lineage: ``parent`` is the version a job started from, ``produced_by_job_id`` the job
    (owned by the jobs app, referenced by id so the two apps migrate independently) and
    ``recipe`` the recipe that job ran.
    """

    asset = models.ForeignKey(ModelAsset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.FileField(max_length=500, blank=True)
    format = models.CharField(max_length=8, choices=ModelFormat.choices)
    source_filename = models.CharField(
        max_length=255, blank=True, help_text="The uploaded name, kept as metadata only."
    )
    label = models.CharField(
        max_length=40, blank=True, help_text='What a job produced, e.g. "fp32" or "int8".'
    )
    arch = models.CharField(max_length=64, blank=True, help_text="Zoo architecture (torch only).")
    num_classes = models.PositiveIntegerField(null=True, blank=True)
    in_channels = models.PositiveIntegerField(null=True, blank=True)
    input_size = models.PositiveIntegerField(null=True, blank=True, help_text="H = W, in pixels.")
    task = models.CharField(max_length=32, default="classification")
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    # The EdgeSlim compressed container (docs/container-format.md) a weight_coding job wrote for
    # this version: the same weights (exported with BatchNorm unfolded, so its decoded ONNX can
    # differ from this file in layout), deployed instead of the ONNX when chosen.
    container = models.FileField(max_length=500, blank=True)
    container_size = models.BigIntegerField(null=True, blank=True)
    container_sha256 = models.CharField(max_length=64, blank=True)
    container_decoded_size = models.BigIntegerField(
        null=True, blank=True, help_text="Bytes of the ONNX the container decodes to."
    )
    info = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    error = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    produced_by_job_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    recipe = models.JSONField(null=True, blank=True)
    preprocessing = models.JSONField(
        default=dict,
        blank=True,
        help_text="compression.preprocessing.Preprocessing.to_dict(); empty means the data "
        "set's own statistics. Before inspection it may hold only the declared normalization.",
    )
    is_builtin = models.BooleanField(default=False)
    builtin_key = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    inspected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["asset__name", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["asset", "number"], name="catalog_version_number_unique"
            ),
            models.UniqueConstraint(
                fields=["organization", "builtin_key"],
                condition=~models.Q(builtin_key=""),
                name="catalog_version_builtin_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.asset.name} v{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == ItemStatus.READY

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W), when known."""
        if self.in_channels and self.input_size:
            return (self.in_channels, self.input_size, self.input_size)
        return None

    @property
    def params(self) -> int | None:
        value = self.info.get("params") if isinstance(self.info, dict) else None
        return int(value) if isinstance(value, int | float) else None

    @property
    def macs(self) -> int | None:
        value = self.info.get("macs") if isinstance(self.info, dict) else None
        return int(value) if isinstance(value, int | float) else None

    @property
    def declared_normalization(self) -> str:
        """``dataset`` (the data set's own statistics), ``imagenet`` or ``unit``."""
        pre = self.preprocessing if isinstance(self.preprocessing, dict) else {}
        return str(pre.get("normalization") or "dataset")


class DatasetKind(models.TextChoices):
    DIGITS = "digits", "Built-in digits"
    MNIST = "mnist", "Built-in MNIST (5,000 digits)"
    IMAGE_ZIP = "image_zip", "Image-folder zip"
    DETECTION_ZIP = "detection_zip", "Detection zip (YOLO, Pascal VOC or COCO)"
    MNIST_SCENES = "mnist_scenes", "Built-in MNIST scenes (detection)"


BUILTIN_DATASET_KINDS = (DatasetKind.DIGITS, DatasetKind.MNIST)


class DatasetTask(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    DETECTION = "detection", "Object detection"


class Dataset(OrgScopedModel):
    """A dataset: a built-in set (digits, mnist; mnist_scenes for detection), or an uploaded
    image-folder zip (classification) or detection zip (YOLO, Pascal VOC or COCO; an image zip
    whose layout is a detection format becomes one when validated, see docs/detection.md).

    The dataset owns its train/val/test split: ``split_seed`` is chosen when the row is made and
    every load carves the same split from it (a zip's own ``val/`` and ``test/`` folders are
    taken as they are). ``report`` holds ``DatasetReport.to_dict()`` (counts per split,
    ``split_sources``, ``split_seed``, ``preprocessing``) plus ``thumbnails``: ``{class:
    [storage names]}`` of a few PNGs per class, served only through the org-scoped view.
    """

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=DatasetKind.choices)
    file = models.FileField(max_length=500, blank=True)
    source_filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    report = models.JSONField(default=dict, blank=True)
    split_seed = models.PositiveIntegerField(
        default=0, help_text="Seed of the stratified val/test carving; fixed for the row's life."
    )
    num_classes = models.PositiveIntegerField(null=True, blank=True)
    task = models.CharField(
        max_length=32, choices=DatasetTask.choices, default=DatasetTask.CLASSIFICATION
    )
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    error = models.TextField(blank=True)
    is_builtin = models.BooleanField(default=False)
    builtin_key = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    validated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "builtin_key"],
                condition=~models.Q(builtin_key=""),
                name="catalog_dataset_builtin_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_ready(self) -> bool:
        return self.status == ItemStatus.READY

    @property
    def has_split_report(self) -> bool:
        """Whether the stored report counts the test split (reports from before it do not)."""
        totals = self.report.get("totals") if isinstance(self.report, dict) else None
        return isinstance(totals, dict) and "test" in totals

    @property
    def thumbnails(self) -> dict[str, list[str]]:
        value: Any = self.report.get("thumbnails") if isinstance(self.report, dict) else None
        return value if isinstance(value, dict) else {}


class UploadKind(models.TextChoices):
    MODEL = "model", "Model"
    DATASET = "dataset", "Dataset"


class UploadStatus(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    COMPLETE = "complete", "Complete"
    ABORTED = "aborted", "Aborted"
    EXPIRED = "expired", "Expired"


class Upload(OrgScopedModel):
    """A chunked, resumable upload session. Bytes land in a temp file named by ``id`` (a UUID);
    ``complete`` hands the file to the model or dataset service, which stores it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=UploadKind.choices)
    filename = models.CharField(max_length=255, help_text="Normalised original name (metadata).")
    total_size = models.BigIntegerField()
    received = models.BigIntegerField(default=0)
    sha256 = models.CharField(
        max_length=64, blank=True, help_text="Expected, when the client sent it."
    )
    params = models.JSONField(default=dict, blank=True, help_text="name, arch, num_classes, ...")
    status = models.CharField(
        max_length=16, choices=UploadStatus.choices, default=UploadStatus.RECEIVING
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"upload {self.id} ({self.filename})"

    @property
    def temp_name(self) -> str:
        return f"{self.id.hex}.part"
