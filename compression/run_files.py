"""Which files of a run folder (see :mod:`compression.pipeline`) a resume reads.

A caller that keeps run folders somewhere else (object storage, another host) copies these
files and then ``state.json``; :func:`compression.pipeline.run_recipe` started on the copy
resumes after the last completed stage as it would in the original folder.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

STATE_FILE = "state.json"
REPORT_FILE = "report.json"
# The final files a run may write besides the report (see ``pipeline._final_artifacts``).
FINAL_FILES = ("final.onnx", "final.int8.onnx", "final.compressed.onnx", "final.esdc")


def _safe(rel: Any) -> str | None:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        return None
    return path.as_posix()


def resume_files(state: dict[str, Any]) -> list[str]:
    """The files, relative to the run folder, that resuming the run ``state`` (a parsed
    ``state.json``) reads: the baseline's ONNX and, for each completed stage, its checkpoint
    with the sidecar, its measured ONNX and its artifacts. ``state.json`` itself is not listed;
    paths that are absolute or climb out of the folder are left out.
    """
    names: list[str] = []

    def add(rel: Any) -> None:
        safe = _safe(rel)
        if safe is not None and safe not in names:
            names.append(safe)

    add(state.get("baseline_onnx"))
    for record in state.get("completed") or []:
        if not isinstance(record, dict):
            continue
        ckpt = _safe(record.get("checkpoint"))
        if ckpt is not None:
            add(ckpt)
            add(PurePosixPath(ckpt).with_suffix(".json").as_posix())
        metrics = record.get("metrics")
        if isinstance(metrics, dict):
            add(metrics.get("onnx_path"))
        artifacts = record.get("artifacts")
        if isinstance(artifacts, dict):
            for rel in artifacts.values():
                add(rel)
    return names


def final_files(report: dict[str, Any]) -> list[str]:
    """The files a finished run's ``report`` names (final models, container, checkpoints),
    relative to the run folder, plus every :data:`FINAL_FILES` name."""
    names = list(FINAL_FILES)
    for art in report.get("artifacts") or []:
        safe = _safe(art.get("path")) if isinstance(art, dict) else None
        if safe is not None and safe not in names:
            names.append(safe)
    return names
