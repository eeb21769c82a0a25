"""A sweep's shared baseline: measured once by the ``edgeslim.sweep_baseline`` task, stored
(its ONNX in storage, its numbers on the Sweep row), and handed to every child's run.

The baseline is measured in ``DATA_DIR/sweeps/<uid>/`` with the sweep's recipe's eval settings
(every child has the same ones: a grid only changes stage parameters). Its ONNX goes to
storage as ``sweeps/<uid>/baseline.onnx`` so a child on any worker can fetch it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from compression.errors import Cancelled, CompressionError
from compression.pipeline import SharedBaseline
from webapp.jobs import sweep_services
from webapp.jobs.models import Job, Sweep, SweepBaseline

logger = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.5


def sweep_dir(sweep: Sweep) -> Path:
    return Path(settings.DATA_DIR) / "sweeps" / str(sweep.uid)


def _storage_name(sweep: Sweep) -> str:
    return f"sweeps/{sweep.uid}/baseline.onnx"


def sweep_baseline_run(sweep_id: int) -> str:
    """Measure the sweep's baseline once and queue its children; ``measured``, ``failed``,
    ``cancelled`` or ``done`` (nothing to do)."""
    from compression.pipeline import measure_baseline
    from webapp.catalog.loaders import bundle_for_model_version, model_version_load
    from webapp.jobs.recipes import recipe_parse

    sweep = sweep_services.sweep_baseline_start(sweep_id=sweep_id)
    if sweep is None:
        return "done"
    work = sweep_dir(sweep)
    last = [0.0]
    cancelled = [False]

    def progress(fraction: float, message: str, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_MIN_INTERVAL_S and fraction < 1.0:
            return
        last[0] = now
        cancelled[0] = sweep_services.sweep_baseline_progress(
            sweep_id=sweep_id, fraction=fraction, message=message
        )

    try:
        mv = sweep.model_version
        model = model_version_load(mv, work_dir=work / "inputs")
        data = bundle_for_model_version(sweep.dataset, mv, work_dir=work / "inputs")
        shared = measure_baseline(
            recipe_parse(sweep.recipe),
            model,
            data,
            work / "baseline",
            progress=progress,
            should_cancel=lambda: cancelled[0],
            device="auto",
        )
        name = _storage_name(sweep)
        if default_storage.exists(name):
            default_storage.delete(name)
        with shared.onnx_path.open("rb") as fh:
            stored = default_storage.save(name, File(fh))
    except Cancelled:
        sweep_services.sweep_baseline_failed(
            sweep_id=sweep_id, reason="cancelled while the baseline was measured", cancelled=True
        )
        return "cancelled"
    except Exception as exc:  # every ending is recorded with a reason a person can read
        reason = str(exc) if isinstance(exc, CompressionError) else f"{type(exc).__name__}: {exc}"
        logger.error("sweep %s: baseline failed: %s", sweep_id, reason, exc_info=exc)
        sweep_services.sweep_baseline_failed(sweep_id=sweep_id, reason=reason)
        return "failed"
    record = shared.to_dict()
    record["onnx_path"] = stored
    sweep_services.sweep_baseline_done(sweep_id=sweep_id, baseline=record)
    return "measured"


def shared_baseline_for(job: Job, *, work_dir: Path) -> SharedBaseline | None:
    """The measured baseline a sweep child shares, its ONNX fetched into ``work_dir``; ``None``
    for a job outside a sweep, or a child run before its baseline was measured (it then
    measures its own, like any job)."""
    if job.sweep_id is None:
        return None
    sweep = Sweep.objects.filter(pk=job.sweep_id).only("baseline", "baseline_status").first()
    if sweep is None or sweep.baseline_status != SweepBaseline.DONE or not sweep.baseline:
        logger.warning("job %s: its sweep's baseline is not measured; measuring its own", job.pk)
        return None
    record = dict(sweep.baseline)
    target = work_dir / "sweep_baseline.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    with default_storage.open(record["onnx_path"], "rb") as src, target.open("wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)
    record["onnx_path"] = str(target)
    return SharedBaseline.from_dict(record)
