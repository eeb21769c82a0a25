// Draw a page's Plotly figures (built server-side in webapp/reports/charts.py) from the
// "report-figures" JSON. When every chart is drawn, <html data-charts-drawn="N"> says so: the
// PDF export (webapp/reports/pdf.py) waits for it before it prints. In print mode (an element
// [data-print-mode]) charts are drawn at a fixed size, never resized while printing.
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("report-figures").textContent);
  const print = !!document.querySelector("[data-print-mode]");
  const drawing = [];
  for (const [id, fig] of Object.entries(figures)) {
    const el = document.getElementById(id);
    if (el && window.Plotly) {
      drawing.push(Plotly.newPlot(el, fig.data, fig.layout, { displayModeBar: false, responsive: !print, staticPlot: print }));
    }
  }
  Promise.all(drawing).then(function () { document.documentElement.dataset.chartsDrawn = String(drawing.length); });
})();
