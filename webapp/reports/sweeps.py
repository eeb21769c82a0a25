"""Reads for the sweep page and its API: one row per grid point (its child job, the version it
produced, accuracy, host and on-device latency, size), the Pareto fronts and charts of the
comparison page over the finished points, and the recommendation under the constraints.

The numbers come from :func:`webapp.reports.comparison.comparison_build` over the sweep's
starting version (the baseline) and each finished child's final version, so the sweep and the
comparison page never disagree; the query count does not grow with the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compression.sweep import MAX_SWEEP_POINTS
from webapp.catalog.models import ModelVersion
from webapp.jobs.models import Sweep
from webapp.jobs.sweep_selectors import sweep_children, sweep_state
from webapp.reports import charts
from webapp.reports.comparison import comparison_build
from webapp.reports.recommend import PREFERENCES, Candidate, Constraints, recommend


class ConstraintsError(ValueError):
    """A constraint given in the query is malformed (the message says which)."""


def constraints_from(stored: Mapping[str, Any], query: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's stored constraints, overridden by any given in ``query`` (a blank value
    clears one). Raises :class:`ConstraintsError` for a malformed number or ``prefer``."""
    out = {k: stored.get(k) for k in ("max_accuracy_drop", "device", "max_p50_ms", "prefer")}
    for key in ("max_accuracy_drop", "max_p50_ms"):
        if key in query:
            raw = str(query.get(key) or "").strip()
            try:
                number = float(raw) if raw else None
            except ValueError:
                raise ConstraintsError(f"{key} must be a number, not {raw[:40]!r}.") from None
            if number is not None and not number >= 0:
                raise ConstraintsError(f"{key} must be 0 or more.")
            out[key] = number
    if "device" in query:
        out["device"] = str(query.get("device") or "").strip() or None
    if "prefer" in query:
        out["prefer"] = str(query.get("prefer") or "").strip() or None
    out["prefer"] = out.get("prefer") or "latency"
    if out["prefer"] not in PREFERENCES:
        raise ConstraintsError(f"prefer must be one of {', '.join(PREFERENCES)}.")
    return out


def _final_versions(child_ids: list[int], sweep: Sweep) -> dict[int, ModelVersion]:
    """Each finished child's final version: int8 when the recipe quantized, else fp32."""
    picked: dict[int, ModelVersion] = {}
    versions = ModelVersion.objects.for_org(sweep.organization).filter(
        produced_by_job_id__in=child_ids
    )
    for v in versions.order_by("id"):
        job_id = v.produced_by_job_id
        assert job_id is not None
        if job_id not in picked or v.label == "int8":
            picked[job_id] = v
    return picked


def sweep_results(*, sweep: Sweep, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the sweep page draws and the API returns (documented in docs/reports.md).

    Raises:
        ConstraintsError: a malformed constraint in ``query``.
    """
    limits = constraints_from(sweep.constraints or {}, query or {})
    children = sweep_children(sweep=sweep)
    state = sweep_state(sweep=sweep, children=children)
    finals = _final_versions([j.pk for j in children], sweep)
    ids = [sweep.model_version_id, *(finals[j.pk].pk for j in children if j.pk in finals)]
    comparison = comparison_build(
        organization=sweep.organization,
        version_ids=ids,
        baseline_id=sweep.model_version_id,
        max_versions=MAX_SWEEP_POINTS + 1,  # every point and the baseline
    )
    rows = {r["id"]: r for r in comparison["rows"]}
    devices = {d["name"]: d["id"] for d in comparison["devices"]}
    device = limits.get("device")
    device_id = devices.get(device) if device else None
    # A named device nothing has run on yet has no latency for any point (never the host's).
    latency_key = f"device:{device_id}:p50_ms" if device_id is not None else "host_p50_ms"
    if device and device_id is None:
        latency_key = "none"

    def value(row: dict[str, Any] | None, key: str) -> float | None:
        if row is None or key not in row["cells"]:
            return None
        v = row["cells"][key]["value"]
        return float(v) if v is not None else None

    points: list[dict[str, Any]] = []
    candidates: list[Candidate] = []
    label_of: dict[int, str] = {}
    for job in children:
        values = job.sweep_point or {}
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or job.name
        version = finals.get(job.pk)
        row = rows.get(version.pk) if version else None
        delta = row["cells"]["accuracy"]["delta"] if row else None
        drop = -float(delta) if delta is not None else None
        point = {
            "job": job.pk,
            "status": job.status,
            "progress": job.progress,
            "message": job.message,
            "error": job.error,
            "values": values,
            "label": label,
            "version": version.pk if version else None,
            "accuracy": value(row, "accuracy"),
            "accuracy_drop": drop,
            "host_p50_ms": value(row, "host_p50_ms"),
            "size_bytes": value(row, "size_bytes"),
            "macs": value(row, "macs"),
            "on_device_p50_ms": {
                name: value(row, f"device:{pk}:p50_ms") for name, pk in devices.items()
            },
        }
        points.append(point)
        if version is not None:
            label_of[version.pk] = label
            candidates.append(
                Candidate(
                    id=version.pk,
                    label=label,
                    accuracy_drop=drop,
                    latency_ms=value(row, latency_key),
                    size_bytes=value(row, "size_bytes"),
                )
            )
    where = device if device else "host"
    if device and device_id is None:
        where = f"{device} (no finished point has run there yet)"
    advice = recommend(
        candidates,
        Constraints(
            max_accuracy_drop=limits.get("max_accuracy_drop"),
            max_latency_ms=limits.get("max_p50_ms"),
            latency_where=where,
            prefer=limits["prefer"],
        ),
    )
    # The charts name each point by its grid values, the baseline as such.
    for row in comparison["rows"]:
        row["title"] = "baseline" if row["is_baseline"] else label_of.get(row["id"], row["title"])
    chosen = next((p for p in points if p["version"] == advice.choice), None)
    return {
        "sweep": sweep.pk,
        "name": sweep.name,
        "state": state,
        "grid": sweep.grid,
        # what ``accuracy`` is: top-1, or mAP@0.5 (percent) when the sweep compresses a detector
        "metric": comparison["metric"],
        "baseline": {
            "version": sweep.model_version_id,
            "status": sweep.baseline_status,
            "accuracy": value(rows.get(sweep.model_version_id), "accuracy"),
            "host_p50_ms": value(rows.get(sweep.model_version_id), "host_p50_ms"),
        },
        "constraints": limits,
        "devices": sorted(devices),
        "points": points,
        "pareto": comparison["pareto"],
        "recommendation": {**advice.to_dict(), "job": chosen["job"] if chosen else None},
        "figures": charts.comparison_figures(comparison),
    }
