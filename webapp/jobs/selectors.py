"""Reads for jobs. Every query starts from the organisation: another organisation's id finds
nothing (views and the API answer 404)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from webapp.accounts.models import Organization
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


def job_history(*, job: Job) -> dict[str, Any]:
    """Everything a live page needs to draw the story so far, from the persisted events.

    ``last_seq`` is the seq the page has rendered up to; live events at or below it are skipped.
    """
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
    epochs: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    last_seq = 0
    for event in job_event_list(job=job).exclude(kind=JobEventKind.PROGRESS).iterator():
        last_seq = max(last_seq, event.seq)
        p = event.payload
        idx = p.get("stage")
        if event.kind == JobEventKind.STAGE_STARTED and isinstance(idx, int) and idx < len(stages):
            stages[idx]["status"] = "resumed" if p.get("resumed") else "running"
        elif (
            event.kind == JobEventKind.STAGE_FINISHED and isinstance(idx, int) and idx < len(stages)
        ):
            stages[idx]["status"] = "done"
            stages[idx]["metrics"] = p.get("metrics", {})
        elif event.kind == JobEventKind.EPOCH:
            epochs.append(p)
        elif event.kind == JobEventKind.LOG:
            logs.append({"seq": event.seq, "ts": event.ts.isoformat(), "line": p.get("line", "")})
    last_seq = max(last_seq, job.event_seq)
    return {
        "stages": stages,
        "epochs": epochs,
        "log_tail": logs[-LOG_TAIL_LINES:],
        "last_seq": last_seq,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
    }


# --- artifacts --------------------------------------------------------------------------------


def job_dir(job: Job | int) -> Path:
    """The job's working folder, stable across attempts so a retry resumes from it."""
    job_id = job if isinstance(job, int) else job.pk
    return Path(settings.DATA_DIR) / "jobs" / str(int(job_id))


# Downloadable artifacts by key: (file name inside the job folder, content type).
ARTIFACTS: dict[str, tuple[str, str]] = {
    "onnx": ("final.onnx", "application/octet-stream"),
    "onnx_int8": ("final.int8.onnx", "application/octet-stream"),
    "report": ("report.json", "application/json"),
}


def job_artifact_list(*, job: Job) -> list[dict[str, Any]]:
    """The job's downloadable files that exist: final ONNX (fp32, int8), report, checkpoints,
    and the recipe YAML (always)."""
    folder = job_dir(job)
    out: list[dict[str, Any]] = []
    for key, (name, _) in ARTIFACTS.items():
        path = folder / name
        if path.is_file():
            out.append({"key": key, "filename": name, "size_bytes": path.stat().st_size})
    ckpt = folder / "checkpoints"
    if ckpt.is_dir():
        for path in sorted(ckpt.iterdir()):
            if path.is_file() and not path.name.endswith(".tmp"):
                out.append(
                    {
                        "key": f"checkpoint:{path.name}",
                        "filename": path.name,
                        "size_bytes": path.stat().st_size,
                    }
                )
    out.append({"key": "recipe", "filename": "recipe.yaml", "size_bytes": len(job.recipe_yaml)})
    return out


def job_artifact_path(*, job: Job, key: str) -> Path:
    """The local file of artifact ``key``; Http404 when unknown or not produced (never a path
    outside the job's folder)."""
    folder = job_dir(job)
    if key in ARTIFACTS:
        path = folder / ARTIFACTS[key][0]
    elif key.startswith("checkpoint:"):
        name = key.split(":", 1)[1]
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            raise Http404("No such artifact.")
        path = folder / "checkpoints" / name
    else:
        raise Http404("No such artifact.")
    if not path.is_file():
        raise Http404("That artifact was not produced.")
    return path


def job_report(*, job: Job) -> dict[str, Any] | None:
    """The run report (stored on the job when it succeeded, else whatever report.json exists)."""
    if isinstance(job.report, dict) and job.report:
        return dict(job.report)
    path = job_dir(job) / "report.json"
    if path.is_file():
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None
    return None


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
