"""A job's files in Django's storage, so that any worker resumes any job and any web process
serves any job's report and downloads.

The storage is the project's ``default`` storage: a local folder (``MEDIA_ROOT``, under the data
folder) unless ``EDGESLIM_S3_BUCKET`` names an S3-compatible bucket (django-storages). A job's
files live under ``jobs/<uid>/`` there, laid out as in the run folder that
:func:`compression.pipeline.run_recipe` writes (``state.json``, ``checkpoints/``, ``baseline/``,
``stages/<nn>_<method>/measure/``, ``report.json``, ``final.*``).

A worker runs the recipe in a scratch folder of its own, ``DATA_DIR/jobs/<uid>/``:

* before the run, :meth:`JobFiles.pull` brings the latest completed stage from storage into the
  scratch folder when storage is ahead of it (a new worker, another data folder);
* after the baseline and after each completed stage, :meth:`JobFiles.push_progress` uploads the
  files a resume reads (:func:`compression.run_files.resume_files`) and then ``state.json``, so
  the state in storage never names a file that is not there yet;
* at the end :meth:`JobFiles.push_final` uploads the report and the final artifacts.

The compression library knows nothing of this: it reads and writes its folder only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages

from compression.run_files import REPORT_FILE, STATE_FILE, final_files, resume_files
from webapp.jobs.models import Job

logger = logging.getLogger(__name__)


class ArtifactStorageError(RuntimeError):
    """A job's file could not be written to or read from storage."""


def job_storage() -> Storage:
    """The storage job files go through (the project's default storage)."""
    return storages["default"]


def job_storage_prefix(job: Job) -> str:
    """The job's folder in storage: ``jobs/<uid>``."""
    return f"jobs/{job.uid}"


def job_storage_name(job: Job, rel: str) -> str:
    """The storage name of the job's file ``rel`` (a path inside the run folder)."""
    return f"{job_storage_prefix(job)}/{Path(rel).as_posix()}"


def job_scratch_dir(job: Job) -> Path:
    """The worker's local folder for the job: ``DATA_DIR/jobs/<uid>/``. Scratch only: what a
    resume or a download needs is in storage."""
    return Path(settings.DATA_DIR) / "jobs" / str(job.uid)


def _put(storage: Storage, name: str, local: Path) -> None:
    # S3 overwrites a key in one request; a local folder would pick another name instead.
    if not getattr(storage, "file_overwrite", False) and storage.exists(name):
        storage.delete(name)
    with local.open("rb") as fh:
        saved = storage.save(name, File(fh, name=local.name))
    if saved != name:
        raise ArtifactStorageError(f"storage saved {name} as {saved}")


def _get(storage: Storage, name: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".part")
    with storage.open(name, "rb") as src, tmp.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, local)


def _read_json(fh: IO[Any]) -> dict[str, Any] | None:
    try:
        data = json.loads(fh.read())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _completed(state: dict[str, Any] | None) -> int:
    done = state.get("completed") if state else None
    return len(done) if isinstance(done, list) else 0


class JobFiles:
    """One run's two-way link between its scratch folder and the job's folder in storage."""

    def __init__(self, job: Job, *, storage: Storage | None = None) -> None:
        self.job = job
        self.storage = storage or job_storage()
        self.scratch = job_scratch_dir(job)
        # rel -> (size, mtime_ns) of the local copy known to equal the stored one.
        self._synced: dict[str, tuple[int, int]] = {}

    def _name(self, rel: str) -> str:
        return job_storage_name(self.job, rel)

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = (self.scratch / rel).stat()
        return st.st_size, st.st_mtime_ns

    def stored_state(self) -> dict[str, Any] | None:
        """``state.json`` as stored, or None when there is none (or it is unreadable)."""
        name = self._name(STATE_FILE)
        if not self.storage.exists(name):
            return None
        with self.storage.open(name, "rb") as fh:
            return _read_json(fh)

    def local_state(self) -> dict[str, Any] | None:
        path = self.scratch / STATE_FILE
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            return _read_json(fh)

    def pull(self) -> int:
        """Bring the run's latest completed stage from storage into the scratch folder, unless
        the scratch folder is already as far along. Returns the completed stages pulled (0 when
        nothing was)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        stored = self.stored_state()
        if stored is None:
            return 0
        local = self.local_state()
        same_run = local is not None and local.get("identity") == stored.get("identity")
        if same_run and _completed(local) >= _completed(stored):
            return 0  # this folder is as far along (the same worker trying again)
        for rel in resume_files(stored):
            name = self._name(rel)
            if not self.storage.exists(name):
                # run_recipe resumes from the last stage whose checkpoint is there.
                logger.warning("job %s: %s is missing from storage", self.job.pk, name)
                continue
            _get(self.storage, name, self.scratch / rel)
            self._synced[rel] = self._stamp(rel)
        tmp = self.scratch / (STATE_FILE + ".part")
        tmp.write_text(json.dumps(stored, indent=2), encoding="utf-8")
        os.replace(tmp, self.scratch / STATE_FILE)
        self._synced[STATE_FILE] = self._stamp(STATE_FILE)
        logger.info(
            "job %s: pulled %d completed stage(s) from storage", self.job.pk, _completed(stored)
        )
        return _completed(stored)

    def _push(self, rels: list[str]) -> int:
        sent = 0
        for rel in rels:
            path = self.scratch / rel
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                if not f.is_file() or f.name.endswith((".tmp", ".part")):
                    continue
                r = f.relative_to(self.scratch).as_posix()
                stamp = self._stamp(r)
                if self._synced.get(r) == stamp:
                    continue
                _put(self.storage, self._name(r), f)
                self._synced[r] = stamp
                sent += 1
        return sent

    def push_progress(self) -> int:
        """Upload what resuming needs, then ``state.json`` (so the stored state never names a
        file that is not stored yet). Returns the number of files uploaded."""
        state = self.local_state()
        if state is None:
            return 0
        return self._push(resume_files(state)) + self._push([STATE_FILE])

    def push_final(self, report: dict[str, Any]) -> int:
        """Upload the final artifacts, the checkpoints and the report (after the state)."""
        sent = self.push_progress()
        sent += self._push([r for r in final_files(report) if (self.scratch / r).exists()])
        return sent + self._push([REPORT_FILE])

    def discard_scratch(self) -> None:
        """Remove the scratch folder (the stored copy is the one that counts)."""
        shutil.rmtree(self.scratch, ignore_errors=True)


# --- reads for the web process -----------------------------------------------------------------


def stored_size(job: Job, rel: str) -> int | None:
    """The stored size of the job's file ``rel``, or None when it is not stored."""
    storage = job_storage()
    name = job_storage_name(job, rel)
    try:
        if not storage.exists(name):
            return None
        return int(storage.size(name))
    except (OSError, ValueError):
        return None


def stored_checkpoints(job: Job) -> list[tuple[str, int]]:
    """``(file name, size)`` of the job's stored checkpoint files, sorted by name."""
    storage = job_storage()
    folder = job_storage_name(job, "checkpoints")
    try:
        _dirs, files = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in sorted(files):
        if name.startswith(".") or name.endswith((".tmp", ".part")):
            continue
        out.append((name, int(storage.size(f"{folder}/{name}"))))
    return out


def open_stored(job: Job, rel: str) -> IO[bytes]:
    """The job's stored file ``rel``, open for reading (FileNotFoundError when not stored)."""
    storage = job_storage()
    name = job_storage_name(job, rel)
    if not storage.exists(name):
        raise FileNotFoundError(name)
    return storage.open(name, "rb")


def stored_report(job: Job) -> dict[str, Any] | None:
    """The stored ``report.json`` of the job, or None."""
    try:
        with open_stored(job, REPORT_FILE) as fh:
            return _read_json(fh)
    except (FileNotFoundError, OSError):
        return None
