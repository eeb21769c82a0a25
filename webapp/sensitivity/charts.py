"""The sensitivity heatmap as a plain Plotly dict (``Plotly.newPlot(el, fig.data, fig.layout)``)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from compression.sensitivity import SensitivityResult


def sensitivity_heatmap(result: SensitivityResult) -> dict[str, Any]:
    """Layers (rows, in module order from the top) against ratios (columns); the colour is the
    val accuracy drop in points, red for a loss, blue for a gain; each cell is labelled."""
    if not result.layers:
        return {}
    x = [f"{r:g}" for r in result.ratios]
    y = [layer.name for layer in result.layers]
    z = [[round(d, 2) for d in result.drop(layer)] for layer in result.layers]
    text = [
        [
            f"{acc:.1f}%<br>{kept}/{layer.channels}"
            for acc, kept in zip(layer.val_acc, layer.kept, strict=True)
        ]
        for layer in result.layers
    ]
    fig = go.Figure(
        go.Heatmap(
            x=x,
            y=y,
            z=z,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} at ratio %{x}<br>drop %{z:.2f} pt<br>%{text}<extra></extra>",
            colorscale="RdBu",
            reversescale=True,
            zmid=0,
            colorbar={"title": {"text": "val drop (pt)"}},
        )
    )
    fig.update_layout(
        title=f"Val accuracy drop when one layer is pruned alone (baseline {result.baseline_val_acc:.2f}%)",
        xaxis={"title": "fraction of the layer's channels removed", "type": "category"},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        height=max(300, 120 + 36 * len(y)),
        margin={"l": 140, "r": 20, "t": 50, "b": 60},
        template="plotly_white",
    )
    data: dict[str, Any] = fig.to_plotly_json()
    return {"data": data.get("data", []), "layout": data.get("layout", {})}
