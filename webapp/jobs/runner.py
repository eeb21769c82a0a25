"""The job runner: drive ``compression.pipeline.run_recipe`` for one Job row (the jobs app's
domain runner; the Celery task in ``webapp/jobs/tasks.py`` only calls :func:`job_run`).

It takes the job's lease (never two runs at once), counts the attempt, loads the model and the
data set through the catalog, and runs the recipe in its scratch folder ``DATA_DIR/jobs/<uid>/``.
The job's files go through storage (``webapp/jobs/artifacts.py``): the latest completed stage is
pulled from there first, each completed stage is pushed there before the job row counts it, and
the report and final artifacts at the end, so a retried run resumes after the last completed
stage on any worker. A heartbeat thread renews the lease and notices a
cancel request; the progress callback persists events (plain progress throttled) and broadcasts
them. Failures end FAILED with a reason a person can read.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections, connection

from compression.datasets import DatasetBundle
from compression.detection_data import DetectionBundle
from compression.errors import Cancelled, CompressionError
from webapp.jobs import services as job_services
from webapp.jobs.artifacts import ArtifactStorageError, JobFiles
from webapp.jobs.models import Job, JobEventKind, JobStatus

logger = logging.getLogger(__name__)

# Plain progress is written at most this often; stage, epoch and status events always are.
PROGRESS_MIN_INTERVAL_S = 0.2
LOG_TAIL_LINES = 40


class JobCancelled(Cancelled):
    """The job's row asks the run to stop (or the run lost its lease)."""


@dataclass(frozen=True)
class RunOutcome:
    """``succeeded``, ``failed``, ``cancelled``, ``busy`` (another live run holds the lease:
    try again in ``retry_in_s``), ``lost`` (the lease went to another run) or ``done``
    (nothing to do: already finished)."""

    outcome: str
    job_id: int
    retry_in_s: float = 0.0
    error: str = ""


def failure_reason(exc: BaseException, *, soft_time_limit_s: float | None = None) -> str:
    """One line a person can act on, for any exception a run can end with."""
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = soft_time_limit_s or settings.EDGESLIM_JOB_SOFT_TIME_LIMIT_S
        return (
            f"time limit of {int(limit)} s exceeded; shorten the recipe (fewer epochs) or "
            "raise EDGESLIM_JOB_SOFT_TIME_LIMIT_S"
        )
    if (
        isinstance(exc, MemoryError)
        or name == "OutOfMemoryError"
        or "out of memory" in text.lower()
    ):
        detail = f": {text.splitlines()[0]}" if text else ""
        return (
            "out of memory" + detail + "; lower batch_size in the recipe, or run on a worker "
            "with more memory"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing the job's files: {exc.filename or text}"
    if isinstance(exc, (CompressionError, ArtifactStorageError)):
        return text or name
    return f"{name}: {text}" if text else name


def data_summary(data: DatasetBundle | DetectionBundle) -> str:
    """The split sizes a job's log states: images per split, and boxes for a detection set."""
    line = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test images"
    if isinstance(data, DetectionBundle):
        from webapp.catalog.loaders import detection_box_counts

        line += f", {detection_box_counts(data)['boxes']} boxes"
    return line


class _LogTail(logging.Handler):
    """Keeps the last lines the compression library and the runner logged during the run."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log line must never break the run
            pass


class JobRunner:
    """Runs one job once. Thin callers (the Celery task, tests) build it with a job id."""

    def __init__(
        self,
        job_id: int,
        *,
        owner: str | None = None,
        lease_s: float | None = None,
        soft_time_limit_s: float | None = None,
    ) -> None:
        self.job_id = int(job_id)
        self.owner = owner or job_services.lease_owner_name()
        self.lease_s = float(lease_s or settings.EDGESLIM_JOB_LEASE_S)
        self.soft_time_limit_s = soft_time_limit_s
        self.heartbeat_s = max(0.2, min(1.0, self.lease_s / 3.0))
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._last_progress_write = 0.0
        self._job: Job | None = None
        self._files: JobFiles | None = None

    # --- the run ------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        lease = job_services.job_lease_acquire(
            job_id=self.job_id, owner=self.owner, lease_s=self.lease_s
        )
        if lease.outcome == "busy":
            logger.info(
                "job %s: another run holds the lease; retry in %.1fs", self.job_id, lease.retry_in_s
            )
            return RunOutcome("busy", self.job_id, retry_in_s=lease.retry_in_s)
        if lease.outcome != "acquired" or lease.job is None:
            return RunOutcome("done", self.job_id)
        job = lease.job
        self._job = job
        heartbeat = threading.Thread(
            target=self._heartbeat, name=f"job-{job.pk}-lease", daemon=True
        )
        heartbeat.start()
        tail = _LogTail()
        watched = [logging.getLogger("compression"), logger]
        for lg in watched:
            lg.addHandler(tail)
        try:
            return self._run_leased(job)
        except BaseException as exc:  # every ending is recorded, then re-raised if not ours
            return self._record_failure(job, exc, tail)
        finally:
            for lg in watched:
                lg.removeHandler(tail)
            self._stop_heartbeat.set()
            heartbeat.join(timeout=5)

    def _run_leased(self, job: Job) -> RunOutcome:
        from compression.pipeline import run_recipe
        from webapp.catalog.loaders import bundle_for_model_version, model_version_load
        from webapp.jobs.recipes import recipe_parse
        from webapp.jobs.sweep_runner import shared_baseline_for

        files = JobFiles(job)
        self._files = files
        out_dir = files.scratch
        self._log(job, f"attempt {job.attempts} of {job.max_attempts} on {self.owner}")
        pulled = self._storage_call(files.pull, "read the job's files from storage")
        if pulled:
            self._log(job, f"pulled {pulled} completed stage(s) from storage to resume after")
        recipe = recipe_parse(job.recipe)
        mv = job.model_version
        model = model_version_load(mv, work_dir=out_dir / "inputs")
        # The dataset's stored split, normalised as the version declares (or its own stats).
        data = bundle_for_model_version(
            job.dataset, mv, work_dir=out_dir / "inputs", allow_detection=True
        )
        self._log(
            job,
            f"loaded {mv.asset.name} v{mv.number} ({mv.format}, {model.task}) and "
            f"{job.dataset.name} ({data_summary(data)})",
        )
        # A sweep's child reuses the baseline its sweep measured once (webapp/jobs/sweep_runner.py).
        shared = shared_baseline_for(job, work_dir=out_dir / "inputs")
        if shared is not None:
            self._log(job, "reusing the sweep's baseline (measured once for all its children)")
        report = run_recipe(
            recipe,
            model,
            data,
            out_dir,
            progress=self._progress,
            should_cancel=self._should_cancel,
            device="auto",
            shared_baseline=shared,
        )
        report_dict = report.to_dict()
        self._storage_call(lambda: files.push_final(report_dict), "store the job's artifacts")
        report_dict["model_versions"] = self._register_artifacts(job, out_dir, report_dict)
        finished = job_services.job_finish(
            job_id=job.pk,
            owner=self.owner,
            status=JobStatus.SUCCEEDED,
            message="done",
            report=report_dict,
        )
        if finished is None:
            return RunOutcome("lost", job.pk)
        files.discard_scratch()  # storage holds everything a download or a report reads
        return RunOutcome("succeeded", job.pk)

    def _storage_call(self, call: Any, what: str) -> Any:
        try:
            return call()
        except (Cancelled, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise ArtifactStorageError(f"could not {what}: {failure_reason(exc)}") from exc

    def _register_artifacts(
        self, job: Job, out_dir: Path, report: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Each final ONNX becomes a new ModelVersion (idempotent across retries)."""
        from compression.inspection import inspect_onnx
        from webapp.catalog.models import ModelVersion
        from webapp.catalog.services import (
            model_version_attach_container,
            model_version_create_from_job,
        )

        out: list[dict[str, Any]] = []
        # The report's final state carries the MACs counted on the torch module before export;
        # the ONNX files (fp32 and int8 of one graph) can't be counted, so their versions keep it.
        final = report.get("final")
        counted = final.get("macs") if isinstance(final, dict) else None
        macs = counted if type(counted) is int and counted >= 0 else None
        for filename, label in (("final.onnx", "fp32"), ("final.int8.onnx", "int8")):
            path = out_dir / filename
            if not path.is_file():
                continue
            existing = ModelVersion.objects.filter(
                organization_id=job.organization_id, produced_by_job_id=job.pk, label=label
            ).first()
            if existing is None:
                try:
                    info: dict[str, Any] | None = inspect_onnx(path).to_dict()
                except Exception:  # a worker inspects it later, like an upload
                    info = None
                existing = model_version_create_from_job(
                    organization=job.organization,
                    parent=job.model_version,
                    job_id=job.pk,
                    recipe=job.recipe,
                    file_path=path,
                    format="onnx",
                    label=label,
                    info=info,
                    user=job.created_by,
                    preprocessing=report.get("preprocessing") or None,
                    macs=macs,
                )
            out.append({"id": existing.pk, "label": label, "number": existing.number})
            container = out_dir / "final.esdc"
            if label == "fp32" and container.is_file():
                # weight_coding's container decodes to this fp32 ONNX: the version keeps it, so a
                # deployment can push the container instead (devices decode it first).
                model_version_attach_container(version=existing, path=container)
                out[-1]["container"] = True
        return out

    # --- endings ----------------------------------------------------------------------------

    def _record_failure(self, job: Job, exc: BaseException, tail: _LogTail) -> RunOutcome:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, Cancelled):
            # The worker is shutting down: give the lease back; the redelivered task resumes.
            job_services.job_lease_release(job_id=job.pk, owner=self.owner)
            raise exc
        if self._lost.is_set():
            logger.warning("job %s: lost its lease; stopping without writing an outcome", job.pk)
            return RunOutcome("lost", job.pk)
        if isinstance(exc, Cancelled) and self._cancel.is_set():
            job_services.job_finish(
                job_id=job.pk, owner=self.owner, status=JobStatus.CANCELLED, message="cancelled"
            )
            return RunOutcome("cancelled", job.pk)
        reason = failure_reason(exc, soft_time_limit_s=self.soft_time_limit_s)
        # The tail handler captures this record with its traceback: the log holds it once.
        logger.error("job %s failed: %s", job.pk, reason, exc_info=exc)
        for line in list(tail.lines)[-LOG_TAIL_LINES:]:
            self._log(job, line.rstrip())
        job_services.job_finish(
            job_id=job.pk, owner=self.owner, status=JobStatus.FAILED, message="failed", error=reason
        )
        return RunOutcome("failed", job.pk, error=reason)

    # --- callbacks --------------------------------------------------------------------------

    def _log(self, job: Job, line: str) -> None:
        job_services.job_event_record(job=job, kind=JobEventKind.LOG, payload={"line": line[:2000]})

    def _should_cancel(self) -> bool:
        return self._cancel.is_set() or self._lost.is_set()

    def _progress(self, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        job = self._job
        assert job is not None
        if self._lost.is_set():
            raise JobCancelled("the run lost its lease")
        event = str(metrics.get("event", ""))
        stage = metrics.get("stage")
        now = time.monotonic()
        completed: int | None = None
        # Every event carries the overall fraction, so a live page's bar moves with each one.
        progress = round(fraction, 4)
        if "epoch" in metrics:
            payload: dict[str, Any] = {
                k: metrics[k]
                for k in ("stage", "method", "epoch", "loss", "train_acc", "val_acc")
                if k in metrics
            }
            payload["progress"] = progress
            job_services.job_event_record(job=job, kind=JobEventKind.EPOCH, payload=payload)
            self._log(job, message)
        elif event in ("stage_start", "baseline_start"):
            # The baseline is stage -1: a page shows it apart from the recipe's stages.
            job_services.job_event_record(
                job=job,
                kind=JobEventKind.STAGE_STARTED,
                payload={
                    "stage": stage if event == "stage_start" else -1,
                    "method": metrics.get("method", "baseline"),
                    "message": message,
                    "progress": progress,
                },
            )
        elif event in ("stage_end", "baseline"):
            # The state on disk now counts this stage: store it before the row does.
            if self._files is not None:
                self._storage_call(self._files.push_progress, "store the completed stage")
            numbers: dict[str, Any] = {
                k: v
                for k, v in metrics.items()
                if k not in ("event", "stage", "method", "stage_fraction")
                and isinstance(v, (int, float, type(None)))
            }
            if isinstance(metrics.get("metric"), str):  # "mAP@0.5" for a detector, "top-1"
                numbers["metric"] = str(metrics["metric"])[:40]
            job_services.job_event_record(
                job=job,
                kind=JobEventKind.STAGE_FINISHED,
                payload={
                    "stage": stage if event == "stage_end" else -1,
                    "method": metrics.get("method", "baseline"),
                    "message": message,
                    "metrics": numbers,
                    "progress": progress,
                },
            )
            if event == "stage_end" and isinstance(stage, int):
                completed = stage + 1
            self._log(job, message)
        elif event in ("stage_measure", "remeasure", "latency_start"):
            # A phase change is never throttled: the page names what the run is doing now.
            phase = {"stage_measure": "measuring", "remeasure": "remeasuring"}.get(event, "timing")
            phase_payload: dict[str, Any] = {
                "progress": progress,
                "message": message,
                "phase": phase,
            }
            if isinstance(stage, int):
                phase_payload["stage"] = stage
            job_services.job_event_record(
                job=job, kind=JobEventKind.PROGRESS, payload=phase_payload
            )
            self._log(job, message)
        elif now - self._last_progress_write < PROGRESS_MIN_INTERVAL_S and event != "done":
            return  # plain progress, throttled
        else:
            job_services.job_event_record(
                job=job,
                kind=JobEventKind.PROGRESS,
                payload={"progress": progress, "message": message},
            )
        self._last_progress_write = now
        still_owner, cancel = job_services.job_progress_update(
            job_id=job.pk,
            owner=self.owner,
            progress=fraction,
            message=message,
            completed_stages=completed,
            lease_s=self.lease_s,
        )
        if not still_owner:
            self._lost.set()
            raise JobCancelled("the run lost its lease")
        if cancel:
            self._cancel.set()

    def _heartbeat(self) -> None:
        """Renew the lease and watch for a cancel request, about once a second."""
        try:
            while not self._stop_heartbeat.wait(self.heartbeat_s):
                try:
                    still_owner, cancel = job_services.job_progress_update(
                        job_id=self.job_id, owner=self.owner, lease_s=self.lease_s
                    )
                except Exception:  # the database restarting: keep trying until the lease lapses
                    logger.warning("job %s: lease renewal failed", self.job_id, exc_info=True)
                    close_old_connections()
                    continue
                if not still_owner:
                    self._lost.set()
                    return
                if cancel:
                    self._cancel.set()
        finally:
            connection.close()


def job_run(job_id: int, **kwargs: Any) -> RunOutcome:
    """Run job ``job_id`` once (the Celery task's body)."""
    return JobRunner(job_id, **kwargs).run()
