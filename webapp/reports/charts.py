"""Plotly figures for a job report, as plain dicts (``Plotly.newPlot(el, fig.data, fig.layout)``).

Built from selector output only, so the same figures serve the page and any export.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 60},
    "height": 340,
    "template": "plotly_white",
}


# An accuracy axis in percent, rounded to a tenth (never 90.733).
ACCURACY_AXIS: dict[str, Any] = {"tickformat": ".1f", "ticksuffix": " %"}


def epoch_axis(n: int) -> dict[str, Any]:
    """An x axis over epochs 1..n with whole-number ticks only (at most about ten of them)."""
    return {
        "title": "epoch (all stages)",
        "tickmode": "linear",
        "tick0": 1,
        "dtick": max(1, math.ceil(n / 10)),
        "tickformat": "d",
        "range": [0.5, n + 0.5],
    }


def _fig(fig: go.Figure) -> dict[str, Any]:
    data: dict[str, Any] = fig.to_plotly_json()
    return {"data": data.get("data", []), "layout": data.get("layout", {})}


def size_waterfall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """ONNX size (KiB) from the baseline through each stage's change to the final model."""
    sized = [r for r in rows if r["size_bytes"] is not None]
    if not sized:
        return {}
    stages = [r for r in sized if r["kind"] == "stage"]
    base = sized[0]
    x = [base["label"]] + [r["label"] for r in stages] + ["final"]
    y = [base["size_bytes"] / 1024]
    prev = base["size_bytes"]
    for r in stages:
        y.append((r["size_bytes"] - prev) / 1024)
        prev = r["size_bytes"]
    y.append(0)
    measure = ["absolute"] + ["relative"] * len(stages) + ["total"]
    fig = go.Figure(
        go.Waterfall(
            x=x,
            y=y,
            measure=measure,
            text=[f"{v:+.1f}" if m == "relative" else "" for v, m in zip(y, measure, strict=True)],
            connector={"line": {"color": "#999"}},
        )
    )
    fig.update_layout(title="Model size by stage (ONNX, KiB)", yaxis_title="KiB", **_LAYOUT)
    return _fig(fig)


def metric_names(task: str) -> tuple[str, str]:
    """What a chart calls the report's ``accuracy``: (title word, axis title) by task. A
    detector's ``accuracy`` is mAP@0.5 in percent (docs/reports.md)."""
    if task == "detection":
        return "mAP@0.5", "test mAP@0.5"
    return "Accuracy", "accuracy"


def accuracy_vs_size(rows: list[dict[str, Any]], *, task: str = "classification") -> dict[str, Any]:
    """One point per state: size against accuracy, mAP@0.5 for a detector (up and left is
    better)."""
    pts = [
        r for r in rows if r["size_bytes"] and r["accuracy"] is not None and r["kind"] != "final"
    ]
    if not pts:
        return {}
    fig = go.Figure(
        go.Scatter(
            x=[r["size_bytes"] / 1024 for r in pts],
            y=[r["accuracy"] for r in pts],
            mode="markers+text+lines",
            text=[r["label"] for r in pts],
            textposition="top center",
            marker={"size": 10},
        )
    )
    word, axis = metric_names(task)
    fig.update_layout(
        title=f"{word} against size",
        xaxis_title="ONNX size (KiB)",
        yaxis={**ACCURACY_AXIS, "title": axis},
        **_LAYOUT,
    )
    return _fig(fig)


def map_vs_latency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A detector's states: test mAP@0.5 against p50 latency, one trace for the network alone
    and one end to end (network + box decoding + NMS); up and left is better."""
    pts = [r for r in rows if r["accuracy"] is not None and r["kind"] != "final"]
    traces = []
    for key, name in (("p50_ms", "network alone"), ("e2e_p50_ms", "end to end (+ decode, NMS)")):
        have = [r for r in pts if r.get(key)]
        if have:
            traces.append(
                go.Scatter(
                    x=[r[key] for r in have],
                    y=[r["accuracy"] for r in have],
                    name=name,
                    mode="markers+text+lines",
                    text=[r["label"] for r in have],
                    textposition="top center",
                    marker={"size": 10},
                )
            )
    if not traces:
        return {}
    fig = go.Figure(traces)
    fig.update_layout(
        title="mAP@0.5 against latency",
        xaxis_title="p50 latency (ms)",
        yaxis={**ACCURACY_AXIS, "title": "test mAP@0.5"},
        **_LAYOUT,
    )
    return _fig(fig)


def layer_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Per-layer channels (or sparsity) before and after, as grouped bars."""
    metric = changes.get("metric", "channels")
    layers = [
        layer
        for layer in changes.get("layers", [])
        if layer.get(f"{metric}_before") is not None or layer.get(f"{metric}_after") is not None
    ]
    if not layers:
        return {}
    names = [layer["name"] for layer in layers]
    scale = 100.0 if metric == "sparsity" else 1.0
    before = [(layer.get(f"{metric}_before") or 0) * scale for layer in layers]
    after = [(layer.get(f"{metric}_after") or 0) * scale for layer in layers]
    fig = go.Figure(
        [go.Bar(name="before", x=names, y=before), go.Bar(name="after", x=names, y=after)]
    )
    unit = "sparsity (%)" if metric == "sparsity" else "channels"
    fig.update_layout(
        title=f"Per-layer {unit}, before and after", barmode="group", yaxis_title=unit, **_LAYOUT
    )
    return _fig(fig)


def _val_map50(row: dict[str, Any]) -> float | None:
    """A detection epoch's validation mAP@0.5 in percent (``val_map50`` is a fraction)."""
    value = row.get("val_map50")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return 100.0 * float(value)
    acc = row.get("val_acc")
    return float(acc) if isinstance(acc, int | float) and not isinstance(acc, bool) else None


def training_curves(
    epochs: list[dict[str, Any]], *, task: str = "classification"
) -> dict[str, Any]:
    """Loss and validation accuracy (a detector's: mAP@0.5) per epoch across the run's
    training stages."""
    if not epochs:
        return {}
    x = list(range(1, len(epochs) + 1))
    detection = task == "detection"
    fig = go.Figure(
        [
            go.Scatter(x=x, y=[e.get("loss") for e in epochs], name="loss", mode="lines+markers"),
            go.Scatter(
                x=x,
                y=[_val_map50(e) if detection else e.get("val_acc") for e in epochs],
                name="val mAP@0.5 (%)" if detection else "val acc (%)",
                mode="lines+markers",
                yaxis="y2",
            ),
        ]
    )
    fig.update_layout(
        title="Training",
        xaxis=epoch_axis(len(epochs)),
        yaxis={"title": "loss"},
        yaxis2={
            **ACCURACY_AXIS,
            "title": "val mAP@0.5" if detection else "val accuracy",
            "overlaying": "y",
            "side": "right",
            # An overlaying axis syncs its ticks to the left axis's grid by default, which
            # lands them on values like 90.733; its own rounded ticks read better.
            "tickmode": "auto",
            "showgrid": False,
        },
        **_LAYOUT,
    )
    return _fig(fig)


def on_device_p50(series: dict[str, dict[str, float]]) -> dict[str, Any]:
    """p50 latency by device, one bar group per final model (``{"fp32": {"pi": 3.1}}``)."""
    series = {name: bars for name, bars in series.items() if bars}
    if not series:
        return {}
    fig = go.Figure(
        [go.Bar(name=name, x=list(bars), y=list(bars.values())) for name, bars in series.items()]
    )
    fig.update_layout(
        title="On-device p50 latency (smallest batch, newest deployment)",
        barmode="group",
        yaxis_title="ms",
        **_LAYOUT,
    )
    return _fig(fig)


def report_figures(
    rows: list[dict[str, Any]],
    changes: dict[str, Any],
    epochs: list[dict[str, Any]],
    on_device: dict[str, dict[str, float]] | None = None,
    deep_compression: dict[str, Any] | None = None,
    *,
    task: str = "classification",
) -> dict[str, dict[str, Any]]:
    """Every chart of the report page, by element id; empty ones are left out. A detector's
    report adds mAP@0.5 against latency (``chart-map-latency``)."""
    figs = {
        "chart-size": size_waterfall(rows),
        "chart-acc-size": accuracy_vs_size(rows, task=task),
        "chart-map-latency": map_vs_latency(rows) if task == "detection" else {},
        "chart-layers": layer_changes(changes),
        "chart-training": training_curves(epochs, task=task),
        "chart-devices": on_device_p50(on_device or {}),
        "chart-deep-compression": deep_compression_waterfall(deep_compression),
    }
    return {k: v for k, v in figs.items() if v}


def deep_compression_waterfall(dc: dict[str, Any] | None) -> dict[str, Any]:
    """The whole model's size (KiB) through Deep Compression's steps: dense fp32, what pruning,
    weight sharing and Huffman coding each take away, and the container that is left."""
    steps = (dc or {}).get("steps") or []
    if len(steps) < 2:
        return {}
    kib = [float(s["bytes"]) / 1024 for s in steps]
    x = [s["step"] for s in steps] + ["container"]
    y = [kib[0]] + [b - a for a, b in itertools.pairwise(kib)] + [0.0]
    measure = ["absolute"] + ["relative"] * (len(steps) - 1) + ["total"]
    text = [f"{kib[0]:.1f}"]
    text += [f"{d:+.1f} (to {s['ratio']:.1f}x)" for d, s in zip(y[1:-1], steps[1:], strict=True)]
    text.append(f"{kib[-1]:.1f} ({steps[-1]['ratio']:.1f}x)")
    fig = go.Figure(
        go.Waterfall(
            x=x,
            y=y,
            measure=measure,
            text=text,
            textposition="outside",
            connector={"line": {"color": "#999"}},
        )
    )
    fig.update_layout(
        title="Deep Compression: size by step (whole model, KiB)", yaxis_title="KiB", **_LAYOUT
    )
    return _fig(fig)


def pareto_scatter(
    comparison: dict[str, Any], *, axis: str, cost_key: str, cost_title: str, scale: float = 1.0
) -> dict[str, Any]:
    """Test accuracy (mAP@0.5 when the baseline is a detector) against one cost (a latency or
    the file size) for every compared version that has both, the Pareto front drawn as a staircase and its members labelled.

    ``axis`` names the front in ``comparison["pareto"]``; ``scale`` divides the cost (bytes to
    KiB)."""
    front = comparison["pareto"].get(axis, [])
    points = [
        (row, float(row["cells"][cost_key]["value"]) / scale, float(acc))
        for row in comparison["rows"]
        if row["cells"][cost_key]["value"] is not None
        and (acc := row["cells"]["accuracy"]["value"]) is not None
    ]
    if not points:
        return {}
    on = sorted((p for p in points if p[0]["id"] in front), key=lambda p: p[1])
    off = [p for p in points if p[0]["id"] not in front]
    hover = "%{text}<br>%{x:.3f}, %{y:.2f} %<extra></extra>"
    # Plain Plotly JSON rather than go.Figure: a comparison draws one chart per device, and
    # plotly's validation of each made up half of a 50-version x 10-device page's server time
    # (benchmarks/compare_bench.py). The layout is what go.Figure would emit.
    traces = [
        {
            "type": "scatter",
            "x": [p[1] for p in off],
            "y": [p[2] for p in off],
            "mode": "markers",
            "name": "dominated",
            "text": [p[0]["title"] for p in off],
            "hovertemplate": hover,
            "marker": {"size": 9, "color": "#9aa5b1"},
        },
        {
            "type": "scatter",
            "x": [p[1] for p in on],
            "y": [p[2] for p in on],
            "mode": "lines+markers+text",
            "name": "Pareto front",
            "text": [p[0]["title"] for p in on],
            "textposition": "top center",
            "hovertemplate": hover,
            "line": {"shape": "hv", "dash": "dash", "color": "#c0392b"},
            "marker": {"size": 11, "color": "#c0392b"},
        },
    ]
    what = "mAP@0.5" if comparison.get("task") == "detection" else "accuracy"
    layout = {
        **_plain_layout(),
        "title": {"text": f"Test {what} against {cost_title}"},
        "xaxis": {"title": {"text": cost_title}},
        "yaxis": {**ACCURACY_AXIS, "title": {"text": f"test {what} (host, full test split)"}},
        "meta": {"pareto": [p[0]["id"] for p in on]},
    }
    return {"data": traces, "layout": layout}


@functools.cache
def _template_json() -> dict[str, Any]:
    data: dict[str, Any] = pio.templates[_LAYOUT["template"]].to_plotly_json()
    return data


def _plain_layout() -> dict[str, Any]:
    """``_LAYOUT`` as go.Figure emits it: the named template expanded (Plotly.js knows none)."""
    return {**copy.deepcopy(_LAYOUT), "template": _template_json()}


def comparison_figures(comparison: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The comparison page's charts by element id: accuracy against host latency, against each
    device's latency, and against file size; empty ones are left out."""
    figs = {
        "chart-pareto-host": pareto_scatter(
            comparison, axis="host", cost_key="host_p50_ms", cost_title="host p50 latency (ms)"
        ),
    }
    for device in comparison["devices"]:
        figs[f"chart-pareto-device-{device['id']}"] = pareto_scatter(
            comparison,
            axis=f"device:{device['id']}",
            cost_key=f"device:{device['id']}:p50_ms",
            cost_title=f"p50 latency on {device['name']} (ms)",
        )
    figs["chart-pareto-size"] = pareto_scatter(
        comparison, axis="size", cost_key="size_bytes", cost_title="file size (KiB)", scale=1024
    )
    return {k: v for k, v in figs.items() if v}


def fleet_latency(fleet: dict[str, Any]) -> dict[str, Any]:
    """p50 and p90 latency on each device that ran the version (grouped bars, ms)."""
    rows = [r for r in fleet["rows"] if r["latency"]["p50_ms"] is not None]
    if not rows:
        return {}
    names = [r["device"]["name"] for r in rows]
    fig = go.Figure(
        [
            go.Bar(name="p50", x=names, y=[r["latency"]["p50_ms"] for r in rows]),
            go.Bar(name="p90", x=names, y=[r["latency"]["p90_ms"] for r in rows]),
        ]
    )
    fig.update_layout(
        title="Latency on each device (newest deployment, smallest batch)",
        barmode="group",
        yaxis_title="ms",
        **_LAYOUT,
    )
    return _fig(fig)


def fleet_op_profile(fleet: dict[str, Any], *, top: int = 15) -> dict[str, Any]:
    """The per-operator profile: ms per inference of each op type (the ``top`` costliest over
    all devices, costliest on top), one bar per device."""
    profiled = [r for r in fleet["rows"] if r["op_profile_ms"]]
    if not profiled:
        return {}
    ops = fleet["op_types"][:top]
    fig = go.Figure(
        [
            go.Bar(
                name=r["device"]["name"],
                y=ops,
                x=[r["op_profile_ms"].get(op, 0.0) for op in ops],
                orientation="h",
            )
            for r in profiled
        ]
    )
    layout = {**_LAYOUT, "height": max(340, 120 + 26 * len(ops) * max(1, len(profiled)) // 2)}
    fig.update_layout(
        title="Per-operator profile (ms per inference, by op type)",
        barmode="group",
        xaxis_title="ms per inference",
        yaxis={"autorange": "reversed", "automargin": True},
        **layout,
    )
    return _fig(fig)


def fleet_figures(fleet: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fleet view's charts by element id; empty ones are left out."""
    figs = {"chart-fleet-latency": fleet_latency(fleet), "chart-fleet-ops": fleet_op_profile(fleet)}
    return {k: v for k, v in figs.items() if v}
