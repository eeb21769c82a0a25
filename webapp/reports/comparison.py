"""Reads for the comparison page: several model versions side by side, with host and on-device
figures, each cell's change against a chosen baseline, the best value per column, and the
Pareto fronts the charts draw.

Everything is read in a fixed number of queries, however many versions and devices there are:
the versions, their seed siblings, the jobs that measured them, and the device results.
The output is plain data (documented in docs/reports.md) shared by the page, the API and the
CSV and JSON exports.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Q
from django.http import Http404

from device_registry.models import DeploymentResult
from webapp.accounts.models import Organization
from webapp.catalog.models import ModelVersion
from webapp.jobs.models import Job, JobStatus
from webapp.reports.pareto import pareto_front
from webapp.reports.selectors import DETECTION, METRIC_LABELS, metrics_task, state_metrics

# A comparison of this many versions across ten devices renders in well under a second; more
# makes an unreadable table and chart, so it is refused (issue 16).
MAX_COMPARE_VERSIONS = 50

_SOURCE_PREFIX = "model_version:"


class ComparisonInputError(ValueError):
    """The request cannot be compared (the message says why, for the page and the API)."""

    status_code = 400


@dataclass(frozen=True)
class Column:
    """One compared figure. ``better`` is ``lower`` or ``higher``; ``delta`` is ``ratio`` (the
    version's value over the baseline's) or ``points`` (the difference, for percentages)."""

    key: str
    label: str
    unit: str
    better: str
    delta: str
    device_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "delta": self.delta,
            "device": self.device_id,
        }


VERSION_COLUMNS = (
    Column("params", "Params", "", "lower", "ratio"),
    Column("macs", "MACs", "", "lower", "ratio"),
    Column("size_bytes", "File size", "bytes", "lower", "ratio"),
    Column("compressed_bytes", "Compressed size", "bytes", "lower", "ratio"),
    Column("accuracy", "Test accuracy", "%", "higher", "points"),
    Column("host_p50_ms", "Host p50", "ms", "lower", "ratio"),
    Column("host_p90_ms", "Host p90", "ms", "lower", "ratio"),
)


# A comparison whose baseline is a detector: the accuracy column is mAP@0.5 (the report's
# ``accuracy`` is mAP@0.5 in percent), and two more figures of every detection report.
DETECTION_COLUMNS = (
    Column("map50_95", "Test mAP@0.5:0.95", "%", "higher", "points"),
    Column("host_e2e_p50_ms", "Host p50 end to end", "ms", "lower", "ratio"),
)


def version_columns(task: str) -> list[Column]:
    """The per-version columns of a comparison whose baseline is of ``task``."""
    if task != DETECTION:
        return list(VERSION_COLUMNS)
    out = []
    for c in VERSION_COLUMNS:
        if c.key == "accuracy":
            c = Column("accuracy", "Test mAP@0.5", "%", "higher", "points")
        out.append(c)
        if c.key == "accuracy":
            out.append(DETECTION_COLUMNS[0])
        if c.key == "host_p90_ms":
            out.append(DETECTION_COLUMNS[1])
    return out


def device_columns(device_id: int, name: str, task: str = "classification") -> tuple[Column, ...]:
    """A device's columns: p50, p90 and what it measured: top-1 for a classifier, mAP@0.5 (in
    percent, key ``map50_pct``) for a detector."""
    accuracy = (
        Column(
            f"device:{device_id}:map50_pct", f"{name} mAP@0.5", "%", "higher", "points", device_id
        )
        if task == DETECTION
        else Column(
            f"device:{device_id}:top1_pct", f"{name} accuracy", "%", "higher", "points", device_id
        )
    )
    return (
        Column(f"device:{device_id}:p50_ms", f"{name} p50", "ms", "lower", "ratio", device_id),
        Column(f"device:{device_id}:p90_ms", f"{name} p90", "ms", "lower", "ratio", device_id),
        accuracy,
    )


# --- input -------------------------------------------------------------------------------------


def parse_version_ids(values: Iterable[str]) -> list[int]:
    """Version ids from query values (``v=1&v=2`` or ``versions=1,2``), in order, once each.

    Raises:
        ComparisonInputError: a value that is not a whole number, or more ids than
            :data:`MAX_COMPARE_VERSIONS`.
    """
    ids: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise ComparisonInputError(f"{part[:40]!r} is not a model version id.")
            if int(part) not in ids:
                ids.append(int(part))
    too_many(len(ids))
    return ids


def too_many(
    count: int, *, what: str = "versions were picked", limit: int = MAX_COMPARE_VERSIONS
) -> None:
    if count > limit:
        raise ComparisonInputError(
            f"{count} {what}; a comparison takes at most {limit}. Pick fewer in the catalog."
        )


def family_version_ids(*, organization: Organization, root_id: int) -> list[int]:
    """The version ``root_id`` and every version derived from it (children, their children ...),
    oldest first. One query for the whole organisation's lineage, not one per generation.

    Raises:
        Http404: the root is not a version of ``organization``.
    """
    edges = list(
        ModelVersion.objects.for_org(organization).values_list("id", "parent_id").order_by("id")
    )
    if root_id not in {pk for pk, _ in edges}:
        raise Http404("No such model version.")
    children: dict[int, list[int]] = {}
    for pk, parent in edges:
        if parent is not None:
            children.setdefault(parent, []).append(pk)
    family, todo = {root_id}, [root_id]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in family:
                family.add(child)
                todo.append(child)
    too_many(len(family), what="versions are in this model's family")
    return sorted(family)


def job_version_ids(*, organization: Organization, job_id: int) -> list[int]:
    """The version a job started from and the versions it produced (fp32, int8).

    Raises:
        Http404: no job of ``organization`` with that id.
    """
    job = Job.objects.for_org(organization).filter(pk=job_id).only("id", "model_version_id").first()
    if job is None:
        raise Http404("No such job.")
    produced = ModelVersion.objects.for_org(organization).filter(produced_by_job_id=job.pk)
    return [job.model_version_id, *produced.order_by("id").values_list("id", flat=True)]


# --- measurements ------------------------------------------------------------------------------


def _recipe_key(recipe: Any) -> str:
    """The recipe without its seed and name: versions that share it (and parent, label and data
    set) are the same experiment run with different seeds."""
    if not isinstance(recipe, dict):
        return ""
    return json.dumps(
        {k: v for k, v in recipe.items() if k not in ("seed", "name")}, sort_keys=True, default=str
    )


def _produced_state(report: dict[str, Any], label: str) -> dict[str, Any] | None:
    """The report's metrics of the state a job's ``fp32`` or ``int8`` version was written from:
    int8 is the final ONNX state; fp32 the newest torch state (the last torch stage's export,
    else the baseline's)."""
    final = report.get("final")
    if not isinstance(final, dict):
        return None
    if label == "int8":
        return final if final.get("format") == "onnx" else None
    if label != "fp32":
        return None
    if final.get("format") != "onnx":
        return final
    for stage in reversed(report.get("stages") or []):
        metrics = stage.get("metrics") if isinstance(stage, dict) else None
        if isinstance(metrics, dict) and metrics.get("format") == "torch":
            return metrics
    baseline = report.get("baseline")
    return baseline if isinstance(baseline, dict) else None


@dataclass
class _HostMeasure:
    """What one job's report says about one version, on the host."""

    job_id: int
    metrics: dict[str, Any]
    split_key: str
    split_text: str
    seed: Any


def _split(job: Job, report: dict[str, Any], metrics: dict[str, Any]) -> tuple[str, str]:
    """The identity of the split an accuracy was scored on, and how a page names it."""
    raw = report.get("dataset")
    dataset: dict[str, Any] = raw if isinstance(raw, dict) else {}
    seed = dataset.get("split_seed", job.dataset.split_seed)
    split = metrics.get("eval_split") or ("test" if "val_accuracy" in metrics else "val")
    return (
        f"dataset:{job.dataset_id}:seed:{seed}:{split}",
        f"the {split} split of {job.dataset.name} (split seed {seed})",
    )


def _host_measures(
    *, organization: Organization, versions: Sequence[ModelVersion]
) -> tuple[dict[int, list[_HostMeasure]], dict[int, list[tuple[Any, float]]]]:
    """Per version: its host measurements, newest job first; and per version, the test
    accuracies of its seed group (``(seed, accuracy)``, one per seed, itself included).

    Two queries: the versions' seed siblings, and every succeeded job that produced or started
    from any of them.
    """
    ids = [v.pk for v in versions]
    produced = [v for v in versions if v.produced_by_job_id]
    siblings: list[ModelVersion] = list(
        ModelVersion.objects.for_org(organization)
        .filter(
            parent_id__in={v.parent_id for v in produced if v.parent_id},
            label__in={v.label for v in produced},
            produced_by_job_id__isnull=False,
        )
        .exclude(pk__in=ids)
        .only("id", "parent_id", "label", "recipe", "produced_by_job_id")
    )
    job_ids = {v.produced_by_job_id for v in [*produced, *siblings]}
    jobs = (
        Job.objects.for_org(organization)
        .filter(status=JobStatus.SUCCEEDED)
        .filter(Q(pk__in=job_ids) | Q(model_version_id__in=ids))
        .select_related("dataset")
        .only("id", "model_version_id", "report", "recipe", "dataset__name", "dataset__split_seed")
        .order_by("-id")
    )
    measures: dict[int, list[_HostMeasure]] = {}
    by_job_version: dict[tuple[int, str], _HostMeasure] = {}
    for job in jobs:
        report = job.report if isinstance(job.report, dict) else {}
        recipe = report.get("recipe") if isinstance(report.get("recipe"), dict) else job.recipe
        seed = recipe.get("seed") if isinstance(recipe, dict) else None
        states: list[tuple[int | None, str, dict[str, Any] | None]] = [
            (job.model_version_id, "", report.get("baseline"))
        ]
        states += [(None, label, _produced_state(report, label)) for label in ("fp32", "int8")]
        for version_id, label, metrics in states:
            if not isinstance(metrics, dict):
                continue
            key, text = _split(job, report, metrics)
            measure = _HostMeasure(job.pk, metrics, key, text, seed)
            if version_id is not None and version_id in ids:
                measures.setdefault(version_id, []).append(measure)
            if label:
                by_job_version[(job.pk, label)] = measure
    for v in produced:
        own = by_job_version.get((v.produced_by_job_id or 0, v.label))
        if own is not None:
            # The producing job's own measurement comes first: it scored this very file.
            measures.setdefault(v.pk, []).insert(0, own)
    seeds: dict[int, list[tuple[Any, float]]] = {}
    groups: dict[tuple[Any, ...], list[ModelVersion]] = {}
    for v in [*produced, *siblings]:
        groups.setdefault((v.parent_id, v.label, _recipe_key(v.recipe)), []).append(v)
    for v in produced:
        mine = by_job_version.get((v.produced_by_job_id or 0, v.label))
        if mine is None:
            continue
        per_seed: dict[Any, float] = {}
        for member in groups[(v.parent_id, v.label, _recipe_key(v.recipe))]:
            m = by_job_version.get((member.produced_by_job_id or 0, member.label))
            acc = state_metrics(m.metrics)["accuracy"] if m else None
            if m is None or acc is None or m.split_key != mine.split_key:
                continue
            per_seed.setdefault(json.dumps(m.seed, default=str), acc)
        seeds[v.pk] = list(per_seed.items())
    return measures, seeds


@dataclass
class _DeviceMeasure:
    p50_ms: float | None = None
    p90_ms: float | None = None
    top1_pct: float | None = None
    map50_pct: float | None = None  # a detector's mAP@0.5 on the device, in percent
    eval_key: str = ""
    eval_text: str = ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _device_measures(
    *, organization: Organization, version_ids: Sequence[int]
) -> tuple[dict[int, str], dict[tuple[int, int], _DeviceMeasure]]:
    """Devices that ran any of the versions (id to name, by name), and per (version, device)
    the newest deployment's latency at its smallest batch size and its accuracy. One query."""
    sources = {f"{_SOURCE_PREFIX}{pk}": pk for pk in version_ids}
    # Plain tuples, and only the payload keys read here (a latency payload also carries the
    # operator profile): building model instances and decoding whole payloads cost most of a
    # 50-version x 10-device comparison's time (benchmarks/compare_bench.py).
    results = (
        DeploymentResult.objects.filter(
            deployment__organization=organization,
            deployment__artifact__source__in=list(sources),
            kind__in=("latency", "accuracy"),
        )
        .order_by("-deployment_id", "seq")
        .values_list(
            "deployment_id",
            "device_id",
            "kind",
            "device__name",
            "deployment__artifact__source",
            "deployment__artifact__eval_meta",
            "payload__p50_ms",
            "payload__p90_ms",
            "payload__batch_size",
            "payload__top1_pct",
            "payload__map50",
        )
    )
    devices: dict[int, str] = {}
    latency: dict[tuple[int, int], tuple[int, int, dict[str, Any]]] = {}
    accuracy: dict[tuple[int, int], tuple[int, dict[str, Any], dict[str, Any]]] = {}
    for row in results:
        dep_id, device_id, kind, device_name, source, eval_meta, p50, p90, batch, top1, map50 = row
        key = (sources[source], device_id)
        devices[device_id] = device_name
        if kind == "latency" and _number(p50) is not None:
            rank = (-dep_id, batch if isinstance(batch, int) and not isinstance(batch, bool) else 0)
            if key not in latency or rank < latency[key][:2]:
                latency[key] = (*rank, {"p50_ms": p50, "p90_ms": p90})
        elif kind == "accuracy" and key not in accuracy:
            if _number(top1) is None and _number(map50) is None:
                continue
            meta = eval_meta if isinstance(eval_meta, dict) else {}
            accuracy[key] = (dep_id, {"top1_pct": top1, "map50": map50}, meta)
    out: dict[tuple[int, int], _DeviceMeasure] = {}
    for key in {*latency, *accuracy}:
        m = _DeviceMeasure()
        if key in latency:
            p = latency[key][2]
            m.p50_ms, m.p90_ms = _number(p.get("p50_ms")), _number(p.get("p90_ms"))
        if key in accuracy:
            _, p, meta = accuracy[key]
            m.top1_pct = _number(p.get("top1_pct"))
            map50 = _number(p.get("map50"))
            m.map50_pct = None if map50 is None else 100.0 * map50
            m.eval_key = (
                f"dataset:{meta.get('dataset_id')}:seed:{meta.get('split_seed')}"
                f":first:{meta.get('count')}"
                if meta
                else "unknown"
            )
            m.eval_text = (
                f"{meta.get('count')} images of the test split of {meta.get('dataset')} "
                f"(split seed {meta.get('split_seed')})"
                if meta
                else "an evaluation set of unknown origin"
            )
        out[key] = m
    ordered = dict(sorted(devices.items(), key=lambda kv: (kv[1].lower(), kv[0])))
    return ordered, out


# --- the comparison ----------------------------------------------------------------------------


def _cell(value: float | int | None, *, reason: str = "", spread: float | None = None,
          n: int | None = None, note: str = "") -> dict[str, Any]:  # fmt: skip
    return {
        "value": value,
        "spread": spread,
        "n": n,
        "note": note,
        "delta": None,
        "best": False,
        "blank_reason": "" if value is not None else reason,
    }


def _reference(keys: dict[int, str], baseline_id: int) -> str:
    """The split everything is compared on: the baseline's, else the most common one."""
    if keys.get(baseline_id):
        return keys[baseline_id]
    counts = Counter(k for k in keys.values() if k)
    return counts.most_common(1)[0][0] if counts else ""


def _title(v: ModelVersion) -> str:
    return f"{v.asset.name} v{v.number}" + (f" {v.label}" if v.label else "")


def comparison_build(
    *,
    organization: Organization,
    version_ids: Sequence[int],
    baseline_id: int | None = None,
    max_versions: int = MAX_COMPARE_VERSIONS,
) -> dict[str, Any]:
    """The comparison of ``version_ids`` against ``baseline_id`` (default: the oldest of them).

    Raises:
        ComparisonInputError: no versions, too many, or a baseline that is not among them.
        Http404: an id that is not a version of ``organization`` (another organisation's too).
    """
    if not version_ids:
        raise ComparisonInputError("Pick at least one model version to compare.")
    too_many(len(version_ids), limit=max_versions)
    found = {
        v.pk: v
        for v in ModelVersion.objects.for_org(organization)
        .filter(pk__in=list(version_ids))
        .select_related("asset")
    }
    if len(found) != len(set(version_ids)):
        raise Http404("No such model version.")
    if baseline_id is None:
        baseline_id = min(found)
    if baseline_id not in found:
        raise ComparisonInputError("The baseline must be one of the compared versions.")
    base = found[baseline_id]
    others = sorted(
        (v for v in found.values() if v.pk != baseline_id), key=lambda v: (v.asset.name, v.number)
    )
    versions = [base, *others]
    measures, seeds = _host_measures(organization=organization, versions=versions)
    devices, on_device = _device_measures(organization=organization, version_ids=list(found))

    host: dict[int, _HostMeasure | None] = {
        v.pk: ms[0] if (ms := measures.get(v.pk)) else None for v in versions
    }
    host_metrics = {pk: state_metrics(m.metrics) if m else None for pk, m in host.items()}
    # A version's task: the catalog's, or detection when the report measured it as a detector.
    tasks: dict[int, str] = {}
    for v in versions:
        measured = host[v.pk]
        as_detector = measured is not None and metrics_task(measured.metrics) == DETECTION
        tasks[v.pk] = DETECTION if as_detector else v.task
    task = tasks[baseline_id]
    acc_keys: dict[int, str] = {}
    for pk, m in host.items():
        hm = host_metrics[pk]
        acc_keys[pk] = m.split_key if m and hm and hm["accuracy"] is not None else ""
    reference = _reference(acc_keys, baseline_id)
    reference_text = next(
        (m.split_text for m in host.values() if m and m.split_key == reference), ""
    )

    columns = version_columns(task)
    for device_id, name in devices.items():
        columns.extend(device_columns(device_id, name, task))

    rows: list[dict[str, Any]] = []
    for v in versions:
        hm = host_metrics[v.pk]
        measure = host[v.pk]
        not_measured = (
            "Not measured on the host: no finished job produced this version or started from it."
        )
        cells: dict[str, dict[str, Any]] = {
            "params": _cell(v.params if v.params is not None else (hm or {}).get("params"),
                            reason="Not counted yet."),
            "macs": _cell(v.macs if v.macs is not None else (hm or {}).get("macs"),
                          reason="Not counted: MACs are counted on PyTorch models before export."),
            "size_bytes": _cell(v.size_bytes or None, reason="No stored file."),
        }  # fmt: skip
        if v.container_size:
            cells["compressed_bytes"] = _cell(v.container_size, note="container")
        else:
            cells["compressed_bytes"] = _cell(
                (hm or {}).get("zip_bytes"),
                reason=not_measured if hm is None else "The report has no compressed size.",
                note="deflate" if hm and hm.get("zip_bytes") else "",
            )
        cells["accuracy"] = _accuracy_cell(
            tasks[v.pk], task, hm, measure, reference, reference_text, seeds.get(v.pk, []),
            not_measured,
        )  # fmt: skip
        if task == DETECTION:
            cells["map50_95"] = _map50_95_cell(cells["accuracy"], hm, not_measured)
            cells["host_e2e_p50_ms"] = _cell(
                (hm or {}).get("e2e_p50_ms"),
                reason=not_measured if hm is None else "The job measured no end-to-end latency.",
                spread=(hm or {}).get("e2e_iqr_ms"),
            )
        for key, field in (("host_p50_ms", "p50_ms"), ("host_p90_ms", "p90_ms")):
            value = (hm or {}).get(field)
            cells[key] = _cell(
                value,
                reason=not_measured if hm is None else "The job measured no latency.",
                spread=(hm or {}).get("iqr_ms") if field == "p50_ms" else None,
                n=(hm or {}).get("rounds") if field == "p50_ms" else None,
            )
        for device_id, name in devices.items():
            dm = on_device.get((v.pk, device_id))
            reason = f"Not run on {name}." if dm is None else ""
            cells[f"device:{device_id}:p50_ms"] = _cell(
                dm.p50_ms if dm else None, reason=reason or "No latency result."
            )
            cells[f"device:{device_id}:p90_ms"] = _cell(
                dm.p90_ms if dm else None, reason=reason or "No p90 in the latency result."
            )
            if task == DETECTION:
                cells[f"device:{device_id}:map50_pct"] = _cell(
                    dm.map50_pct if dm else None,
                    reason=reason or "mAP was not measured on the device.",
                    note=dm.eval_text if dm else "",
                )
            else:
                cells[f"device:{device_id}:top1_pct"] = _cell(
                    dm.top1_pct if dm else None,
                    reason=reason or "Accuracy was not measured on the device.",
                    note=dm.eval_text if dm else "",
                )
        rows.append(
            {
                "id": v.pk,
                "name": v.asset.name,
                "number": v.number,
                "label": v.label,
                "title": _title(v),
                "format": v.format,
                "task": tasks[v.pk],
                "metric": METRIC_LABELS.get(tasks[v.pk], "top-1"),
                "parent": v.parent_id,
                "job": v.produced_by_job_id,
                "is_baseline": v.pk == baseline_id,
                "host_job": measure.job_id if measure else None,
                "cells": cells,
            }
        )
    for device_id, name in devices.items():
        _device_accuracy_comparable(rows, on_device, device_id, name, baseline_id, task)
    for column in columns:
        _deltas_and_best(rows, column, baseline_id)
    return {
        "baseline": baseline_id,
        "versions": [v.pk for v in versions],
        "max_versions": MAX_COMPARE_VERSIONS,
        "accuracy_split": reference_text,
        "task": task,
        "metric": METRIC_LABELS.get(task, "top-1"),
        "mixed_tasks": mixed_tasks_note(tasks, baseline_id),
        "devices": [{"id": pk, "name": name} for pk, name in devices.items()],
        "columns": [c.to_dict() for c in columns],
        "rows": rows,
        "pareto": _pareto(rows, devices),
    }


def mixed_tasks_note(tasks: dict[int, str], baseline_id: int) -> str:
    """What the page says when detectors and classifiers are compared together ('' when all
    are of one task): their metrics (mAP@0.5, top-1) are not one axis, so only the baseline's
    task is scored, charted and marked best."""
    others = sorted({t for t in tasks.values()} - {tasks[baseline_id]})
    if not others:
        return ""
    base = tasks[baseline_id]
    n = sum(1 for t in tasks.values() if t != base)
    what = " and ".join(others)
    return (
        f"This comparison mixes {base} and {what} models. The baseline is a {base} model, so "
        f"{METRIC_LABELS.get(base, 'top-1')} is shown and plotted for the {base} models only; "
        f"the {n} {what} model{'s' if n != 1 else ''} ({METRIC_LABELS.get(others[0], 'top-1')} "
        "is another measure) are left blank in that column and off the charts. Pick one of "
        "them as the baseline to compare those instead."
    )


def _map50_95_cell(
    accuracy: dict[str, Any], hm: dict[str, Any] | None, not_measured: str
) -> dict[str, Any]:
    """A detector's test mAP@0.5:0.95, blank whenever its mAP@0.5 is (same split, same task),
    with the same reason."""
    if accuracy["value"] is None:
        return _cell(None, reason=accuracy["blank_reason"] or not_measured)
    value = (hm or {}).get("map50_95")
    return _cell(value, reason="The job's report has no mAP@0.5:0.95.")


def _accuracy_cell(
    task: str,
    base_task: str,
    hm: dict[str, Any] | None,
    measure: _HostMeasure | None,
    reference: str,
    reference_text: str,
    seed_values: list[tuple[Any, float]],
    not_measured: str,
) -> dict[str, Any]:
    """The host test accuracy, blank (with why) unless scored on the reference test split and
    for the baseline's task; with the mean's spread across seeds when two or more ran."""
    if hm is None or measure is None:
        return _cell(None, reason=not_measured)
    value = hm["accuracy"]
    if value is None:
        return _cell(None, reason="The job's report has no accuracy.")
    if task != base_task:
        return _cell(
            None,
            reason=f"A {task} model ({METRIC_LABELS.get(task, 'top-1')}); the baseline is "
            f"{base_task} ({METRIC_LABELS.get(base_task, 'top-1')}): not comparable.",
        )
    if not measure.split_key.endswith(":test"):
        return _cell(
            None,
            reason=f"Scored on {measure.split_text}, from before reports used the test split.",
        )
    if measure.split_key != reference:
        return _cell(
            None,
            reason=f"Scored on {measure.split_text}, not on {reference_text}: not comparable.",
        )
    values = [acc for _, acc in seed_values]
    if len(values) >= 2:
        return _cell(
            value,
            spread=statistics.stdev(values),
            n=len(values),
            note=f"mean {statistics.fmean(values):.2f} over {len(values)} seeds",
        )
    return _cell(value)


def _device_accuracy_comparable(
    rows: list[dict[str, Any]],
    on_device: dict[tuple[int, int], _DeviceMeasure],
    device_id: int,
    name: str,
    baseline_id: int,
    task: str = "classification",
) -> None:
    """On one device, accuracy (a detector's mAP@0.5) is compared only on the same evaluation
    set (data set, split seed and number of images) and for the baseline's task; other cells
    are blanked with the reason."""
    field = "map50_pct" if task == DETECTION else "top1_pct"
    keys = {
        row["id"]: m.eval_key
        for row in rows
        if (m := on_device.get((row["id"], device_id)))
        and getattr(m, field) is not None
        and row["task"] == task
    }
    reference = _reference(keys, baseline_id)
    text = next(
        (on_device[(pk, device_id)].eval_text for pk, k in keys.items() if k == reference), ""
    )
    for row in rows:
        m = on_device.get((row["id"], device_id))
        cell = row["cells"][f"device:{device_id}:{field}"]
        if m is not None and getattr(m, field) is not None and row["task"] != task:
            cell.update(value=None, blank_reason=f"A {row['task']} model: not comparable.")
        elif m is not None and getattr(m, field) is not None and m.eval_key != reference:
            cell.update(
                value=None,
                blank_reason=f"Measured on {name} with {m.eval_text}, not {text}: not comparable.",
            )


def _deltas_and_best(rows: list[dict[str, Any]], column: Column, baseline_id: int) -> None:
    """Each cell's change against the baseline's cell, and the best value(s) of the column."""
    base = next(r for r in rows if r["id"] == baseline_id)["cells"][column.key]["value"]
    values = [r["cells"][column.key]["value"] for r in rows]
    present = [float(x) for x in values if x is not None]
    best = (min if column.better == "lower" else max)(present) if present else None
    for row in rows:
        cell = row["cells"][column.key]
        value = cell["value"]
        if value is None:
            continue
        if base is not None:
            if column.delta == "points":
                cell["delta"] = float(value) - float(base)
            elif base:
                cell["delta"] = float(value) / float(base)
        # A column where every version has the same value marks nothing as best.
        cell["best"] = len(present) > 1 and float(value) == best and len(set(present)) > 1


def _pareto(rows: list[dict[str, Any]], devices: dict[int, str]) -> dict[str, list[int]]:
    """Version ids on the Pareto front of test accuracy against each latency (host, each
    device) and against file size; only versions with both numbers take part."""
    axes = {"host": "host_p50_ms", "size": "size_bytes"}
    axes.update({f"device:{pk}": f"device:{pk}:p50_ms" for pk in devices})
    out: dict[str, list[int]] = {}
    for name, key in axes.items():
        pts = [
            (row["id"], (float(c["value"]), float(a["value"])))
            for row in rows
            if (c := row["cells"][key])["value"] is not None
            and (a := row["cells"]["accuracy"])["value"] is not None
        ]
        front = pareto_front([p for _, p in pts], ("min", "max"))
        out[name] = [pts[i][0] for i in front]
    return out


# --- requests ----------------------------------------------------------------------------------


def _one_id(value: str, what: str) -> int:
    if not value.strip().isdigit():
        raise ComparisonInputError(f"{what} must be a model version or job id, not {value[:40]!r}.")
    return int(value)


def comparison_from_query(
    *,
    organization: Organization,
    versions: Sequence[str] = (),
    family: str = "",
    job: str = "",
    baseline: str = "",
) -> dict[str, Any]:
    """The comparison a page or API query asks for: ``versions`` (ids, repeated or comma
    separated), or ``family`` (a version id: it and everything derived from it; it is the
    default baseline), or ``job`` (a job id: the version it started from, the default baseline,
    and the versions it produced). ``baseline`` picks another of them.

    Raises:
        ComparisonInputError: malformed or conflicting input, nothing picked, too many versions.
        Http404: a version or job that is not ``organization``'s.
    """
    given = [name for name, value in (("versions", versions), ("family", family), ("job", job))
             if value]  # fmt: skip
    if len(given) > 1:
        raise ComparisonInputError(
            f"Give one of versions, family or job, not {' and '.join(given)}."
        )
    base = _one_id(baseline, "baseline") if baseline else None
    if family:
        root = _one_id(family, "family")
        ids = family_version_ids(organization=organization, root_id=root)
        base = base if base is not None else root
    elif job:
        ids = job_version_ids(organization=organization, job_id=_one_id(job, "job"))
        base = base if base is not None else ids[0]
    else:
        ids = parse_version_ids(versions)
    return comparison_build(organization=organization, version_ids=ids, baseline_id=base)


# --- exports and display -----------------------------------------------------------------------

CSV_VERSION_FIELDS = ("id", "name", "number", "label", "format", "task", "parent", "job",
                      "is_baseline", "metric")  # fmt: skip
CSV_CELL_SUFFIXES = ("", "_spread", "_n", "_delta", "_best", "_blank_reason")


def _csv_key(column: dict[str, Any], devices: dict[int, str]) -> str:
    if column["device"] is None:
        return str(column["key"])
    _, device_id, metric = str(column["key"]).split(":")
    return f"device:{device_id}:{devices.get(int(device_id), '')}:{metric}"


def comparison_csv_rows(comparison: dict[str, Any]) -> list[list[Any]]:
    """The comparison as CSV rows, one per version (header first). Each column ``key`` gives
    ``key``, ``key_spread``, ``key_n``, ``key_delta``, ``key_best`` and ``key_blank_reason``;
    a device column's key is ``device:<id>:<name>:<metric>``."""
    devices = {d["id"]: d["name"] for d in comparison["devices"]}
    columns = comparison["columns"]
    header: list[Any] = list(CSV_VERSION_FIELDS)
    for column in columns:
        key = _csv_key(column, devices)
        header += [key + suffix for suffix in CSV_CELL_SUFFIXES]
    out = [header]
    for row in comparison["rows"]:
        line: list[Any] = [row[f] for f in CSV_VERSION_FIELDS]
        for column in columns:
            c = row["cells"][column["key"]]
            line += [c["value"], c["spread"], c["n"], c["delta"], c["best"], c["blank_reason"]]
        out.append(["" if v is None else v for v in line])
    return out


def _bytes(value: float) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _text(value: Any, unit: str) -> str:
    if unit == "bytes":
        return _bytes(float(value))
    if unit == "%":
        return f"{float(value):.2f} %"
    if unit == "ms":
        return f"{float(value):.3f} ms"
    return f"{int(value):,}"


def _delta_text(delta: float | None, kind: str) -> str:
    if delta is None:
        return ""
    return f"{delta:+.2f} pt" if kind == "points" else f"×{delta:.2f}"


def _spread_text(cell: dict[str, Any], unit: str) -> str:
    if cell["spread"] is None:
        return ""
    if unit == "%":
        return f"± {cell['spread']:.2f} sd over {cell['n']} seeds"
    rounds = f", {cell['n']} rounds" if cell["n"] else ""
    return f"± {cell['spread']:.3f} IQR{rounds}"


def comparison_table(comparison: dict[str, Any]) -> dict[str, Any]:
    """The comparison as the page's table: header cells, and per version its cells as text
    (value, spread, change against the baseline, blank reason) with a sort value."""
    columns = comparison["columns"]
    rows = []
    for row in comparison["rows"]:
        cells = []
        for column in columns:
            c = row["cells"][column["key"]]
            has = c["value"] is not None
            cells.append(
                {
                    "key": column["key"],
                    "text": _text(c["value"], column["unit"]) if has else "—",
                    "sort": c["value"] if has else "",
                    "spread": _spread_text(c, column["unit"]) if has else "",
                    "delta": "" if row["is_baseline"] else _delta_text(c["delta"], column["delta"]),
                    "note": c["note"],
                    "best": c["best"],
                    "reason": c["blank_reason"],
                }
            )
        rows.append({**row, "table_cells": cells})
    return {"columns": columns, "rows": rows}
