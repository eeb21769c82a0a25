// A detection data set's page: the box-size histogram (sqrt of box area) as a Plotly bar chart.
// The page body is swapped by htmx while the set is being checked, so draw after every swap.
(function () {
  "use strict";
  function draw() {
    const data = document.getElementById("det-size-histogram");
    const target = document.querySelector("[data-size-histogram]");
    if (!data || !target || typeof Plotly === "undefined") return;
    let hist = {};
    try { hist = JSON.parse(data.textContent) || {}; } catch (e) { return; }
    const labels = Object.keys(hist);
    if (!labels.length) { target.textContent = "No boxes yet."; return; }
    Plotly.react(target, [{
      type: "bar", x: labels, y: labels.map((k) => hist[k]), marker: { color: "#0d9488" },
      hovertemplate: "%{x} px: %{y} boxes<extra></extra>",
    }], {
      margin: { t: 10, r: 10, b: 50, l: 50 }, height: 260,
      xaxis: { title: { text: "sqrt(box area), px" }, type: "category" },
      yaxis: { title: { text: "boxes" }, rangemode: "tozero" },
    }, { displayModeBar: false, responsive: true });
    target.dataset.drawn = "1";
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
  if (document.readyState !== "loading") draw();
})();
