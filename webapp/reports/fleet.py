"""The fleet view of one model version: one row per device that ran it, and the per-operator
profile the devices measured.

Read in two queries whatever the number of devices and deployments: the version, then every
latency and accuracy result of the artifacts made from it (with their device and artifact).
"""

from __future__ import annotations

import json
from typing import Any

from django.http import Http404

from device_registry.eval_sets import describe as describe_eval_set
from device_registry.models import DeploymentResult
from webapp.accounts.models import Organization
from webapp.catalog.models import ModelVersion

_SOURCE_PREFIX = "model_version:"

# The CSV export's columns, in order (documented in docs/reports.md).
FLEET_CSV_FIELDS = (
    "device_id", "device", "hardware", "cpu", "cores", "os", "arch", "runtime", "provider",
    "batch_size", "threads", "latency_count", "latency_mean_ms", "latency_stdev_ms",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput", "peak_mem_mb",
    "load_time_ms", "top1_pct", "eval_samples", "eval_set", "measured_at", "deployment",
    "op_profile_ms",
    # a detector's (issue 15): mAP on the device in percent, latency end to end (network +
    # decode + NMS) and frames per second both ways
    "map50_pct", "map50_95_pct", "e2e_p50_ms", "e2e_p90_ms", "fps", "fps_e2e",
    # the CPU's vector and int8 instruction sets the agent found ("" from agents that do not say)
    "isa",
)  # fmt: skip


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def latency_block(p: dict[str, Any]) -> dict[str, Any]:
    """Latency as every export writes it: ``count`` timed runs (runs x rounds), ``mean_ms``,
    ``stdev_ms`` (of the single runs), ``p50_ms``, ``p90_ms``, ``p99_ms`` (None below 100
    timed runs); every figure None where the measurement did not record it."""
    runs, rounds = _int(p.get("runs")), _int(p.get("rounds")) or 1
    return {
        "count": runs * rounds if runs is not None else None,
        "mean_ms": _number(p.get("mean_ms")),
        "stdev_ms": _number(p.get("std_ms")),
        "p50_ms": _number(p.get("p50_ms")),
        "p90_ms": _number(p.get("p90_ms")),
        "p99_ms": _number(p.get("p99_ms")),
    }


def version_summary(v: ModelVersion) -> dict[str, Any]:
    return {
        "id": v.pk,
        "title": f"{v.asset.name} v{v.number}" + (f" {v.label}" if v.label else ""),
        "name": v.asset.name,
        "number": v.number,
        "label": v.label,
        "format": v.format,
        "size_bytes": v.size_bytes or None,
        "parent": v.parent_id,
        "job": v.produced_by_job_id,
    }


def _op_profile(value: Any) -> dict[str, float]:
    """Op type to ms per inference, largest first; anything malformed is left out."""
    if not isinstance(value, dict):
        return {}
    ops = {str(k): float(v) for k, v in value.items() if _number(v) is not None}
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def _device_row(
    device: Any, latency: tuple[int, Any] | None, accuracy: tuple[int, Any] | None
) -> dict[str, Any]:
    facts = device.facts if isinstance(device.facts, dict) else {}
    p: dict[str, Any] = {}
    measured_at = None
    deployment = None
    if latency is not None:
        deployment, result = latency
        p = result.payload if isinstance(result.payload, dict) else {}
        measured_at = result.received_at
    hw_value = p.get("hardware")
    hw: dict[str, Any] = hw_value if isinstance(hw_value, dict) else {}
    ort = _text(p.get("ort_version")) or _text(facts.get("ort_version"))
    row: dict[str, Any] = {
        "device": {"id": device.pk, "name": device.name, "hardware": device.hardware},
        "cpu": _text(hw.get("cpu_model")) or _text(facts.get("cpu")),
        "isa": _text(hw.get("isa"))[:200],
        "cores": _int(hw.get("cores")) or _int(facts.get("cores")),
        "os": _text(hw.get("os")) or _text(facts.get("os")),
        "arch": _text(hw.get("arch")) or _text(facts.get("arch")),
        "runtime": f"onnxruntime {ort}" if ort else "",
        "provider": _text(p.get("provider")),
        "batch_size": _int(p.get("batch_size")),
        "threads": _int(p.get("threads")),
        "latency": latency_block(p),
        "throughput": _number(p.get("throughput")),
        "peak_mem_mb": _number(p.get("peak_rss_mb")),
        "load_time_ms": _number(p.get("load_time_ms")),
        "top1_pct": None,
        "eval_samples": None,
        "eval_set": "",
        "deployment": deployment,
        "accuracy_deployment": None,
        "measured_at": None,
        "op_profile_ms": _op_profile(p.get("op_profile_ms")),
        "map50_pct": None,
        "map50_95_pct": None,
        "e2e_p50_ms": _number(p.get("e2e_p50_ms")),
        "e2e_p90_ms": _number(p.get("e2e_p90_ms")),
        "fps": _number(p.get("fps")),
        "fps_e2e": _number(p.get("fps_e2e")),
    }
    if accuracy is not None:
        acc_deployment, result = accuracy
        a = result.payload if isinstance(result.payload, dict) else {}
        row["top1_pct"] = _number(a.get("top1_pct"))
        for key in ("map50", "map50_95"):
            value = _number(a.get(key))
            row[f"{key}_pct"] = None if value is None else 100.0 * value
        row["eval_samples"] = _int(a.get("samples"))
        row["eval_set"] = describe_eval_set(result.deployment.artifact.eval_meta or {})
        row["accuracy_deployment"] = acc_deployment
        if measured_at is None or result.received_at > measured_at:
            measured_at = result.received_at
    row["measured_at"] = measured_at.isoformat() if measured_at is not None else None
    return row


def fleet_build(*, organization: Organization, version_id: Any) -> dict[str, Any]:
    """Every device that ran ``version_id``: the newest deployment's latency at its smallest
    batch size, the newest accuracy, the device's facts and its per-operator profile.

    Raises:
        Http404: no version of ``organization`` with that id.
    """
    try:
        version = (
            ModelVersion.objects.for_org(organization)
            .select_related("asset")
            .get(pk=int(version_id))
        )
    except (ModelVersion.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("No such model version.") from exc
    results = (
        DeploymentResult.objects.filter(
            deployment__organization=organization,
            deployment__artifact__source=f"{_SOURCE_PREFIX}{version.pk}",
            kind__in=("latency", "accuracy"),
        )
        .select_related("device", "deployment__artifact")
        .order_by("-deployment_id", "seq")
    )
    devices: dict[int, Any] = {}
    latency: dict[int, tuple[int, int, Any]] = {}
    accuracy: dict[int, tuple[int, Any]] = {}
    for r in results:
        devices[r.device_id] = r.device
        p = r.payload if isinstance(r.payload, dict) else {}
        if r.kind == "latency" and _number(p.get("p50_ms")) is not None:
            batch = _int(p.get("batch_size")) or 0
            rank = (-r.deployment_id, batch)
            if r.device_id not in latency or rank < latency[r.device_id][:2]:
                latency[r.device_id] = (*rank, r)
        elif r.kind == "accuracy" and r.device_id not in accuracy:
            accuracy[r.device_id] = (r.deployment_id, r)
    rows = []
    for device_id, device in sorted(devices.items(), key=lambda kv: (kv[1].name.lower(), kv[0])):
        lat = latency.get(device_id)
        rows.append(
            _device_row(
                device,
                (-lat[0], lat[2]) if lat is not None else None,
                accuracy.get(device_id),
            )
        )
    ops: dict[str, float] = {}
    for row in rows:
        for op, ms in row["op_profile_ms"].items():
            ops[op] = ops.get(op, 0.0) + ms
    return {
        "version": version_summary(version),
        "task": version.task,
        "devices": len(rows),
        "rows": rows,
        "op_types": [op for op, _ in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


def fleet_csv_rows(fleet: dict[str, Any]) -> list[list[Any]]:
    """The CSV export: a header of :data:`FLEET_CSV_FIELDS`, then one row per device."""
    out: list[list[Any]] = [list(FLEET_CSV_FIELDS)]
    for row in fleet["rows"]:
        lat = row["latency"]
        flat = {
            "device_id": row["device"]["id"],
            "device": row["device"]["name"],
            "hardware": row["device"]["hardware"],
            **{k: row[k] for k in ("cpu", "cores", "os", "arch", "runtime", "provider")},
            **{k: row[k] for k in ("batch_size", "threads", "throughput", "peak_mem_mb")},
            **{f"latency_{k}": v for k, v in lat.items()},
            "load_time_ms": row["load_time_ms"],
            "top1_pct": row["top1_pct"],
            "eval_samples": row["eval_samples"],
            "eval_set": row["eval_set"],
            "measured_at": row["measured_at"],
            "deployment": row["deployment"],
            "op_profile_ms": json.dumps(row["op_profile_ms"]) if row["op_profile_ms"] else "",
            **{k: row[k] for k in ("map50_pct", "map50_95_pct", "e2e_p50_ms", "e2e_p90_ms")},
            **{k: row[k] for k in ("fps", "fps_e2e", "isa")},
        }
        out.append(["" if flat[k] is None else flat[k] for k in FLEET_CSV_FIELDS])
    return out
