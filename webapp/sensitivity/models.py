"""A layer sensitivity analysis: one model version, one data set, a few pruning ratios.

Its own row rather than a kind of compression Job: it runs no recipe, produces no model
version, and its result is a table (``result``: :meth:`SensitivityResult.to_dict`), not a
report; the compare, fleet and Pareto views that read jobs never have to step around it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from webapp.accounts.models import OrgScopedModel


class AnalysisStatus(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"


class SensitivityAnalysis(OrgScopedModel):
    model_version = models.ForeignKey(
        "catalog.ModelVersion", on_delete=models.PROTECT, related_name="sensitivity_analyses"
    )
    dataset = models.ForeignKey(
        "catalog.Dataset", on_delete=models.PROTECT, related_name="sensitivity_analyses"
    )
    ratios = models.JSONField(help_text="The pruning ratios, ascending.")
    importance = models.CharField(max_length=16, default="l1")
    round_to = models.PositiveIntegerField(default=1)
    status = models.CharField(
        max_length=16, choices=AnalysisStatus.choices, default=AnalysisStatus.QUEUED
    )
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sensitivity_analyses",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"Sensitivity {self.pk}"

    @property
    def is_terminal(self) -> bool:
        return self.status in (AnalysisStatus.SUCCEEDED, AnalysisStatus.FAILED)
