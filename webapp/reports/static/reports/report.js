// Draw the report's Plotly figures (built server-side in webapp/reports/charts.py).
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("report-figures").textContent);
  for (const [id, fig] of Object.entries(figures)) {
    const el = document.getElementById(id);
    if (el && window.Plotly) Plotly.newPlot(el, fig.data, fig.layout, { displayModeBar: false, responsive: true });
  }
})();
