"""What the dashboard shows: recent jobs with their verdicts, the best version of each model,
the device fleet, what needs attention, and the activity feed (the reads behind
``webapp.views.home`` and ``webapp.views.activity``).

It sits at the project level, above the apps it reads (catalog, jobs, devices): the ``live`` app
below them only sends events, so apps that send events never import what reads them.

The activity feed is read from rows that are already persisted (job status events, model and
dataset uploads, deployments, device enrollments), merged and ordered by time. Nothing writes an
activity row, so the feed survives reloads without touching the services that own those rows,
and the live socket only has to say "something changed" for the page to re-read it.

Every read here is read-only and scoped to one organisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from device_registry.models import FINISHED_STATUSES, Deployment, DeploymentTarget, Device
from webapp.accounts.models import Organization
from webapp.catalog.models import Dataset, ItemStatus, ModelAsset, ModelVersion
from webapp.jobs.models import Job, JobEvent, JobEventKind, JobStatus

ATTENTION_WINDOW_DAYS = 14


# --- verdicts and accuracies, read defensively from job reports ---------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _percent(value: Any) -> float | None:
    """A test accuracy in percent, or None when the value is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value <= 100.0 else None


def job_verdict(job: Job) -> str | None:
    """``"met"``, ``"missed"`` or None (no report, or a recipe with no accuracy limit)."""
    met = _dict(_dict(job.report).get("targets")).get("met")
    if met is True:
        return "met"
    if met is False:
        return "missed"
    return None


def job_final_accuracy(job: Job) -> float | None:
    return _percent(_dict(_dict(job.report).get("final")).get("accuracy"))


# --- recent jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    job: Job
    verdict: str | None
    accuracy: float | None


def recent_jobs(*, organization: Organization, limit: int = 8) -> list[JobRow]:
    jobs = (
        Job.objects.for_org(organization)
        .select_related("model_version__asset", "created_by")
        .order_by("-created_at", "-id")[:limit]
    )
    return [JobRow(job, job_verdict(job), job_final_accuracy(job)) for job in jobs]


def job_counts(*, organization: Organization) -> dict[str, int]:
    """Jobs per status (every status present, zero when none)."""
    counts = dict.fromkeys(JobStatus.values, 0)
    for status in Job.objects.for_org(organization).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- the best version of each model --------------------------------------------------------------


@dataclass(frozen=True)
class BestVersion:
    asset: ModelAsset
    version: ModelVersion | None
    accuracy: float | None
    ready_versions: int


def _version_accuracies(organization: Organization) -> dict[int, float]:
    """Test accuracy per model version id, from what job reports measured.

    A version a job produced gets that job's final accuracy; the version a job started from gets
    the baseline the job measured; a version whose ``info`` records a test accuracy gets that.
    The highest figure wins when several reports measured the same version.
    """
    best: dict[int, float] = {}

    def offer(version_id: int | None, accuracy: float | None) -> None:
        if version_id is not None and accuracy is not None:
            best[version_id] = max(accuracy, best.get(version_id, accuracy))

    produced: dict[int, list[int]] = {}
    for vid, job_id in (
        ModelVersion.objects.for_org(organization)
        .filter(produced_by_job_id__isnull=False, status=ItemStatus.READY)
        .values_list("pk", "produced_by_job_id")
    ):
        if job_id is not None:
            produced.setdefault(job_id, []).append(vid)
    finished = Job.objects.for_org(organization).filter(
        status=JobStatus.SUCCEEDED, report__isnull=False
    )
    for job in finished.only("pk", "model_version_id", "report"):
        report = _dict(job.report)
        offer(job.model_version_id, _percent(_dict(report.get("baseline")).get("accuracy")))
        for vid in produced.get(job.pk, []):
            offer(vid, job_final_accuracy(job))
    for vid, info in (
        ModelVersion.objects.for_org(organization)
        .filter(status=ItemStatus.READY)
        .values_list("pk", "info")
    ):
        info = _dict(info)
        offer(vid, _percent(info.get("test_accuracy", _dict(info.get("metrics")).get("accuracy"))))
    return best


def best_versions(*, organization: Organization, limit: int = 8) -> list[BestVersion]:
    """Each model (most recent first) with its ready version of the highest test accuracy.

    Without any measured accuracy the newest ready version stands in, with ``accuracy`` None.
    """
    accuracies = _version_accuracies(organization)
    assets = ModelAsset.objects.for_org(organization).order_by("-created_at", "-id")[:limit]
    versions: dict[int, list[ModelVersion]] = {}
    for version in (
        ModelVersion.objects.for_org(organization)
        .filter(asset__in=[a.pk for a in assets], status=ItemStatus.READY)
        .select_related("asset")
        .order_by("-number")
    ):
        versions.setdefault(version.asset_id, []).append(version)
    rows = []
    for asset in assets:
        ready = versions.get(asset.pk, [])
        measured = [v for v in ready if v.pk in accuracies]
        if measured:
            top = max(measured, key=lambda v: (accuracies[v.pk], v.number))
            rows.append(BestVersion(asset, top, accuracies[top.pk], len(ready)))
        else:
            rows.append(BestVersion(asset, ready[0] if ready else None, None, len(ready)))
    return rows


# --- devices ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    online: list[Device]
    offline: list[Device]
    awaiting: list[Device]

    @property
    def total(self) -> int:
        return len(self.online) + len(self.offline) + len(self.awaiting)


def fleet(*, organization: Organization) -> Fleet:
    """The organisation's unrevoked devices, split by state."""
    devices = Device.objects.for_org(organization).filter(revoked_at__isnull=True)
    online, offline, awaiting = [], [], []
    for device in devices.order_by("name", "id"):
        state = device.state
        if state == "online":
            online.append(device)
        elif state == "offline":
            offline.append(device)
        else:
            awaiting.append(device)
    return Fleet(online, offline, awaiting)


# --- what needs attention --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attention:
    text: str
    url: str
    link_text: str
    severity: str = "error"  # "error" or "warning"
    at: datetime | None = None


def attention_items(
    *, organization: Organization, offline: Iterable[Device] = (), limit: int = 8
) -> list[Attention]:
    """Recent failed jobs, refused uploads, and offline devices with deployments waiting."""
    since = timezone.now() - timedelta(days=ATTENTION_WINDOW_DAYS)
    items: list[Attention] = []
    for job in (
        Job.objects.for_org(organization)
        .filter(status=JobStatus.FAILED, created_at__gte=since)
        .order_by("-finished_at", "-id")[:limit]
    ):
        # The short message first; else the last line of the error (a traceback's exception).
        reason = job.message.strip() or next(iter(job.error.strip().splitlines()[-1:]), "")
        items.append(
            Attention(
                text=f"failed{': ' + reason[:160] if reason else ''}",
                url=reverse("jobs:detail", args=[job.pk]),
                link_text=f"Job #{job.pk} {job.name}",
                at=job.finished_at or job.created_at,
            )
        )
    for version in (
        ModelVersion.objects.for_org(organization)
        .filter(status=ItemStatus.INVALID, created_at__gte=since)
        .select_related("asset")
        .order_by("-created_at")[:limit]
    ):
        items.append(
            Attention(
                text=f"was refused: {version.error.strip()[:160] or 'the inspection failed'}",
                url=reverse("catalog:model_version_detail", args=[version.pk]),
                link_text=f"Model {version}",
                at=version.created_at,
            )
        )
    for dataset in (
        Dataset.objects.for_org(organization)
        .filter(status=ItemStatus.INVALID, created_at__gte=since)
        .order_by("-created_at")[:limit]
    ):
        items.append(
            Attention(
                text=f"was refused: {dataset.error.strip()[:160] or 'the validation failed'}",
                url=reverse("catalog:dataset_detail", args=[dataset.pk]),
                link_text=f"Dataset {dataset.name}",
                at=dataset.created_at,
            )
        )
    offline_ids = [d.pk for d in offline]
    waiting: dict[int, int] = {}
    for device_id in (
        DeploymentTarget.objects.filter(device_id__in=offline_ids)
        .exclude(status__in=FINISHED_STATUSES)
        .values_list("device_id", flat=True)
    ):
        waiting[device_id] = waiting.get(device_id, 0) + 1
    for device in offline:
        if device.pk in waiting:
            n = waiting[device.pk]
            items.append(
                Attention(
                    text=f"is offline with {n} deployment{'s' if n != 1 else ''} waiting",
                    url=reverse("devices:detail", args=[device.pk]),
                    link_text=f"Device {device.name}",
                    severity="warning",
                    at=device.last_seen,
                )
            )
    epoch = datetime.min.replace(tzinfo=timezone.get_current_timezone())
    items.sort(key=lambda item: item.at or epoch, reverse=True)
    return items[:limit]


# --- the activity feed -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """One line of the feed: ``<actor> <link_text> <text>``, linked to ``url``."""

    at: datetime
    kind: str
    link_text: str
    url: str
    text: str
    actor: str = ""
    badge: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_STATUS_TEXT = {
    JobStatus.QUEUED: "was queued",
    JobStatus.RUNNING: "started",
    JobStatus.SUCCEEDED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "was cancelled",
}


def _job_status_text(job: Job, payload: dict[str, Any]) -> tuple[str, str]:
    status = str(payload.get("status", ""))
    text = _STATUS_TEXT.get(status, f"is {status.lower() or 'updated'}")  # type: ignore[call-overload]
    if status == JobStatus.RUNNING and int(payload.get("attempt") or 1) > 1:
        text = f"restarted (attempt {payload['attempt']})"
    if status == JobStatus.SUCCEEDED:
        verdict = job_verdict(job)
        if verdict is not None:
            return f"{text}: targets {verdict}", "ok" if verdict == "met" else "err"
        return text, "ok"
    if status == JobStatus.FAILED:
        reason = str(payload.get("message") or "").strip()
        return (f"{text}: {reason[:140]}" if reason else text), "err"
    return text, "info" if status == JobStatus.RUNNING else ""


def activity_feed(*, organization: Organization, limit: int = 20) -> list[Activity]:
    """The newest ``limit`` things that happened in the organisation, newest first."""
    rows: list[Activity] = []
    events = (
        JobEvent.objects.filter(job__organization=organization, kind=JobEventKind.STATUS)
        .select_related("job__created_by")
        .order_by("-ts", "-id")[:limit]
    )
    for event in events:
        job = event.job
        text, badge = _job_status_text(job, _dict(event.payload))
        queued = str(_dict(event.payload).get("status")) == JobStatus.QUEUED
        rows.append(
            Activity(
                at=event.ts,
                kind="job",
                actor=job.created_by.get_username() if queued and job.created_by else "",
                link_text=f"Job #{job.pk} {job.name}",
                url=reverse("jobs:detail", args=[job.pk]),
                text=text,
                badge=badge,
            )
        )
    uploads = (
        ModelVersion.objects.for_org(organization)
        .filter(produced_by_job_id__isnull=True, is_builtin=False)
        .select_related("asset", "created_by")
        .order_by("-created_at")[:limit]
    )
    rows += [
        _upload_activity(
            version,
            kind="model",
            link_text=f"model {version}",
            url=reverse("catalog:model_version_detail", args=[version.pk]),
        )
        for version in uploads
    ]
    datasets = (
        Dataset.objects.for_org(organization)
        .filter(is_builtin=False)
        .select_related("created_by")
        .order_by("-created_at")[:limit]
    )
    rows += [
        _upload_activity(
            dataset,
            kind="dataset",
            link_text=f"dataset {dataset.name}",
            url=reverse("catalog:dataset_detail", args=[dataset.pk]),
        )
        for dataset in datasets
    ]
    deployments = (
        Deployment.objects.for_org(organization)
        .select_related("artifact", "created_by")
        .order_by("-created_at")[:limit]
    )
    for deployment in deployments:
        target = {"device": "one device", "tag": f"devices tagged {deployment.target_value}"}.get(
            deployment.target_kind, "the whole fleet"
        )
        rows.append(
            Activity(
                at=deployment.created_at,
                kind="deployment",
                actor=deployment.created_by.get_username() if deployment.created_by else "",
                link_text=f"Deployment #{deployment.pk} of {deployment.artifact.name}",
                url=reverse("devices:deployment", args=[deployment.pk]),
                text=f"went out to {target}",
            )
        )
    enrolled = (
        Device.objects.for_org(organization)
        .filter(Q(enrolled_at__isnull=False) | Q(revoked_at__isnull=False))
        .order_by("-enrolled_at")[:limit]
    )
    for device in enrolled:
        url = reverse("devices:detail", args=[device.pk])
        if device.enrolled_at is not None:
            rows.append(
                Activity(
                    at=device.enrolled_at,
                    kind="device",
                    link_text=f"Device {device.name}",
                    url=url,
                    text="enrolled",
                )
            )
        if device.revoked_at is not None:
            rows.append(
                Activity(
                    at=device.revoked_at,
                    kind="device",
                    link_text=f"Device {device.name}",
                    url=url,
                    text="was revoked",
                    badge="err",
                )
            )
    rows.sort(key=lambda row: row.at, reverse=True)
    return rows[:limit]


def _upload_activity(
    item: ModelVersion | Dataset, *, kind: str, link_text: str, url: str
) -> Activity:
    """The feed line of an uploaded model version or data set (refused ones in red)."""
    refused = item.status == ItemStatus.INVALID
    return Activity(
        at=item.created_at,
        kind=kind,
        actor=item.created_by.get_username() if item.created_by else "",
        link_text=link_text,
        url=url,
        text="was uploaded" + (" and refused" if refused else ""),
        badge="err" if refused else "",
    )
