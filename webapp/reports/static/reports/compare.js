// The comparison page: sortable columns (blanks last) and the Pareto charts, one shown at a time
// (figures built server-side in webapp/reports/charts.py).
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("compare-figures").textContent);
  const drawn = new Set();
  const print = !!document.querySelector("[data-print-mode]");
  function draw(id) {
    const el = document.getElementById(id);
    if (!el || drawn.has(id) || !window.Plotly) return null;
    drawn.add(id);
    return Plotly.newPlot(el, figures[id].data, figures[id].layout, { displayModeBar: false, responsive: !print, staticPlot: print });
  }
  const select = document.querySelector("[data-chart-select]");
  if (print) {
    // The PDF export: every chart shown and drawn; <html data-charts-drawn> when they are.
    const drawing = Object.keys(figures).map(function (id) {
      const el = document.getElementById(id);
      if (el) el.hidden = false;
      return draw(id);
    }).filter(Boolean);
    Promise.all(drawing).then(function () { document.documentElement.dataset.chartsDrawn = String(drawing.length); });
  } else if (select) {
    draw(select.value);
    select.addEventListener("change", function () {
      document.querySelectorAll("[data-chart]").forEach(function (el) { el.hidden = el.id !== select.value; });
      draw(select.value);
    });
  }

  const table = document.querySelector("[data-compare-table]");
  if (!table) return;
  const body = table.tBodies[0];
  table.querySelectorAll("button[data-sort-col]").forEach(function (button) {
    button.addEventListener("click", function () {
      const col = Number(button.dataset.sortCol);
      // First click: best first (ascending where lower is better).
      const current = button.getAttribute("aria-sort");
      const ascending = current ? current === "descending" : button.dataset.better !== "higher";
      table.querySelectorAll("button[data-sort-col]").forEach(function (b) { b.removeAttribute("aria-sort"); });
      button.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        if (x === "" || y === "") return (x === "") - (y === "");
        const d = Number(x) - Number(y);
        return ascending ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
