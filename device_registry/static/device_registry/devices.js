// Device pages: react to the organisation's live events (dispatched by js/live.js as
// "edgeslim:event"): device state, deployment progress and results, with Plotly charts that
// compare devices side by side.
(function () {
  "use strict";
  var scopeEl = document.querySelector("[data-results-scope]");
  var rowsEl = document.getElementById("latency-rows");
  var rows = rowsEl ? JSON.parse(rowsEl.textContent) : [];
  var deploymentId = scopeEl && scopeEl.dataset.deployment ? Number(scopeEl.dataset.deployment) : null;
  var deviceId = scopeEl && scopeEl.dataset.device ? Number(scopeEl.dataset.device) : null;

  function fmt(v, digits) { return (typeof v === "number") ? v.toFixed(digits) : "—"; }

  function showResults() {
    document.querySelectorAll("[data-results-empty]").forEach(function (el) { el.hidden = true; });
    document.querySelectorAll("[data-results-present]").forEach(function (el) { el.hidden = false; });
  }

  // Per-operator time (ms per inference) as horizontal bars, one trace per device and batch;
  // operator types sorted so the most expensive sits on top.
  function drawOpProfile() {
    var profiled = rows.filter(function (r) { return r.op_profile_ms && Object.keys(r.op_profile_ms).length; });
    var section = document.querySelector("[data-op-profile-section]");
    if (!profiled.length || !section) return;
    section.hidden = false;
    var totals = {};
    profiled.forEach(function (r) {
      Object.keys(r.op_profile_ms).forEach(function (op) { totals[op] = (totals[op] || 0) + r.op_profile_ms[op]; });
    });
    var ops = Object.keys(totals).sort(function (a, b) { return totals[a] - totals[b]; });
    var traces = profiled.map(function (r) {
      return {
        type: "bar", orientation: "h", y: ops,
        x: ops.map(function (op) { return r.op_profile_ms[op] || 0; }),
        name: (deviceId ? "#" + r.deployment_id + " " : r.device + " ") + "b" + r.batch_size,
      };
    });
    window.Plotly.react("op-profile-chart", traces, {
      barmode: "group", margin: { t: 10, r: 10, b: 40, l: 140 },
      xaxis: { title: { text: "ms per inference" }, rangemode: "tozero" },
      height: Math.max(240, 60 + ops.length * 22 * Math.min(profiled.length, 4)),
    }, { displayModeBar: false, responsive: true });
  }

  function draw() {
    if (!window.Plotly || !document.getElementById("latency-chart")) return;
    if (!rows.length) return;  // the empty state stays: no axes without data
    showResults();
    drawOpProfile();
    var labels = rows.map(function (r) {
      return (deviceId ? "#" + r.deployment_id + " " : r.device + " ") + "b" + r.batch_size;
    });
    var pct = ["p50_ms", "p90_ms", "p99_ms"].map(function (k) {
      return { type: "bar", name: k.replace("_ms", ""), x: labels, y: rows.map(function (r) { return r[k]; }) };
    });
    window.Plotly.react("latency-chart", pct, {
      title: { text: "Latency percentiles by device and batch (ms)" }, barmode: "group", margin: { t: 40, r: 10, b: 80, l: 50 },
      yaxis: { title: { text: "ms" } },
    }, { displayModeBar: false, responsive: true });
    window.Plotly.react("throughput-chart", [{
      type: "bar", name: "throughput", x: labels, y: rows.map(function (r) { return r.throughput; }),
    }], {
      title: { text: "Throughput (samples/s)" }, margin: { t: 40, r: 10, b: 80, l: 50 },
    }, { displayModeBar: false, responsive: true });
  }

  function addRow(p) {
    var d = p.data || {};
    var key = p.deployment_id + "-" + p.device_id + "-" + p.seq;
    var table = document.querySelector("#latency-table tbody");
    if (!table || table.querySelector('[data-key="' + key + '"]')) return;
    var row = {
      deployment_id: p.deployment_id, device_id: p.device_id, device: p.device_name, seq: p.seq,
      batch_size: d.batch_size, p50_ms: d.p50_ms, p90_ms: d.p90_ms, p99_ms: d.p99_ms,
      mean_ms: d.mean_ms, throughput: d.throughput, peak_rss_mb: d.peak_rss_mb,
      load_time_ms: d.load_time_ms, cv: d.cv, unstable: d.unstable,
      op_profile_ms: d.op_profile_ms || {},
    };
    rows.push(row);
    var tr = document.createElement("tr");
    tr.setAttribute("data-key", key);
    tr.className = "is-new";
    [
      "#" + row.deployment_id, row.device, row.batch_size, fmt(row.p50_ms, 3), fmt(row.p90_ms, 3),
      fmt(row.p99_ms, 3), fmt(row.mean_ms, 3), fmt(row.throughput, 1), fmt(row.peak_rss_mb, 1),
      fmt(row.load_time_ms, 1), fmt(row.cv, 3) + (row.unstable ? " ⚠" : ""),
    ].forEach(function (text) {
      var td = document.createElement("td");
      td.textContent = String(text);
      tr.appendChild(td);
    });
    table.appendChild(tr);
    showResults();
    draw();
  }

  // A detector's latency result: one row of FPS without and with post-processing; its mAP
  // cells fill in when the device's accuracy result arrives.
  function addDetectorRow(p) {
    var d = p.data || {};
    var table = document.querySelector("#detector-table tbody");
    var key = p.deployment_id + "-" + p.device_id + "-" + p.seq;
    if (!table || typeof d.fps_e2e !== "number" || table.querySelector('[data-detector-key="' + key + '"]')) return;
    var tr = document.createElement("tr");
    tr.setAttribute("data-detector-key", key);
    tr.setAttribute("data-deployment", p.deployment_id);
    tr.setAttribute("data-device", p.device_id);
    tr.className = "is-new";
    [
      ["", "#" + p.deployment_id], ["", p.device_name], ["", d.batch_size], ["data-fps", fmt(d.fps, 1)],
      ["data-fps-e2e", fmt(d.fps_e2e, 1)], ["data-e2e-p50", fmt(d.e2e_p50_ms, 3)], ["", fmt(d.e2e_p99_ms, 3)],
      ["", fmt(d.postprocess_p50_ms, 3)], ["data-map50", "—"], ["data-map50-95", "—"],
    ].forEach(function (cell) {
      var td = document.createElement("td");
      if (cell[0]) td.setAttribute(cell[0], "");
      td.textContent = String(cell[1]);
      tr.appendChild(td);
    });
    table.appendChild(tr);
    document.querySelectorAll("[data-detector-empty]").forEach(function (el) { el.hidden = true; });
    document.querySelectorAll("[data-detector-present]").forEach(function (el) { el.hidden = false; });
  }

  function setDetectorMap(p) {
    var d = p.data || {};
    document.querySelectorAll('#detector-table tr[data-deployment="' + p.deployment_id + '"][data-device="' + p.device_id + '"]').forEach(function (tr) {
      setText(tr, "[data-map50]", fmt(d.map50, 3));
      setText(tr, "[data-map50-95]", fmt(d.map50_95, 3));
    });
  }

  function accuracyText(d) {
    if (d.task === "detection") return "mAP@0.5 " + fmt(d.map50, 3) + " · mAP@0.5:0.95 " + fmt(d.map50_95, 3) + " (" + d.samples + " images)";
    return fmt(d.top1_pct, 2) + " % (" + d.samples + " images)";
  }

  function targetRow(p) {
    return document.querySelector('#target-table tr[data-device-id="' + p.device_id + '"]');
  }

  // Badges carry their state as a class too (badge-online, badge-failed, ...): keep both in step.
  function setText(root, sel, text) {
    var el = root && root.querySelector(sel);
    if (!el) return;
    el.textContent = text;
    if (el.classList.contains("badge")) setBadgeClass(el, text);
  }

  function setBadgeClass(el, text) {
    Array.prototype.slice.call(el.classList).forEach(function (c) {
      if (c.indexOf("badge-") === 0) el.classList.remove(c);
    });
    el.classList.add("badge-" + String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, ""));
  }

  // Results that arrived between the page render and the socket's (re)connection are fetched
  // once the socket is live, so the page never misses one; rows are keyed, so none doubles.
  function resync() {
    if (deploymentId === null) return;
    fetch("/api/v1/deployments/" + deploymentId + "/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (dep) {
        if (!dep) return;
        (dep.targets || []).forEach(function (t) {
          var tr = targetRow({ device_id: t.device });
          setText(tr, "[data-target-status]", label(t.status));
          if (t.message) setText(tr, "[data-target-message]", t.message);
          if (ENDED.indexOf(label(t.status)) >= 0) {
            var bar = tr && tr.querySelector("[data-target-progress]");
            if (bar) bar.value = 1;
          }
        });
        (dep.results || []).forEach(function (r) {
          handle({ kind: "deployment.result", payload: {
            deployment_id: dep.id, device_id: r.device, device_name: r.device_name,
            seq: r.seq, kind: r.kind, data: r.payload,
          } }, true);
        });
        var badge = document.getElementById("deployment-status");
        if (badge && dep.status) { badge.textContent = dep.status; setBadgeClass(badge, dep.status); }
        if (dep.ended_at) {
          var cancel = document.getElementById("cancel-deployment-form");
          if (cancel) cancel.remove();
        }
      })
      .catch(function () {});
  }

  document.addEventListener("edgeslim:event", function (e) { handle(e.detail || {}, false); });

  // A target status as the page prints it ("timed_out" -> "timed out"), and the ended ones.
  function label(status) { return String(status || "").replace(/_/g, " "); }
  var ENDED = ["succeeded", "failed", "cancelled", "timed out"];

  function refreshStatus() {
    var el = document.getElementById("deployment-status");
    if (!el || el.textContent.trim() === "cancelled") return;
    var cells = Array.prototype.slice.call(document.querySelectorAll("#target-table [data-target-status]"));
    var states = cells.map(function (c) { return c.textContent.trim(); });
    var done = states.every(function (s) { return ENDED.indexOf(s) >= 0; });
    if (!done) return;
    if (states.indexOf("timed out") >= 0) el.textContent = "expired";
    else el.textContent = states.every(function (s) { return s === "failed"; }) ? "failed" : "finished";
    setBadgeClass(el, el.textContent);
  }

  function handle(ev, fromResync) {
    var p = ev.payload || {};
    if (ev.kind === "hello") { resync(); return; }
    if (ev.kind === "batch") {  // coalesced events of one server tick
      (p.events || []).forEach(function (inner) { handle(inner, fromResync); });
      return;
    }
    if (ev.kind === "device.status") {
      document.querySelectorAll('[data-device-id="' + p.device_id + '"]').forEach(function (root) {
        setText(root, "[data-device-state]", p.state);
        if (p.agent_version) setText(root, "[data-device-agent]", p.agent_version);
        if (p.last_seen) setText(root, "[data-device-seen]", "just now");
      });
      return;
    }
    if (ev.kind === "deployment.ended") {  // cancelled or expired: the API has every target
      if (deploymentId !== null && p.deployment_id === deploymentId) resync();
      return;
    }
    if (ev.kind !== "deployment.result" && ev.kind !== "deployment.progress") return;
    if (deploymentId !== null && p.deployment_id !== deploymentId) return;
    if (deviceId !== null && p.device_id !== deviceId) return;
    var tr = targetRow(p);
    if (ev.kind === "deployment.progress") {
      setText(tr, "[data-target-status]", p.stage);
      setText(tr, "[data-target-message]", p.message || "");
      var bar = tr && tr.querySelector("[data-target-progress]");
      if (bar) bar.value = p.fraction;
      return;
    }
    if (p.kind === "latency") { addRow(p); addDetectorRow(p); }
    if (p.kind === "accuracy") {
      setText(tr, "[data-target-accuracy]", accuracyText(p.data || {}));
      if ((p.data || {}).task === "detection") setDetectorMap(p);
    }
    // A terminal result carries the target's new status; none when the target had already ended
    // (cancelled, timed out), which keeps its state.
    if ((p.kind === "complete" || p.kind === "failed") && !fromResync && p.status) {
      setText(tr, "[data-target-status]", p.status);
      var done = tr && tr.querySelector("[data-target-progress]");
      if (done) done.value = 1;
      if (p.kind === "failed") setText(tr, "[data-target-message]", ((p.data || {}).reason || "") + ": " + ((p.data || {}).detail || ""));
    }
    refreshStatus();
  }

  window.addEventListener("load", draw);
})();
