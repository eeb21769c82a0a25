"""Reads for sweeps: a sweep of the organisation, its children, and its status, which is
derived from the shared baseline and the children (never stored twice)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from webapp.accounts.models import Organization
from webapp.jobs.models import TERMINAL_STATUSES, Job, JobStatus, Sweep, SweepBaseline


def sweep_list(*, organization: Organization) -> QuerySet[Sweep]:
    return (
        Sweep.objects.for_org(organization)
        .select_related("model_version__asset", "dataset", "created_by")
        .prefetch_related("children")  # lists show each sweep's state: one query for all
        .order_by("-created_at", "-id")
    )


def sweep_get(*, organization: Organization | None, pk: Any) -> Sweep:
    """One sweep of ``organization`` or Http404 (also for a foreign or malformed id)."""
    if organization is None:
        raise Http404("No organisation selected.")
    try:
        return sweep_list(organization=organization).get(pk=pk)
    except (Sweep.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such sweep.") from exc


def sweep_children(*, sweep: Sweep) -> list[Job]:
    """The children in grid order (they are created in that order); prefetched ones are
    reused (:func:`sweep_list`)."""
    return sorted(sweep.children.all(), key=lambda job: job.pk)


def sweep_state(*, sweep: Sweep, children: list[Job]) -> dict[str, Any]:
    """Status, counts and overall progress (the baseline counts as one more child).

    ``status``: QUEUED (baseline not started), RUNNING, SUCCEEDED (every child ended and at
    least one succeeded), FAILED (the baseline failed, or no child succeeded) or CANCELLED.
    """
    counts = {s: 0 for s in JobStatus.values}
    for job in children:
        counts[job.status] += 1
    done = all(job.status in TERMINAL_STATUSES for job in children)
    base_done = sweep.baseline_status == SweepBaseline.DONE
    if sweep.baseline_status == SweepBaseline.FAILED and not sweep.cancel_requested:
        status = JobStatus.FAILED
    elif done and sweep.cancel_requested and not counts[JobStatus.SUCCEEDED]:
        status = JobStatus.CANCELLED
    elif (done and base_done) or (done and sweep.cancel_requested):
        status = JobStatus.SUCCEEDED if counts[JobStatus.SUCCEEDED] else JobStatus.FAILED
    elif sweep.baseline_status == SweepBaseline.PENDING:
        status = JobStatus.QUEUED
    else:
        status = JobStatus.RUNNING
    base_progress = 1.0 if base_done else sweep.progress
    child_progress = sum(1.0 if j.is_terminal else j.progress for j in children)
    progress = (base_progress + child_progress) / (len(children) + 1)
    finished = [j.finished_at for j in children if j.finished_at]
    return {
        "status": str(status),
        "baseline_status": sweep.baseline_status,
        "progress": round(progress, 4),
        "message": sweep.message,
        "error": sweep.error,
        "counts": {k.lower(): v for k, v in counts.items()},
        "total": len(children),
        "finished_at": max(finished).isoformat() if done and finished else None,
    }
