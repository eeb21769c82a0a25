"""Reads for jobs. Every query starts from the organisation: another organisation's id finds
nothing (views and the API answer 404)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from webapp.accounts.models import Organization
from webapp.jobs import artifacts
from webapp.jobs.formatting import metric_name, metric_rows
from webapp.jobs.models import Job, JobEvent, JobEventKind, JobStatus

LOG_TAIL_LINES = 200


def job_list(
    *, organization: Organization, status: str | None = None, finished: bool = False
) -> QuerySet[Job]:
    qs = Job.objects.for_org(organization).select_related(
        "model_version__asset", "dataset", "created_by"
    )
    if status:
        qs = qs.filter(status=status)
    if finished:
        qs = qs.filter(status=JobStatus.SUCCEEDED)
    return qs.order_by("-created_at", "-id")


def job_get(*, organization: Organization | None, pk: Any) -> Job:
    """One job of ``organization`` or Http404 (also for a foreign or malformed id)."""
    if organization is None:
        raise Http404("No organisation selected.")
    try:
        return job_list(organization=organization).get(pk=pk)
    except (Job.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise Http404("No such job.") from exc


def job_event_list(*, job: Job, after_seq: int = 0, limit: int | None = None) -> QuerySet[JobEvent]:
    """The job's events after ``after_seq``, in order (a page renders these, then goes live)."""
    qs = JobEvent.objects.filter(job=job, seq__gt=after_seq).order_by("seq")
    return qs[:limit] if limit else qs


STAGE_STATUS_LABELS = {
    "pending": "pending",
    "running": "running",
    "resumed": "running (resumed)",
    "measuring": "measuring",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "skipped": "not run",
}
_UNFINISHED = ("running", "resumed", "measuring")


def _is_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text or text.lstrip("\n").startswith('  File "')


def _split_tracebacks(logs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Log lines for people, and the traceback texts (deduplicated: the runner logs the error
    with its traceback and then the last frames again) for a "details" disclosure."""
    tracebacks: list[str] = []
    for entry in logs:
        text = entry["line"].strip("\n")
        if _is_traceback(text) and not any(text.strip() in t for t in tracebacks):
            tracebacks = [t for t in tracebacks if t.strip() not in text] + [text]
    if not tracebacks:
        return logs, []
    plain = [
        e
        for e in logs
        if not _is_traceback(e["line"])
        and not (e["line"].strip() and any(e["line"].strip() in t for t in tracebacks))
    ]
    return plain, tracebacks


def job_history(*, job: Job) -> dict[str, Any]:
    """Everything a live page needs to draw the story so far, from the persisted events.

    The baseline (events with ``stage == -1``) is kept apart from the recipe's stages. Once the
    job has ended, a stage it left running is marked ``failed`` or ``cancelled`` and stages it
    never reached ``skipped``. ``last_seq`` is the seq the page has rendered up to; live events
    at or below it are skipped.
    """
    baseline: dict[str, Any] = {"status": "pending", "metrics": {}}
    stages: list[dict[str, Any]] = [
        {
            "index": i,
            "method": s.get("method"),
            "name": s.get("name") or s.get("method"),
            "status": "pending",
            "metrics": {},
        }
        for i, s in enumerate(job.recipe.get("stages", []))
    ]

    def target(idx: Any) -> dict[str, Any] | None:
        if idx == -1:
            return baseline
        if isinstance(idx, int) and 0 <= idx < len(stages):
            return stages[idx]
        return None

    epochs: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    phase: dict[str, Any] = {}
    last_seq = 0
    events = job_event_list(job=job).exclude(
        Q(kind=JobEventKind.PROGRESS) & ~Q(payload__has_key="phase")
    )
    for event in events.iterator():
        last_seq = max(last_seq, event.seq)
        p = event.payload
        row = target(p.get("stage"))
        if event.kind == JobEventKind.STAGE_STARTED and row is not None:
            row["status"] = "resumed" if p.get("resumed") else "running"
            phase = {}
        elif event.kind == JobEventKind.STAGE_FINISHED and row is not None:
            row["status"] = "done"
            row["metrics"] = p.get("metrics", {})
            phase = {}
        elif event.kind == JobEventKind.PROGRESS:
            phase = {"phase": p.get("phase"), "stage": p.get("stage")}
            if p.get("phase") == "measuring" and row is not None and row["status"] != "done":
                row["status"] = "measuring"
        elif event.kind == JobEventKind.EPOCH:
            epochs.append(p)
        elif event.kind == JobEventKind.LOG:
            logs.append({"seq": event.seq, "ts": event.ts.isoformat(), "line": p.get("line", "")})
    if job.is_terminal:
        ended = "cancelled" if job.status == JobStatus.CANCELLED else "failed"
        for row in [baseline, *stages]:
            if row["status"] in _UNFINISHED:
                row["status"] = "done" if job.status == JobStatus.SUCCEEDED else ended
            elif row["status"] == "pending" and job.status != JobStatus.SUCCEEDED:
                row["status"] = "skipped"
        phase = {}
    metric = metric_name(job.model_version.task)
    for row in [baseline, *stages]:
        row["label"] = STAGE_STATUS_LABELS.get(row["status"], row["status"])
        row["rows"] = metric_rows(row["metrics"], metric=metric)
    plain, tracebacks = _split_tracebacks(logs)
    last_seq = max(last_seq, job.event_seq)
    return {
        "baseline": baseline,
        "stages": stages,
        "epochs": epochs,
        "log_tail": plain[-LOG_TAIL_LINES:],
        "tracebacks": tracebacks,
        "phase": phase,
        "last_seq": last_seq,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "metric": metric,  # what accuracy holds: "top-1", or "mAP@0.5" for a detector
    }


# --- queue position, elapsed time, estimate ----------------------------------------------------

# How many recent finished jobs an estimate looks at, and how many of them it takes the median of.
ESTIMATE_LOOKBACK = 300
ESTIMATE_SAMPLES = 10


@dataclass(frozen=True)
class JobTiming:
    """Where a job stands in time.

    ``queue_position`` is 1 for the next QUEUED job of its queue to start (None once started);
    ``elapsed_s`` counts from the start (to the end once finished); ``estimate_s`` is the whole
    run's expected duration from the history (None: no estimate yet) and ``remaining_s`` what is
    left of it for a running job; ``basis`` says in words what the estimate comes from.
    """

    queue_position: int | None
    queued_ahead_running: int
    elapsed_s: float | None
    estimate_s: float | None
    remaining_s: float | None
    basis: str


def _methods(recipe: Any) -> tuple[str, ...]:
    stages = recipe.get("stages", []) if isinstance(recipe, dict) else []
    out = []
    for s in stages:
        out.append(str(s.get("method") if isinstance(s, dict) else s))
    return tuple(out)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _finished_durations(organization: Organization) -> list[tuple[tuple[str, ...], int, float]]:
    """``(methods, model_version_id, seconds)`` of the organisation's recent succeeded jobs."""
    rows = (
        Job.objects.for_org(organization)
        .filter(status=JobStatus.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("recipe", "model_version_id", "started_at", "finished_at")[:ESTIMATE_LOOKBACK]
    )
    return [
        (_methods(recipe), mv_id, (finished - started).total_seconds())
        for recipe, mv_id, started, finished in rows
        if started is not None and finished is not None
    ]


def _estimate(
    job: Job, history: list[tuple[tuple[str, ...], int, float]]
) -> tuple[float | None, str]:
    methods = _methods(job.recipe)
    same_model = [d for m, mv, d in history if m == methods and mv == job.model_version_id]
    if same_model:
        picked = same_model[:ESTIMATE_SAMPLES]
        what = "the same stages on this model"
    else:
        picked = [d for m, _, d in history if m == methods][:ESTIMATE_SAMPLES]
        what = "the same stages"
    if not picked:
        return None, "no estimate yet: no finished job with these stages"
    runs = "run" if len(picked) == 1 else f"median of {len(picked)} runs"
    return _median(picked), f"{runs} of {what}"


def job_timing_map(
    *, organization: Organization, jobs: list[Job], now: datetime | None = None
) -> dict[int, JobTiming]:
    """Queue position, elapsed time and estimate for each of ``jobs`` (of ``organization``).

    The position counts QUEUED jobs of the same queue across every organisation (they share the
    workers), oldest first; ``queued_ahead_running`` is how many of that queue run right now.
    """
    now = now or timezone.now()
    history = _finished_durations(organization)
    queues = {j.queue for j in jobs if j.status == JobStatus.QUEUED}
    order: dict[str, list[int]] = {}
    running: dict[str, int] = {}
    for queue in queues:
        order[queue] = list(
            Job.objects.filter(status=JobStatus.QUEUED, queue=queue)
            .order_by("created_at", "id")
            .values_list("id", flat=True)
        )
        running[queue] = Job.objects.filter(status=JobStatus.RUNNING, queue=queue).count()
    out: dict[int, JobTiming] = {}
    for job in jobs:
        position = None
        if job.status == JobStatus.QUEUED and job.pk in order.get(job.queue, []):
            position = order[job.queue].index(job.pk) + 1
        elapsed = None
        if job.started_at is not None:
            elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        estimate, basis = _estimate(job, history)
        remaining = None
        if estimate is not None and job.status == JobStatus.RUNNING and elapsed is not None:
            remaining = max(estimate - elapsed, 0.0)
        out[job.pk] = JobTiming(
            queue_position=position,
            queued_ahead_running=running.get(job.queue, 0),
            elapsed_s=elapsed,
            estimate_s=estimate,
            remaining_s=remaining,
            basis=basis,
        )
    return out


def job_timing(*, job: Job, now: datetime | None = None) -> JobTiming:
    """:func:`job_timing_map` for one job."""
    return job_timing_map(organization=job.organization, jobs=[job], now=now)[job.pk]


# --- artifacts --------------------------------------------------------------------------------


# Downloadable artifacts by key: (file name inside the job's folder, content type).
ARTIFACTS: dict[str, tuple[str, str]] = {
    "onnx": ("final.onnx", "application/octet-stream"),
    "onnx_int8": ("final.int8.onnx", "application/octet-stream"),
    "report": ("report.json", "application/json"),
    # weight_coding's compressed container (docs/container-format.md)
    "container": ("final.esdc", "application/octet-stream"),
    # a detection run's grid of test images with the baseline's and the final model's boxes
    # (the report page, its PDF and the downloads show it; issue 15)
    "detections_grid": ("detections_grid.png", "image/png"),
}


def job_artifact_list(*, job: Job) -> list[dict[str, Any]]:
    """The job's downloadable files that are stored (see ``webapp/jobs/artifacts.py``): final
    ONNX (fp32, int8), the compressed container, report, checkpoints, and the recipe YAML
    (always)."""
    out: list[dict[str, Any]] = []
    for key, (name, _) in ARTIFACTS.items():
        size = artifacts.stored_size(job, name)
        if size is not None:
            out.append({"key": key, "filename": name, "size_bytes": size})
    for name, size in artifacts.stored_checkpoints(job):
        out.append({"key": f"checkpoint:{name}", "filename": name, "size_bytes": size})
    out.append({"key": "recipe", "filename": "recipe.yaml", "size_bytes": len(job.recipe_yaml)})
    return out


def job_artifact_file(*, job: Job, key: str) -> str:
    """The path inside the job's folder of artifact ``key``; Http404 when the key is unknown or
    names something outside the folder."""
    if key in ARTIFACTS:
        return ARTIFACTS[key][0]
    if key.startswith("checkpoint:"):
        name = key.split(":", 1)[1]
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            raise Http404("No such artifact.")
        return f"checkpoints/{name}"
    raise Http404("No such artifact.")


def job_artifact_open(*, job: Job, key: str) -> IO[bytes]:
    """Artifact ``key`` of ``job``, open for reading from storage; Http404 when unknown or not
    produced."""
    rel = job_artifact_file(job=job, key=key)
    try:
        return artifacts.open_stored(job, rel)
    except FileNotFoundError:
        raise Http404("That artifact was not produced.") from None


def job_report(*, job: Job) -> dict[str, Any] | None:
    """The run report (stored on the job when it succeeded, else whatever report.json is
    stored)."""
    if isinstance(job.report, dict) and job.report:
        return dict(job.report)
    return artifacts.stored_report(job)


# --- workers ----------------------------------------------------------------------------------


def worker_registry_key() -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "edgeslim")
    return f"{prefix}:workers"


def worker_list() -> list[dict[str, Any]]:
    """Workers that reported in recently (see ``workers/worker_device.py``)."""
    import redis

    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        raw = client.hgetall(worker_registry_key())
        client.close()
    except redis.RedisError:
        return []
    now = time.time()
    out = []
    for value in raw.values():
        try:
            info = json.loads(value)
        except ValueError:
            continue
        if float(info.get("expires", 0)) > now:
            out.append(info)
    return out


def gpu_worker_available() -> bool:
    return any(w.get("cuda") and "gpu" in w.get("queues", []) for w in worker_list())
