// Draw the sensitivity heatmap (built server-side in webapp/sensitivity/charts.py); when it is
// drawn, <html data-charts-drawn="N"> says so.
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("sensitivity-figures").textContent);
  const drawing = [];
  for (const [id, fig] of Object.entries(figures)) {
    const el = document.getElementById(id);
    if (el && window.Plotly && fig.data) {
      drawing.push(Plotly.newPlot(el, fig.data, fig.layout, { displayModeBar: false, responsive: true }));
    }
  }
  Promise.all(drawing).then(function () { document.documentElement.dataset.chartsDrawn = String(drawing.length); });
})();
