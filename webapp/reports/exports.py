"""A job report as a file: the JSON object and the CSV rows of ``/reports/jobs/<id>/export.*``.

Built from the same selector output as the page (:mod:`webapp.reports.selectors`), so the file
says what the page says. Field names are documented in docs/reports.md.
"""

from __future__ import annotations

from typing import Any

from webapp.jobs.models import Job
from webapp.reports.fleet import latency_block

# The CSV's columns: one row per state (baseline, each stage, final), then one per on-device
# result (``kind`` "device").
REPORT_CSV_FIELDS = (
    "kind", "label", "format", "accuracy", "eval_split", "val_accuracy", "accuracy_delta",
    "params", "nonzero_params", "macs", "size_bytes", "compressed_bytes", "size_ratio",
    "latency_count", "latency_mean_ms", "latency_stdev_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p99_ms", "latency_iqr_ms", "latency_rounds", "throughput", "peak_mem_mb", "speedup",
    "version", "device_id", "device", "batch_size", "top1_pct", "eval_set",
)  # fmt: skip


def _state(row: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    value = raw.get("latency")
    latency: dict[str, Any] = value if isinstance(value, dict) else {}
    return {
        "kind": row["kind"],
        "label": row["label"],
        "format": row["format"],
        "accuracy": row["accuracy"],
        "eval_split": row["eval_split"],
        "val_accuracy": row["val_accuracy"],
        "accuracy_delta": row["accuracy_delta"],
        "params": row["params"],
        "nonzero_params": row["nonzero_params"],
        "macs": row["macs"],
        "size_bytes": row["size_bytes"],
        "compressed_bytes": row["zip_bytes"],
        "size_ratio": row["size_ratio"],
        "latency": {
            **latency_block(latency),
            "iqr_ms": row["iqr_ms"],
            "rounds": row["rounds"],
        },
        "throughput": row["throughput"],
        "peak_mem_mb": row["peak_mem_mb"],
        "speedup": row["speedup"],
    }


def report_export(
    *,
    job: Job,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    fleets: list[dict[str, Any]],
) -> dict[str, Any]:
    """The job report's export: the job, what it was measured on, one entry per state with its
    latency as count, mean, stdev, p50, p90, p99, and the on-device results of the versions it
    produced (``fleets``: :func:`webapp.reports.fleet.fleet_build` of each; one row per device,
    its newest deployment at its smallest batch size)."""
    raw = [report.get("baseline") or {}]
    raw += [s.get("metrics") or {} for s in report.get("stages", [])]
    raw.append(report.get("final") or {})
    devices = []
    for fleet in fleets:
        v = fleet["version"]
        for d in fleet["rows"]:
            devices.append(
                {
                    "version": v["id"],
                    "label": v["label"],
                    "device_id": d["device"]["id"],
                    "device": d["device"]["name"],
                    "deployment": d["deployment"],
                    "batch_size": d["batch_size"],
                    "latency": d["latency"],
                    "throughput": d["throughput"],
                    "peak_mem_mb": d["peak_mem_mb"],
                    "load_time_ms": d["load_time_ms"],
                    "top1_pct": d["top1_pct"],
                    "eval_set": d["eval_set"],
                    "measured_at": d["measured_at"],
                }
            )
    targets = report.get("targets") if isinstance(report.get("targets"), dict) else {}
    return {
        "job": {
            "id": job.pk,
            "name": job.name,
            "status": job.status,
            "model_version": job.model_version_id,
            "dataset": job.dataset.name,
            "recipe": (job.recipe or {}).get("name", "") if isinstance(job.recipe, dict) else "",
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        "targets": targets,
        "states": [_state(row, m) for row, m in zip(rows, raw, strict=True)],
        "on_device": devices,
        "model_versions": [
            v.get("id") for v in report.get("model_versions", []) if isinstance(v, dict)
        ],
    }


def report_csv_rows(export: dict[str, Any]) -> list[list[Any]]:
    """The CSV export: a header of :data:`REPORT_CSV_FIELDS`; the states, then the devices."""
    out: list[list[Any]] = [list(REPORT_CSV_FIELDS)]
    for s in export["states"]:
        flat = {**s, **{f"latency_{k}": v for k, v in s["latency"].items()}}
        out.append(["" if flat.get(k) is None else flat.get(k) for k in REPORT_CSV_FIELDS])
    for d in export["on_device"]:
        flat = {
            **d,
            "kind": "device",
            "label": d["label"],
            **{f"latency_{k}": v for k, v in d["latency"].items()},
        }
        out.append(["" if flat.get(k) is None else flat.get(k) for k in REPORT_CSV_FIELDS])
    return out
