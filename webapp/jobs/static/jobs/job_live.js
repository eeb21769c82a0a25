// The live job page: draw the persisted history, then apply events from /ws/jobs/<id>/.
// Events carry a per-job seq; anything at or below the last drawn seq is skipped.
(function () {
  "use strict";
  const script = document.currentScript;
  const jobId = script.dataset.jobId;
  const history = JSON.parse(document.getElementById("job-history").textContent);
  let lastSeq = history.last_seq || 0;
  const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
  const $ = (sel) => document.querySelector(sel);
  const curves = $("[data-job-curves]");
  const epochs = history.epochs || [];
  let plotted = false;
  window.edgeslimJob = { received: 0, lastSeq: () => lastSeq };

  function drawCurves() {
    if (!window.Plotly || !epochs.length) return;
    $("[data-no-epochs]").hidden = true;
    const x = epochs.map((_, i) => i + 1);
    const data = [
      { x: x, y: epochs.map((e) => e.loss), name: "loss", mode: "lines+markers" },
      { x: x, y: epochs.map((e) => e.val_acc), name: "val acc (%)", mode: "lines+markers", yaxis: "y2" },
    ];
    const layout = {
      height: 300, margin: { l: 50, r: 50, t: 10, b: 40 },
      xaxis: { title: "epoch (all stages)" }, yaxis: { title: "loss" },
      yaxis2: { title: "val acc (%)", overlaying: "y", side: "right" },
      legend: { orientation: "h" },
    };
    Plotly.react(curves, data, layout, { displayModeBar: false, responsive: true });
    plotted = true;
  }

  function setStatus(status, message, error) {
    const badge = $("[data-job-status]");
    badge.textContent = status;
    badge.className = "job-status job-status-" + status.toLowerCase();
    if (message !== undefined) $("[data-job-message]").textContent = message;
    if (error) { const el = $("[data-job-error]"); el.textContent = error; el.hidden = false; }
    if (TERMINAL.includes(status)) {
      const cancel = $("[data-cancel-form]");
      if (cancel) cancel.hidden = true;
      if (status === "SUCCEEDED") { setProgress(1); $("[data-report-link]").hidden = false; }
    }
  }

  function setProgress(fraction, message) {
    const bar = $("[data-job-progress]");
    const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
    bar.setAttribute("aria-valuenow", String(pct));
    bar.firstElementChild.style.width = pct + "%";
    if (message) $("[data-job-message]").textContent = message;
  }

  function stageEl(i) { return document.querySelector('[data-stage="' + i + '"]'); }

  function setStage(i, state, metrics) {
    const el = stageEl(i);
    if (!el) return;
    el.className = "stage stage-" + state;
    el.querySelector("[data-stage-state]").textContent = state;
    if (metrics) {
      const dl = el.querySelector("[data-stage-metrics]");
      dl.textContent = "";
      for (const [k, v] of Object.entries(metrics)) {
        if (v === null || v === undefined) continue;
        const dt = document.createElement("dt"); dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v);
        dl.append(dt, dd);
      }
    }
  }

  function appendLog(line) {
    const pre = $("[data-log-tail]");
    pre.textContent += line + "\n";
    const lines = pre.textContent.split("\n");
    if (lines.length > 300) pre.textContent = lines.slice(-300).join("\n");
    pre.scrollTop = pre.scrollHeight;
  }

  function apply(ev) {
    if (typeof ev.seq !== "number" || ev.seq <= lastSeq) return;
    lastSeq = ev.seq;
    window.edgeslimJob.received += 1;
    const p = ev.payload || {};
    switch (ev.kind) {
      case "status": setStatus(p.status, p.message, p.error); break;
      case "progress": setProgress(p.progress, p.message); break;
      case "stage_started": setStage(p.stage, "running"); appendLog(p.message || ""); break;
      case "stage_finished": if (p.stage >= 0) setStage(p.stage, "done", p.metrics); break;
      case "epoch": epochs.push(p); drawCurves(); break;
      case "log": appendLog(p.line || ""); break;
    }
    document.dispatchEvent(new CustomEvent("edgeslim:job-event", { detail: ev }));
  }

  drawCurves();
  if (TERMINAL.includes(history.status)) return;

  let backoff = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/ws/jobs/" + jobId + "/?after=" + lastSeq);
    ws.onmessage = (m) => { try { apply(JSON.parse(m.data)); } catch (e) { /* ignore bad frames */ } };
    ws.onopen = () => { backoff = 500; document.body.dataset.jobSocket = "open"; };
    ws.onclose = () => {
      document.body.dataset.jobSocket = "closed";
      if (TERMINAL.includes($("[data-job-status]").textContent)) return;
      setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
})();
