"""A job report as a file: the JSON object and the CSV rows of ``/reports/jobs/<id>/export.*``.

Built from the same selector output as the page (:mod:`webapp.reports.selectors`), so the file
says what the page says. Field names are documented in docs/reports.md.
"""

from __future__ import annotations

from typing import Any

from device_registry.models import DeploymentResult
from webapp.accounts.models import Organization
from webapp.jobs.models import Job
from webapp.reports.comparison import _produced_state
from webapp.reports.fleet import latency_block
from webapp.reports.selectors import DETECTION, METRIC_LABELS, report_per_class, report_task

# The CSV's columns: one row per state (baseline, each stage, final), then one per on-device
# result (``kind`` "device").
REPORT_CSV_FIELDS = (
    "kind", "label", "format", "accuracy", "eval_split", "val_accuracy", "accuracy_delta",
    "params", "nonzero_params", "macs", "size_bytes", "compressed_bytes", "size_ratio",
    "latency_count", "latency_mean_ms", "latency_stdev_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p99_ms", "latency_iqr_ms", "latency_rounds", "throughput", "peak_mem_mb", "speedup",
    "version", "device_id", "device", "batch_size", "top1_pct", "eval_set",
    # detection (issue 15): the metric behind ``accuracy`` (top-1 or mAP@0.5), mAP@0.5:0.95 in
    # percent, the end-to-end latency block (network + decode + NMS), a device's mAP@0.5
    "task", "metric", "map50_95", "map50_95_delta",
    "latency_e2e_count", "latency_e2e_mean_ms", "latency_e2e_stdev_ms", "latency_e2e_p50_ms",
    "latency_e2e_p90_ms", "latency_e2e_p99_ms", "throughput_e2e", "speedup_e2e", "map50_pct",
)  # fmt: skip


def _state(row: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    value = raw.get("latency")
    latency: dict[str, Any] = value if isinstance(value, dict) else {}
    e2e = raw.get("latency_e2e")
    detection = row["task"] == DETECTION
    return {
        "kind": row["kind"],
        "task": row["task"],
        "metric": row["metric"],
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
        # detection only (None for a classifier): percent, like ``accuracy``
        "map50_95": row["map50_95"],
        "map50_95_delta": row["map50_95_delta"],
        "latency_e2e": latency_block(e2e) if detection and isinstance(e2e, dict) else None,
        "throughput_e2e": row["e2e_throughput"],
        "speedup_e2e": row["e2e_speedup"],
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
                    "map50_pct": d.get("map50_pct"),
                    "eval_set": d["eval_set"],
                    "measured_at": d["measured_at"],
                }
            )
    targets = report.get("targets") if isinstance(report.get("targets"), dict) else {}
    task = report_task(report)
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
        "task": task,
        "metric": METRIC_LABELS[task],
        "targets": targets,
        "states": [_state(row, m) for row, m in zip(rows, raw, strict=True)],
        # AP per class (percent), baseline against final: detection reports only
        "per_class": report_per_class(report) if task == DETECTION else [],
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
        flat.update({f"latency_e2e_{k}": v for k, v in (s.get("latency_e2e") or {}).items()})
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


# --- the comparison's latency blocks -----------------------------------------------------------


def comparison_latency(
    *, organization: Organization, comparison: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The latency block of every compared version, by version id (as a string, like JSON
    keys): ``host`` from the report that gave the comparison its host figures (``host_job``:
    the producing job's state for a version it made, the report's baseline for the version it
    started from), and ``devices`` by device id: each device's newest deployment at its
    smallest batch size. Two queries, whatever the number of versions and devices."""
    rows = comparison["rows"]
    jobs = {
        j.pk: j.report if isinstance(j.report, dict) else {}
        for j in Job.objects.for_org(organization)
        .filter(pk__in=[r["host_job"] for r in rows if r["host_job"]])
        .only("id", "report")
    }
    sources = {f"model_version:{r['id']}": r["id"] for r in rows}
    best: dict[tuple[int, int], tuple[int, int, dict[str, Any]]] = {}
    results = (
        DeploymentResult.objects.filter(
            deployment__organization=organization,
            deployment__artifact__source__in=list(sources),
            kind="latency",
        )
        .order_by("-deployment_id", "seq")
        .values_list("deployment_id", "device_id", "deployment__artifact__source", "payload")
    )
    for deployment_id, device_id, source, payload in results:
        p = payload if isinstance(payload, dict) else {}
        if not isinstance(p.get("p50_ms"), int | float):
            continue
        size = p.get("batch_size")
        batch: int = size if isinstance(size, int) else 0
        key, rank = (sources[source], device_id), (-deployment_id, batch)
        if key not in best or rank < best[key][:2]:
            best[key] = (*rank, p)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        report = jobs.get(r["host_job"] or 0)
        state: Any = None
        if report is not None:
            made_here = r["job"] == r["host_job"] and r["label"] in ("fp32", "int8")
            state = _produced_state(report, r["label"]) if made_here else report.get("baseline")
        latency = state.get("latency") if isinstance(state, dict) else None
        out[str(r["id"])] = {
            "host": latency_block(latency) if isinstance(latency, dict) else None,
            "devices": {
                str(d["id"]): latency_block(best[(r["id"], d["id"])][2])
                for d in comparison["devices"]
                if (r["id"], d["id"]) in best
            },
        }
    return out


LATENCY_FIELDS = ("count", "mean_ms", "stdev_ms", "p50_ms", "p90_ms", "p99_ms")


def comparison_csv_with_latency(
    rows: list[list[Any]], comparison: dict[str, Any], latency: dict[str, dict[str, Any]]
) -> list[list[Any]]:
    """The comparison's CSV rows with the latency blocks appended: ``host_latency_<f>`` and
    ``device:<id>:<name>:latency_<f>`` for f in count, mean_ms, stdev_ms, p50_ms, p90_ms,
    p99_ms."""
    devices = comparison["devices"]
    header = [f"host_latency_{f}" for f in LATENCY_FIELDS]
    for d in devices:
        header += [f"device:{d['id']}:{d['name']}:latency_{f}" for f in LATENCY_FIELDS]
    out = [rows[0] + header]
    for line, row in zip(rows[1:], comparison["rows"], strict=True):
        block = latency[str(row["id"])]
        extra = [(block["host"] or {}).get(f) for f in LATENCY_FIELDS]
        for d in devices:
            dev = block["devices"].get(str(d["id"])) or {}
            extra += [dev.get(f) for f in LATENCY_FIELDS]
        out.append(line + ["" if v is None else v for v in extra])
    return out
