"""Run one sensitivity analysis: load the version and the data set through the catalog, call
:func:`compression.sensitivity.layer_sensitivity` on the ``val`` split, store the result.

The work is idempotent (it writes nothing but the row), so a run that a dead worker left
RUNNING is simply redone when the broker redelivers its task, up to ``MAX_ATTEMPTS`` runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from compression.errors import CompressionError
from compression.sensitivity import layer_sensitivity
from webapp.catalog.loaders import bundle_for_model_version, model_version_load
from webapp.sensitivity import services
from webapp.sensitivity.models import SensitivityAnalysis

logger = logging.getLogger(__name__)
PROGRESS_MIN_INTERVAL_S = 0.5


def analysis_run(pk: int) -> str:
    """Run analysis ``pk``; returns ``succeeded``, ``failed`` or ``done`` (nothing to run)."""
    analysis = services.analysis_start(pk=pk)
    if analysis is None:
        return "done"
    last = 0.0

    def progress(fraction: float, message: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_MIN_INTERVAL_S or fraction >= 1.0:
            last = now
            services.analysis_progress(pk=pk, progress=fraction, message=message)

    try:
        result = _run(analysis, progress)
    except Exception as exc:  # every ending is recorded with a reason a person can read
        reason = str(exc).strip()
        if not isinstance(exc, CompressionError):
            reason = f"{type(exc).__name__}: {reason}"
        logger.error("sensitivity %s failed: %s", pk, reason, exc_info=exc)
        services.analysis_finish(pk=pk, error=reason or type(exc).__name__)
        return "failed"
    services.analysis_finish(pk=pk, result=result)
    return "succeeded"


def _run(analysis: SensitivityAnalysis, progress: Callable[[float, str], None]) -> dict[str, Any]:
    mv, dataset = analysis.model_version, analysis.dataset
    root = Path(settings.DATA_DIR) / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        state = model_version_load(mv, work_dir=Path(tmp))
        if state.module is None:
            raise CompressionError("layer sensitivity needs a PyTorch model, not ONNX")
        data = bundle_for_model_version(dataset, mv, work_dir=Path(tmp))
        services.analysis_progress(
            pk=analysis.pk,
            progress=0.0,
            message=f"measuring {len(data.val)} val images per cell",
        )
        result = layer_sensitivity(
            state.module,
            data.val_loader(),  # the result picks ratios: never the test split
            analysis.ratios,
            input_shape=state.input_shape,
            num_classes=state.num_classes,
            importance=analysis.importance,
            round_to=analysis.round_to,
            progress=progress,
        )
    return result.to_dict()
