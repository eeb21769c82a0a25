// The comparison page: sortable columns (blanks last) and the Pareto charts, one shown at a time
// (figures built server-side in webapp/reports/charts.py).
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("compare-figures").textContent);
  const drawn = new Set();
  function draw(id) {
    const el = document.getElementById(id);
    if (!el || drawn.has(id) || !window.Plotly) return;
    drawn.add(id);
    Plotly.newPlot(el, figures[id].data, figures[id].layout, { displayModeBar: false, responsive: true });
  }
  const select = document.querySelector("[data-chart-select]");
  if (select) {
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
