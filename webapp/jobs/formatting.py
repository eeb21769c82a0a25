"""Human labels and units for the numbers a job's live page shows (stage metrics, durations).

The runner streams raw metric keys (``onnx_zip_bytes``) and raw numbers (``40518272``); people
read "ONNX zipped 38.6 MB". Sizes use Django's ``filesizeformat``, as the report pages do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from django.template.defaultfilters import filesizeformat

if TYPE_CHECKING:
    from webapp.jobs.selectors import JobTiming


def _percent(v: float) -> str:
    return f"{v:.1f} %"


def _count(v: float) -> str:
    """1234 → "1.2 k", 41_200_000 → "41.2 M"."""
    for step, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= step:
            return f"{v / step:.1f} {unit}"
    return f"{v:.0f}"


def _bytes(v: float) -> str:
    return str(filesizeformat(int(v))).replace("\xa0", " ")


def _ms(v: float) -> str:
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def duration_text(seconds: float | None) -> str:
    """12 → "12 s", 75 → "1 min 15 s", 7300 → "2 h 1 min"; None → "—"."""
    if seconds is None:
        return "—"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


# key → (label, formatter), in the order a page lists them.
METRIC_LABELS: dict[str, tuple[str, Callable[[float], str]]] = {
    "accuracy": ("Test accuracy", _percent),
    "val_accuracy": ("Val accuracy", _percent),
    "params": ("Parameters", _count),
    "nonzero_params": ("Non-zero parameters", _count),
    "macs": ("MACs", _count),
    "onnx_bytes": ("ONNX", _bytes),
    "onnx_zip_bytes": ("ONNX zipped", _bytes),
    "p50_ms": ("Latency p50", _ms),
    "duration_s": ("Took", duration_text),
}
# Bookkeeping keys a person has no use for on the stage list.
HIDDEN_KEYS = frozenset(
    {"stage_fraction", "progress", "targets_met", "event", "stage", "method", "metric"}
)


# What ``accuracy`` means for each task (the detection contract: mAP@0.5 in percent).
TASK_METRICS = {"classification": "top-1", "detection": "mAP@0.5"}


def metric_name(task: str | None) -> str:
    """The label of a task's score: ``top-1`` for classifiers, ``mAP@0.5`` for detectors."""
    return TASK_METRICS.get(task or "classification", "top-1")


def _score_labels(metric: str) -> dict[str, str]:
    if metric == "top-1":
        return {}
    return {"accuracy": f"Test {metric}", "val_accuracy": f"Val {metric}"}


def metric_rows(metrics: Mapping[str, Any], *, metric: str = "top-1") -> list[dict[str, str]]:
    """``[{"key", "label", "value"}]`` for the known numbers of ``metrics``, known keys first.

    ``metric`` names what ``accuracy`` and ``val_accuracy`` hold (``mAP@0.5`` for a detection
    job: the same keys, in percent, labelled "Test mAP@0.5"). Unknown numeric keys are shown
    with their key made readable (``foo_bar`` → "Foo bar"), so a new method's metric is never
    silently dropped; ``None`` values and bookkeeping are skipped.
    """
    rows: list[dict[str, str]] = []
    relabel = _score_labels(str(metrics.get("metric") or metric))
    for key, (label, fmt) in METRIC_LABELS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"key": key, "label": relabel.get(key, label), "value": fmt(float(value))})
    for key, value in metrics.items():
        if key in METRIC_LABELS or key in HIDDEN_KEYS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = f"{value:.3g}" if isinstance(value, float) else _count(float(value))
            rows.append({"key": key, "label": key.replace("_", " ").capitalize(), "value": text})
    return rows


def timing_texts(timing: JobTiming) -> dict[str, Any]:
    """The words a job page and the job list show for a :class:`JobTiming`, and the seconds a
    page keeps ticking from (elapsed up, remaining down)."""
    if timing.estimate_s is None:
        estimate = "no estimate yet"
    else:
        estimate = f"about {duration_text(timing.estimate_s)}"
    if timing.remaining_s is None:
        remaining = ""
    elif timing.remaining_s <= 0:
        remaining = "any moment now"
    else:
        remaining = f"about {duration_text(timing.remaining_s)} left"
    position = ""
    if timing.queue_position is not None:
        position = f"#{timing.queue_position} in the queue"
        if timing.queued_ahead_running:
            position += f", {timing.queued_ahead_running} running"
    return {
        "queue_position": timing.queue_position,
        "position": position,
        "elapsed_s": timing.elapsed_s,
        "elapsed": duration_text(timing.elapsed_s) if timing.elapsed_s is not None else "",
        "estimate_s": timing.estimate_s,
        "estimate": estimate,
        "remaining_s": timing.remaining_s,
        "remaining": remaining,
        "basis": timing.basis,
    }
