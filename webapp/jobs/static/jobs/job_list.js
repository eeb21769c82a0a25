// The job list: running jobs' elapsed time ticks, and when any job of the organisation changes
// status (an "org" socket event from live.js) the table is fetched again and swapped in, so
// queue positions, states and times stay current without a reload.
(function () {
  "use strict";
  function durationText(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  let since = Date.now();
  setInterval(() => {
    const d = (Date.now() - since) / 1000;
    document.querySelectorAll("[data-elapsed][data-ticking]").forEach((el) => {
      el.textContent = durationText(+el.dataset.seconds + d);
    });
  }, 1000);

  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(() => {
      fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then((r) => (r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status))))
        .then((html) => {
          const fresh = new DOMParser().parseFromString(html, "text/html")
            .querySelector("[data-job-list-region]");
          const old = document.querySelector("[data-job-list-region]");
          if (fresh && old) { old.replaceWith(document.importNode(fresh, true)); since = Date.now(); }
        })
        .catch(() => {})
        .finally(() => { pending = null; });
    }, 300); // one fetch for a burst of events
  }
  document.addEventListener("edgeslim:event", (e) => {
    const ev = e.detail || {};
    if (ev.kind === "job" && (ev.payload || {}).event === "status") refresh();
  });
  // Queue positions move when other organisations' jobs start too: look again now and then.
  setInterval(() => { if (document.querySelector("[data-queue-position]")) refresh(); }, 15000);
})();
