"""Devices, their enrollment codes, deployable artifacts, deployments and on-device results."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings as django_settings
from django.db import models
from django.utils import timezone

from webapp.accounts.models import OrgScopedModel


def secret_hash(secret: str) -> str:
    """SHA-256 of a random secret (credentials and codes carry 128+ random bits: no salt needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Device(OrgScopedModel):
    """An edge device of one organisation, and what its agent last reported."""

    name = models.CharField(max_length=100)
    hardware = models.CharField(max_length=200, blank=True, help_text="e.g. Raspberry Pi 4, 4 GB")
    tags = models.JSONField(default=list, blank=True)
    is_host = models.BooleanField(
        default=False, help_text="The worker host itself, benchmarking through the same agent."
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    credential_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    # The channel of the live agent connection ("" when none): a newer connection replaces it.
    connection_channel = models.CharField(max_length=200, blank=True, default="")
    agent_version = models.CharField(max_length=40, blank=True)
    facts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def is_online(self, *, now: Any = None, window_s: float | None = None) -> bool:
        if not self.connection_channel or self.last_seen is None or self.revoked_at is not None:
            return False
        from device_registry.conf import online_window_s

        window_s = online_window_s() if window_s is None else window_s
        now = now or timezone.now()
        return bool((now - self.last_seen).total_seconds() <= window_s)

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.enrolled_at is None:
            return "awaiting enrollment"
        return "online" if self.is_online() else "offline"


class EnrollmentCode(models.Model):
    """A one-time code that trades for a device credential. Only its hash is stored."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="enrollment_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class DeployableArtifact(OrgScopedModel):
    """An ONNX file that can be pushed to devices, with an optional evaluation set (.npz).

    The catalog's model versions point here (``source``) when they are deployed.
    """

    name = models.CharField(max_length=200)
    file = models.FileField(upload_to="device_artifacts/%Y/%m/")
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    format = models.CharField(
        max_length=16,
        choices=[("onnx", "ONNX"), ("container", "Compressed container")],
        default="onnx",
        help_text="A plain ONNX file, or an EdgeSlim compressed container the agent decodes into "
        "an ONNX before it benchmarks it (docs/container-format.md).",
    )
    decoded_size = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="For a container: the bytes of the ONNX it decodes to (model.onnx + weights.bin).",
    )
    task = models.CharField(
        max_length=32,
        default="classification",
        help_text="classification or detection (a catalog detector's artifact): a detector's "
        "results must carry FPS with and without post-processing, and mAP instead of top-1.",
    )
    eval_file = models.FileField(upload_to="device_artifacts/eval/%Y/%m/", null=True, blank=True)
    eval_sha256 = models.CharField(max_length=64, blank=True)
    eval_size = models.BigIntegerField(null=True, blank=True)
    eval_meta = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the evaluation set holds: dataset_id, dataset, split, split_seed, count, "
        "test_size, cap, preprocessing (see device_registry.eval_sets); empty for an upload's.",
    )
    source = models.CharField(
        max_length=200, blank=True, help_text="Where it came from, e.g. model_version:12 or job:3."
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_eval_set(self) -> bool:
        return bool(self.eval_file)

    @property
    def is_container(self) -> bool:
        return self.format == "container"


class TargetKind(models.TextChoices):
    DEVICE = "device", "One device"
    TAG = "tag", "Every device with a tag"
    FLEET = "fleet", "The whole fleet"


class Deployment(OrgScopedModel):
    """One artifact pushed to a set of devices with benchmark settings, signed once."""

    artifact = models.ForeignKey(
        DeployableArtifact, on_delete=models.PROTECT, related_name="deployments"
    )
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices)
    target_value = models.CharField(max_length=100, blank=True)
    settings = models.JSONField(default=dict)
    issued_at = models.BigIntegerField(help_text="Milliseconds since the epoch, in the manifest.")
    signature = models.TextField(help_text="Base64 Ed25519 signature of the manifest.")
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(
        help_text="The deadline: a target that has not ended by then is marked timed out "
        "(EDGESLIM_DEPLOYMENT_TIMEOUT_S after creation unless the deployment set its own).",
    )
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    ended_at = models.DateTimeField(
        null=True, blank=True, help_text="When its last target ended (a result, cancel, expiry)."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["expires_at"],
                name="deployment_open_expiry",
                condition=models.Q(ended_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"Deployment {self.pk} of {self.artifact}"

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class TargetStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DOWNLOADING = "downloading", "Downloading"
    VERIFYING = "verifying", "Verifying"
    BENCHMARKING = "benchmarking", "Benchmarking"
    EVALUATING = "evaluating", "Evaluating"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    TIMED_OUT = "timed_out", "Timed out"


# A target in one of these has ended: it is never sent to its device again, and a late result
# is stored (acknowledged) without changing it.
FINISHED_STATUSES = (
    TargetStatus.SUCCEEDED,
    TargetStatus.FAILED,
    TargetStatus.CANCELLED,
    TargetStatus.TIMED_OUT,
)


class DeploymentTarget(models.Model):
    """One device of a deployment and how far it got."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="targets")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="targets")
    status = models.CharField(
        max_length=16, choices=TargetStatus.choices, default=TargetStatus.PENDING
    )
    message = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["device__name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "device"], name="deployment_target_unique"
            )
        ]
        indexes = [
            # The heartbeat's look-up of targets a device has not been sent yet.
            models.Index(
                fields=["device", "deployment"],
                name="target_pending_by_device",
                condition=models.Q(status="pending"),
            )
        ]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class DeploymentResult(models.Model):
    """One result an agent reported, stored once per (deployment, device, seq)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="results")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="results")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment_id", "device_id", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "device", "seq"], name="deployment_result_unique"
            )
        ]
