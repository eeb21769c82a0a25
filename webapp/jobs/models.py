"""A compression Job (one recipe run on one model and data set) and its persisted events."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webapp.accounts.models import OrgScopedModel


class JobStatus(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobQueue(models.TextChoices):
    CPU = "cpu", "CPU"
    GPU = "gpu", "GPU"


class Job(OrgScopedModel):
    """One recipe run. The worker owns it while it holds an unexpired lease.

    ``attempts`` counts the runs that took the lease; a run that dies leaves the lease to expire
    and the redelivered task resumes after the last completed stage, which it pulls from storage
    (``jobs/<uid>/``, see ``webapp/jobs/artifacts.py``) into its scratch folder
    ``DATA_DIR/jobs/<uid>/``.

    ``uid`` names the job's folders: unique to this database, so a data folder or a bucket that
    outlived an earlier database never hands an old job's files to a new job with the same id.
    """

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    model_version = models.ForeignKey(
        "catalog.ModelVersion", on_delete=models.PROTECT, related_name="jobs"
    )
    dataset = models.ForeignKey("catalog.Dataset", on_delete=models.PROTECT, related_name="jobs")
    recipe = models.JSONField(help_text="The validated recipe, as parse_recipe accepts it.")
    recipe_yaml = models.TextField(blank=True)
    target_device = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=8, choices=JobQueue.choices, default=JobQueue.CPU)
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    completed_stages = models.PositiveIntegerField(default=0)
    stage_count = models.PositiveIntegerField(default=0)
    event_seq = models.PositiveIntegerField(default=0, help_text="Last JobEvent.seq handed out.")
    report = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="jobs",
    )
    duplicated_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="duplicates"
    )
    sweep = models.ForeignKey(
        "jobs.Sweep", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    sweep_point = models.JSONField(
        null=True, blank=True, help_text="A sweep child's grid values, by parameter name."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"Job {self.pk}: {self.name}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return not self.is_terminal


class JobEventKind(models.TextChoices):
    STAGE_STARTED = "stage_started", "Stage started"
    STAGE_FINISHED = "stage_finished", "Stage finished"
    EPOCH = "epoch", "Epoch"
    PROGRESS = "progress", "Progress"
    LOG = "log", "Log"
    STATUS = "status", "Status"


class JobEvent(models.Model):
    """One thing that happened to a job, numbered per job so a page can resume after ``seq``."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=JobEventKind.choices)
    payload = models.JSONField(default=dict)
    ts = models.DateTimeField()

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_job_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.kind}"


class SweepBaseline(models.TextChoices):
    PENDING = "pending", "Pending"
    MEASURING = "measuring", "Measuring"
    DONE = "done", "Measured"
    FAILED = "failed", "Failed"


class Sweep(OrgScopedModel):
    """One recipe run over a grid of up to two stage parameters, as child Jobs.

    The baseline is measured once (``baseline``: its metrics, identity and stored ONNX) before
    the children are queued; every child reuses it. The sweep's status is derived from the
    baseline and the children (``webapp.jobs.sweep_selectors``), never stored twice.
    """

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    model_version = models.ForeignKey(
        "catalog.ModelVersion", on_delete=models.PROTECT, related_name="sweeps"
    )
    dataset = models.ForeignKey("catalog.Dataset", on_delete=models.PROTECT, related_name="sweeps")
    recipe = models.JSONField(help_text="The base recipe (validated); each child changes the grid.")
    recipe_yaml = models.TextField(blank=True)
    grid = models.JSONField(help_text="The swept parameters: [{stage, method, param, values}].")
    constraints = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the recommendation must meet: max_accuracy_drop, device, max_p50_ms.",
    )
    queue = models.CharField(max_length=8, choices=JobQueue.choices, default=JobQueue.CPU)
    baseline_status = models.CharField(
        max_length=16, choices=SweepBaseline.choices, default=SweepBaseline.PENDING
    )
    baseline = models.JSONField(null=True, blank=True)
    progress = models.FloatField(default=0.0, help_text="The baseline measurement's progress.")
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sweeps",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Sweep {self.pk}: {self.name}"
