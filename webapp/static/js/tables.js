// Wide tables scroll inside their own box on narrow screens instead of widening the page:
// every table in <main> that is not already inside a .table-scroll gets wrapped in one.
// Templates can also write the wrapper themselves; this covers every app's tables at once.
(function () {
  "use strict";
  function wrap(root) {
    root.querySelectorAll("main table").forEach(function (table) {
      if (table.closest(".table-scroll, .table-wrap")) return;
      var box = document.createElement("div");
      box.className = "table-scroll";
      table.parentNode.insertBefore(box, table);
      box.appendChild(table);
    });
  }
  wrap(document);
  // htmx swaps in fresh rows and tables; wrap those too.
  document.addEventListener("htmx:afterSwap", function () { wrap(document); });
})();
