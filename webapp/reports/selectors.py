"""Reads for reports: finished jobs, and a job's report flattened into table rows and layer
changes that the tables and the charts are drawn from."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.db.models import QuerySet

from device_registry import model_versions as device_versions
from webapp.accounts.models import Organization
from webapp.catalog.models import ModelFormat, ModelVersion
from webapp.catalog.selectors import preprocessing_summary
from webapp.jobs.models import Job, JobStatus
from webapp.jobs.selectors import job_list


def report_job_list(*, organization: Organization) -> QuerySet[Job]:
    """Jobs with a report, newest first."""
    return job_list(organization=organization, status=JobStatus.SUCCEEDED)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row(label: str, kind: str, m: dict[str, Any]) -> dict[str, Any]:
    """One state's figures, read defensively: reports from before the test split lack
    ``val_accuracy``, ``eval_split`` and the latency spread, and old ones scored on val."""
    latency = m.get("latency") or {}
    rounds = latency.get("rounds")
    runs = latency.get("runs")
    return {
        "label": label,
        "kind": kind,
        "format": m.get("format", ""),
        "accuracy": _number(m.get("accuracy")),  # percent, on eval_split (test since issue 8)
        "val_accuracy": _number(m.get("val_accuracy")),
        "eval_split": m.get("eval_split") or ("test" if "val_accuracy" in m else "val"),
        "test_images": m.get("test_images"),
        "params": m.get("params"),
        "nonzero_params": m.get("nonzero_params"),
        "macs": m.get("macs"),
        "size_bytes": m.get("onnx_bytes"),
        "zip_bytes": m.get("onnx_zip_bytes"),
        "p50_ms": _number(latency.get("p50_ms")),
        "p90_ms": _number(latency.get("p90_ms")),
        "p99_ms": _number(latency.get("p99_ms")),  # None below 100 timed runs
        "iqr_ms": _number(latency.get("iqr_ms")),
        "rounds": int(rounds) if isinstance(rounds, int) else None,
        "timed_runs": int(runs) * int(rounds or 1) if isinstance(runs, int) else None,
        "throughput": _number(latency.get("throughput")),
        "peak_mem_mb": _number(m.get("peak_mem_mb")),
        "cv": latency.get("cv"),
        **_detection_fields(m),
    }


DETECTION = "detection"
# How the table, charts and exports name a state's ``accuracy``, by task.
METRIC_LABELS = {DETECTION: "mAP@0.5", "classification": "top-1"}


def metrics_task(m: dict[str, Any]) -> str:
    """The task one state's metrics were measured for: ``detection`` when the dict says so
    (``task``, ``metric`` mAP@0.5, or a ``detection`` block), else ``classification``."""
    if m.get("task") == DETECTION or m.get("metric") == METRIC_LABELS[DETECTION]:
        return DETECTION
    return DETECTION if isinstance(m.get("detection"), dict) else "classification"


def report_task(report: dict[str, Any]) -> str:
    """The report's task: its top-level ``task``, else what its baseline or final model's
    metrics say (reports from before issue 15 are classification)."""
    task = report.get("task")
    if task in (DETECTION, "classification"):
        return str(task)
    for key in ("baseline", "final"):
        if metrics_task(_dict(report.get(key))) == DETECTION:
            return DETECTION
    return "classification"


def _pct_of(value: Any) -> float | None:
    """A 0-1 fraction as a percent (mAP in the report is a fraction; the page shows percent)."""
    v = _number(value)
    return None if v is None else 100.0 * v


def _detection_fields(m: dict[str, Any]) -> dict[str, Any]:
    """A state's detection figures, None for a classifier: mAP@0.5:0.95 (percent), the
    end-to-end latency (network + decode + NMS), and the test images and boxes scored."""
    task = metrics_task(m)
    det = _dict(m.get("detection"))
    e2e = _dict(m.get("latency_e2e"))
    return {
        "task": task,
        "metric": str(m.get("metric") or METRIC_LABELS.get(task, "top-1")),
        "map50_95": _pct_of(det.get("map50_95")),
        "det_images": det.get("images"),
        "det_boxes": det.get("boxes"),
        "e2e_p50_ms": _number(e2e.get("p50_ms")),
        "e2e_p90_ms": _number(e2e.get("p90_ms")),
        "e2e_p99_ms": _number(e2e.get("p99_ms")),
        "e2e_iqr_ms": _number(e2e.get("iqr_ms")),
        "e2e_throughput": _number(e2e.get("throughput")),
    }


def state_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """One state's figures (a report's ``baseline``, a stage's ``metrics`` or ``final``), read
    as defensively as the report's own table reads them."""
    return _row("", "", metrics)


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Baseline, each stage, and the final model, with deltas against the baseline."""
    rows = [_row("baseline", "baseline", report.get("baseline") or {})]
    for stage in report.get("stages", []):
        label = f"{stage.get('index', 0) + 1}. {stage.get('name') or stage.get('method')}"
        rows.append(_row(label, "stage", stage.get("metrics") or {}))
    rows.append(_row("final", "final", report.get("final") or {}))
    base = rows[0]
    for row in rows:
        row["accuracy_delta"] = (
            row["accuracy"] - base["accuracy"]
            if row["accuracy"] is not None and base["accuracy"] is not None
            else None
        )
        row["size_ratio"] = (
            base["size_bytes"] / row["size_bytes"]
            if row["size_bytes"] and base["size_bytes"]
            else None
        )
        row["mac_ratio"] = base["macs"] / row["macs"] if row["macs"] and base["macs"] else None
        row["speedup"] = (
            base["p50_ms"] / row["p50_ms"] if row["p50_ms"] and base["p50_ms"] else None
        )
        row["map50_95_delta"] = (
            row["map50_95"] - base["map50_95"]
            if row["map50_95"] is not None and base["map50_95"] is not None
            else None
        )
        row["e2e_speedup"] = (
            base["e2e_p50_ms"] / row["e2e_p50_ms"]
            if row["e2e_p50_ms"] and base["e2e_p50_ms"]
            else None
        )
    return rows


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def report_eval_facts(report: dict[str, Any]) -> dict[str, Any]:
    """What the numbers were measured on: the dataset's split sizes and seed, which split the
    accuracy is scored on, and the preprocessing record (None in reports from before them)."""
    dataset = _dict(report.get("dataset"))
    totals = _dict(dataset.get("totals"))
    boxes = _dict(dataset.get("boxes"))
    base = _dict(report.get("baseline"))
    eval_split = base.get("eval_split") or ("test" if "test" in totals else "val")
    identity = _dict(report.get("identity"))
    return {
        "splits": [(name, totals.get(name)) for name in ("train", "val", "test")],
        "has_splits": bool(totals),
        "split_seed": dataset.get("split_seed"),
        "fingerprint": dataset.get("fingerprint") or identity.get("dataset_fingerprint"),
        "eval_split": eval_split,
        "test_images": base.get("test_images") or totals.get("test"),
        # detection data sets: boxes per split (None elsewhere)
        "boxes": [(name, boxes.get(name)) for name in ("train", "val", "test")],
        "has_boxes": bool(boxes),
        "test_boxes": _dict(base.get("detection")).get("boxes") or boxes.get("test"),
        "preprocessing": preprocessing_summary(report.get("preprocessing")),
        "identity": identity,
    }


def report_layer_changes(report: dict[str, Any]) -> dict[str, Any]:
    """Per layer: channels (structured methods) or sparsity before the first stage that touched
    it and after the last one. ``metric`` says which the chart shows."""
    layers: dict[str, dict[str, Any]] = {}
    for stage in report.get("stages", []):
        for change in stage.get("layers") or []:
            name = change.get("name")
            if not name:
                continue
            entry = layers.setdefault(name, {"name": name, "kind": change.get("kind", "")})
            for key in ("channels", "sparsity", "params"):
                before, after = change.get(f"{key}_before"), change.get(f"{key}_after")
                if before is not None and f"{key}_before" not in entry:
                    entry[f"{key}_before"] = before
                if after is not None:
                    entry[f"{key}_after"] = after
    items = list(layers.values())
    metric = "channels" if any("channels_before" in e for e in items) else "sparsity"
    return {"metric": metric, "layers": items}


def report_factored_layers(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers a decomposition stage factored (with their ranks) or left alone (with why),
    stage by stage, for the report's table; empty when no stage wrote ranks or notes. Layers the
    latency gate timed carry its measured dense and chain µs and their ratio."""
    out = []
    for stage in report.get("stages", []):
        for change in stage.get("layers") or []:
            if not isinstance(change, dict) or not (change.get("ranks") or change.get("note")):
                continue
            note = str(change.get("note") or "")
            out.append(
                {
                    "stage": stage.get("index"),
                    "method": stage.get("method", ""),
                    "name": change.get("name", "?"),
                    "ranks": "/".join(str(r) for r in change.get("ranks") or []),
                    "note": note,
                    "skipped": note.startswith("skipped"),
                    "params_before": change.get("params_before"),
                    "params_after": change.get("params_after"),
                    "macs_before": change.get("macs_before"),
                    "macs_after": change.get("macs_after"),
                    **_gate_timing(change),
                }
            )
    return out


def _gate_timing(change: dict[str, Any]) -> dict[str, Any]:
    """The latency gate's measured dense and chain µs of a layer and the speedup, if it timed it."""
    before, after = change.get("latency_us_before"), change.get("latency_us_after")
    if not isinstance(before, int | float) or not isinstance(after, int | float) or after <= 0:
        return {"latency_us_before": None, "latency_us_after": None, "gate_speedup": None}
    # The gate's own paired-round speedup (what it decided on); older reports lack it.
    speedup = change.get("latency_speedup") or before / after
    return {"latency_us_before": before, "latency_us_after": after, "gate_speedup": speedup}


def report_epochs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every training epoch of every stage, in order (for the training-curve chart)."""
    out = []
    for stage in report.get("stages", []):
        for row in stage.get("history") or []:
            out.append({"stage": stage.get("index"), "method": stage.get("method"), **row})
    return out


def report_on_device(*, organization: Organization, job: Job) -> list[dict[str, Any]]:
    """Each ONNX version the job produced (fp32, int8) with its on-device results per device."""
    versions = (
        ModelVersion.objects.for_org(organization)
        .filter(produced_by_job_id=job.pk, format=ModelFormat.ONNX)
        .select_related("asset")
        .order_by("number")
    )
    return [
        {
            "version": v,
            "deploy_reason": device_versions.deploy_refusal_reason(v),
            "device_rows": device_versions.on_device_results_for_model_version(
                organization=organization, model_version=v
            ),
        }
        for v in versions
    ]


def report_verdict_flags(
    report: dict[str, Any], rows: list[dict[str, Any]], artifacts: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the verdict must not hide: a final model slower or larger than the reference it is
    judged against, and the stage that did better when the final one is worse.

    The reference is the recipe's (``targets.reference``: the baseline, or stage N when the
    first stage trained untrained weights). Returns ``{"problems": [...], "best": {...} | None}``
    with the reason of each problem and, for the best stage, its figures and the key of its
    downloadable checkpoint (an ONNX file when the stage produced one).
    """
    verdict = _dict(report.get("targets"))
    ref_name = str(verdict.get("reference") or "baseline")
    ref_row = rows[0]
    if ref_name.startswith("stage:") and ref_name.split(":", 1)[1].isdigit():
        index = int(ref_name.split(":", 1)[1]) + 1  # rows[0] is the baseline
        if index < len(rows) - 1:
            ref_row = rows[index]
    number, _, name = str(ref_row["label"]).partition(". ")
    ref_label = "the baseline" if ref_row is rows[0] else f"its reference, stage {number} ({name})"
    final = rows[-1]
    stages = [r for r in rows[1:-1] if r is not ref_row]

    def speed(row: dict[str, Any]) -> float | None:
        ref, own = ref_row["p50_ms"], row["p50_ms"]
        return ref / own if ref and own else None

    def smaller(row: dict[str, Any]) -> float | None:
        ref, own = ref_row["size_bytes"], row["size_bytes"]
        return ref / own if ref and own else None

    problems: list[str] = []
    best: dict[str, Any] | None = None
    final_speed, final_small = speed(final), smaller(final)
    if final_speed is not None and final_speed < 1.0:
        problems.append(
            f"The final model is slower than {ref_label}: {final_speed:.2f}x its speed "
            f"(p50 {final['p50_ms']:.3f} ms against {ref_row['p50_ms']:.3f} ms)."
        )
        faster = [(s, r) for r in stages if (s := speed(r)) is not None and s > final_speed]
        if faster:
            value, row = max(faster, key=lambda sr: sr[0])
            best = {"row": row, "what": "faster", "ratio": value}
    if final_small is not None and final_small < 1.0:
        problems.append(
            f"The final model is larger than {ref_label}: {final_small:.2f}x its size "
            f"({final['size_bytes']} bytes against {ref_row['size_bytes']} bytes)."
        )
        if best is None:
            small = [(s, r) for r in stages if (s := smaller(r)) is not None and s > final_small]
            if small:
                value, row = max(small, key=lambda sr: sr[0])
                best = {"row": row, "what": "smaller", "ratio": value}
    if best is not None:
        number, _, name = str(best["row"]["label"]).partition(". ")
        prefix = f"checkpoint:stage_{int(number) - 1:02d}_"
        files = [a for a in artifacts if str(a.get("key", "")).startswith(prefix)]
        onnx = [a for a in files if str(a["key"]).endswith(".onnx")]
        best.update(
            number=int(number),
            name=name,
            artifact=(onnx or files)[0] if files else None,
            is_onnx=bool(onnx),
        )
    return {"problems": problems, "best": best}


def report_deep_compression(report: dict[str, Any]) -> dict[str, Any] | None:
    """The weight-coding size table (``report["deep_compression"]``) shaped for the page: the
    paper's per-layer columns, a totals row, and each step's size and ratio; None without one.

    Read defensively, like the rest of the report: a key missing from an older or hand-made
    report shows as a dash rather than failing the page.
    """
    dc = report.get("deep_compression")
    if not isinstance(dc, dict) or not isinstance(dc.get("layers"), list):
        return None
    totals = dc.get("totals") or {}
    whole = totals.get("whole_model_bytes") or {}
    weights_only = totals.get("weights_only_bytes") or {}
    layers = []
    for row in dc["layers"]:
        if not isinstance(row, dict):
            continue
        layers.append(
            {
                "name": row.get("name", "?"),
                "kind": row.get("kind", ""),
                "stored_as": row.get("stored_as", ""),
                "weights": row.get("weights"),
                "kept_pct": _pct(row.get("kept")),
                "codebook_size": row.get("codebook_size"),
                "weight_bits": row.get("weight_bits") if row.get("stored_as") == "shared" else None,
                "weight_bits_huffman": _number(row.get("weight_bits_huffman")),
                "index_bits": row.get("index_bits") if row.get("stored_as") == "shared" else None,
                "index_bits_huffman": _number(row.get("index_bits_huffman")),
                "filler_entries": row.get("filler_entries"),
                "bytes_dense_fp32": row.get("bytes_dense_fp32"),
                "bytes_pruned": row.get("bytes_pruned"),
                "bytes_shared": row.get("bytes_shared"),
                "bytes_huffman": row.get("bytes_huffman"),
                "ratio": _ratio(row.get("bytes_dense_fp32"), row.get("bytes_huffman")),
            }
        )
    dense = _number(whole.get("dense_fp32"))
    # (the state's label, the step that led to it, its size)
    steps = [
        ("dense fp32", "dense fp32", whole.get("dense_fp32")),
        ("after pruning", "pruning", whole.get("pruned")),
        ("+ weight sharing", "weight sharing", whole.get("shared")),
        ("+ Huffman: the container", "Huffman coding", whole.get("container")),
    ]
    verification = dc.get("verification") or {}
    return {
        "stage": dc.get("stage"),
        "layers": layers,
        "total": {
            "weights": totals.get("weights"),
            "kept_pct": _pct(totals.get("kept")),
            "bytes_dense_fp32": weights_only.get("dense_fp32"),
            "bytes_pruned": weights_only.get("pruned"),
            "bytes_shared": weights_only.get("shared"),
            "bytes_huffman": weights_only.get("huffman"),
            "ratio": _ratio(weights_only.get("dense_fp32"), weights_only.get("huffman")),
        },
        "steps": [
            {"label": label, "step": step, "bytes": b, "ratio": _ratio(dense, b)}
            for label, step, b in steps
            if _number(b) is not None
        ],
        "other_fp32_bytes": totals.get("other_fp32_bytes"),
        "graph_bytes": totals.get("graph_bytes"),
        "header_bytes": totals.get("header_bytes"),
        "container_bytes": totals.get("container_bytes"),
        "verified": verification.get("predictions_equal") is True,
        "verified_samples": verification.get("samples"),
        "decode_ms": _times_1000(verification.get("decode_seconds")),
    }


def _pct(value: Any) -> float | None:
    v = _number(value)
    return None if v is None else 100.0 * v


def _times_1000(value: Any) -> float | None:
    v = _number(value)
    return None if v is None else 1000.0 * v


def _ratio(dense: Any, size: Any) -> float | None:
    d, s = _number(dense), _number(size)
    return d / s if d and s else None


# --- detection --------------------------------------------------------------------------------


def _per_class(m: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """One state's AP per class, by class, in percent: the contract's list
    (``[{"class", "ap50", "ap50_95"}]``), or a dict by class name (``map50``/``map50_95``, as
    :class:`compression.detection_metrics.DetectionMetrics` writes it). A class without ground
    truth in the test split has None."""
    raw = _dict(m.get("detection")).get("per_class")
    items: list[tuple[Any, dict[str, Any]]] = []
    if isinstance(raw, list):
        items = [(e.get("class", e.get("name")), e) for e in raw if isinstance(e, dict)]
    elif isinstance(raw, dict):
        items = [(name, e) for name, e in raw.items() if isinstance(e, dict)]
    out: dict[str, dict[str, float | None]] = {}
    for name, e in items:
        if name is None or str(name) == "":
            continue
        out[str(name)] = {
            "ap50": _pct_of(e.get("ap50", e.get("map50"))),
            "ap50_95": _pct_of(e.get("ap50_95", e.get("map50_95"))),
        }
    return out


def _class_names(report: dict[str, Any]) -> list[str]:
    classes = _dict(report.get("dataset")).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else []


def report_per_class(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class: AP@0.5 and AP@0.5:0.95 (percent) of the baseline and the final model and
    the change (final − baseline, in points), in the data set's class order (else as the
    baseline lists them); empty when neither state has per-class figures.

    A class id (``"3"``) that indexes the data set's class names is shown with its name."""
    base = _per_class(_dict(report.get("baseline")))
    final = _per_class(_dict(report.get("final")))
    if not base and not final:
        return []
    names = _class_names(report)
    keys = list(base) + [k for k in final if k not in base]
    order = {n: i for i, n in enumerate(names)}

    def rank(key: str) -> tuple[int, int, str]:
        if key in order:
            return (0, order[key], key)
        if key.isdigit() and int(key) < len(names):
            return (0, int(key), key)
        return (1, keys.index(key), key)

    rows = []
    for key in sorted(keys, key=rank):
        b, f = base.get(key, {}), final.get(key, {})
        label = key
        if key.isdigit() and key not in order and int(key) < len(names):
            label = f"{key} ({names[int(key)]})"
        row: dict[str, Any] = {"class": key, "label": label}
        for metric in ("ap50", "ap50_95"):
            before, after = b.get(metric), f.get(metric)
            row[f"base_{metric}"] = before
            row[f"final_{metric}"] = after
            row[f"delta_{metric}"] = (
                after - before if before is not None and after is not None else None
            )
        rows.append(row)
    return rows


GRID_KIND = "detections_grid"


def report_grid_path(report: dict[str, Any]) -> str | None:
    """The run-folder path of the report's detections grid (artifact kind
    ``detections_grid``, a PNG), or None when there is none or its path is unsafe (absolute,
    climbing out of the folder, not a ``.png``)."""
    for art in report.get("artifacts") or []:
        if not isinstance(art, dict) or art.get("kind") != GRID_KIND:
            continue
        rel = art.get("path")
        if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
            return None
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts or path.suffix.lower() != ".png":
            return None
        return path.as_posix()
    return None


def report_grid(report: dict[str, Any], artifacts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's detections grid for the page: its run-folder ``path`` and, when the job's
    stored artifacts include it (key ``detections_grid``, served by the job's artifact download
    path), that ``key`` and its size; ``key`` None when the report names a grid that is not
    downloadable. None when the report has no (safe) grid."""
    rel = report_grid_path(report)
    if rel is None:
        return None
    stored = next((a for a in artifacts if a.get("key") == GRID_KIND), None)
    return {
        "path": rel,
        "key": GRID_KIND if stored else None,
        "size_bytes": stored.get("size_bytes") if stored else None,
    }
