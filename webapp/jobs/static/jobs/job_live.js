// The live job page: draw the persisted history, then apply events from /ws/jobs/<id>/.
// Events carry a per-job seq; anything at or below the last drawn seq is skipped.
// Quick changes (a stage starting, the bar, a log line, an epoch) are drawn from the event
// itself; when a stage ends or the status changes the page fetches its server-rendered regions
// (actions, summary, stages with human units, log, downloads) and swaps them in, so what it
// shows is what the database says, without a reload.
(function () {
  "use strict";
  const script = document.currentScript;
  const jobId = script.dataset.jobId;
  const regionsUrl = script.dataset.regionsUrl;
  const history = JSON.parse(document.getElementById("job-history").textContent);
  let lastSeq = history.last_seq || 0;
  const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
  const STATE_LABELS = {
    pending: "pending", running: "running", measuring: "measuring", done: "done",
    failed: "failed", cancelled: "cancelled", skipped: "not run",
  };
  const $ = (sel) => document.querySelector(sel);
  const curves = $("[data-job-curves]");
  const epochs = history.epochs || [];
  // What the score is: accuracy for a classifier, mAP@0.5 (in percent) for a detector.
  const scoreName = history.metric === "mAP@0.5" ? "mAP@0.5" : "accuracy";
  let progress = history.progress || 0;
  let ws = null;
  window.edgeslimJob = { received: 0, refreshed: 0, lastSeq: () => lastSeq };

  const status = () => $("[data-job-status]").dataset.jobStatus;

  // --- the training chart: integer epoch ticks, a marker where each stage's epochs begin -------
  function drawCurves() {
    if (!window.Plotly || !epochs.length) return;
    $("[data-no-epochs]").hidden = true;
    const x = epochs.map((_, i) => i + 1);
    const hover = epochs.map((e) => "stage " + ((e.stage ?? 0) + 1) + " " + (e.method || "") +
      ", epoch " + Math.round(e.epoch || 0));
    const data = [
      { x: x, y: epochs.map((e) => e.loss), name: "loss", mode: "lines+markers", text: hover },
      { x: x, y: epochs.map((e) => e.val_acc), name: "val " + scoreName + " (%)", mode: "lines+markers",
        yaxis: "y2", text: hover },
    ];
    const shapes = [];
    const annotations = [];
    epochs.forEach((e, i) => {
      if (i > 0 && e.stage === epochs[i - 1].stage) return;
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: i + 0.5, x1: i + 0.5, y0: 0, y1: 1,
        line: { color: "#94a3b8", width: 1, dash: "dot" } });
      annotations.push({ xref: "x", yref: "paper", x: i + 0.5, y: 1, xanchor: "left",
        yanchor: "bottom", showarrow: false, font: { size: 11, color: "#475569" },
        text: "stage " + ((e.stage ?? 0) + 1) + (e.method ? " " + e.method : "") });
    });
    const n = epochs.length;
    const layout = {
      height: 300, margin: { l: 50, r: 50, t: 24, b: 40 },
      xaxis: { title: "epoch (all stages)", tickmode: "linear", tick0: 1,
        dtick: Math.max(1, Math.ceil(n / 10)), tickformat: "d", range: [0.5, n + 0.5] },
      yaxis: { title: "loss" },
      // An overlaying axis syncs its ticks to the loss grid by default (90.733, 91.153...):
      // give it its own ticks, rounded to a tenth of a percent.
      yaxis2: { title: "val " + scoreName, overlaying: "y", side: "right", tickmode: "auto",
        tickformat: ".1f", ticksuffix: " %", showgrid: false },
      legend: { orientation: "h", y: -0.25 }, shapes: shapes, annotations: annotations,
    };
    Plotly.react(curves, data, layout, { displayModeBar: false, responsive: true });
  }

  // Epochs can arrive many times a second (a tiny model, a small data set): redraw the chart at
  // most every 250 ms, so the page stays responsive however fast the run reports.
  let curvesTimer = null;
  function scheduleCurves() {
    if (curvesTimer) return;
    curvesTimer = setTimeout(() => { curvesTimer = null; drawCurves(); }, 250);
  }

  // --- quick updates from an event ----------------------------------------------------------------
  function setProgress(fraction, message) {
    if (typeof fraction === "number" && !TERMINAL.includes(status())) {
      progress = Math.max(progress, Math.max(0, Math.min(1, fraction)));
      const bar = $("[data-job-progress]");
      const pct = Math.round(progress * 100);
      bar.setAttribute("aria-valuenow", String(pct));
      bar.firstElementChild.style.width = pct + "%";
    }
    if (message) $("[data-job-message]").textContent = message;
  }

  function stageEl(i) {
    return i === -1 ? $("[data-baseline]") : document.querySelector('[data-stage="' + i + '"]');
  }

  function setStage(i, state) {
    const el = stageEl(i);
    if (!el) return;
    el.classList.remove("stage-" + el.dataset.stageStatus);
    el.classList.add("stage-" + state);
    el.dataset.stageStatus = state;
    el.querySelector("[data-stage-state]").textContent = STATE_LABELS[state] || state;
  }

  // The notice that brought us here ("Job 7 queued.", "Cancel requested.") described the job at
  // that moment. Django shows a message once, but the page stays open while the job runs, so
  // once the status has moved on the notice goes (errors stay). The live regions never carry it.
  let flashTimer = null;
  function dropStaleNotices(delayMs) {
    if (flashTimer) return;
    flashTimer = setTimeout(() => {
      document.querySelectorAll(".messages .flash-success, .messages .flash-info")
        .forEach((el) => el.remove());
      document.querySelectorAll(".messages").forEach((box) => {
        if (!box.children.length) box.remove();
      });
    }, delayMs);
  }

  function setStatus(p) {
    if (p.status !== "QUEUED") dropStaleNotices(0);
    const badge = $("[data-job-status]");
    badge.dataset.jobStatus = p.status;
    badge.textContent = p.status.charAt(0) + p.status.slice(1).toLowerCase();
    badge.className = "job-status job-status-" + p.status.toLowerCase();
    if (p.message !== undefined) $("[data-job-message]").textContent = p.message;
    if (TERMINAL.includes(p.status)) {
      // Nothing more is coming: a stage left running ended with the job.
      const ended = p.status === "SUCCEEDED" ? "done" : p.status.toLowerCase();
      document.querySelectorAll('[data-stage-status="running"], [data-stage-status="measuring"]')
        .forEach((el) => setStage(el.dataset.baseline !== undefined ? -1 : +el.dataset.stage, ended));
      // and one never reached will not run (as the server's job_history says on a reload), so
      // the page does not wait for the regions' refresh to say so
      if (p.status !== "SUCCEEDED") {
        document.querySelectorAll('[data-stage-status="pending"]')
          .forEach((el) => setStage(el.dataset.baseline !== undefined ? -1 : +el.dataset.stage, "skipped"));
      }
      // an ended job cannot be cancelled: its button goes now, as the server's actions
      // region (fetched next) no longer has it
      document.querySelectorAll("[data-cancel-form]").forEach((form) => form.remove());
      if (ws) ws.close();
    }
  }

  const TRACEBACK = /Traceback \(most recent call last\)|^\s+File "/;
  function appendLog(line) {
    if (!line || TRACEBACK.test(line)) return; // tracebacks go behind "details" when it ends
    const pre = $("[data-log-tail]");
    pre.textContent += line + "\n";
    const lines = pre.textContent.split("\n");
    if (lines.length > 300) pre.textContent = lines.slice(-300).join("\n");
    pre.scrollTop = pre.scrollHeight;
  }

  // --- server-rendered regions --------------------------------------------------------------------
  let inFlight = null;
  let again = false;
  function refreshRegions() {
    if (inFlight) { again = true; return inFlight; }
    inFlight = fetch(regionsUrl, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status))))
      .then((html) => {
        const doc = new DOMParser().parseFromString(html, "text/html");
        doc.querySelectorAll("[data-region]").forEach((fresh) => {
          const old = document.querySelector('[data-region="' + fresh.dataset.region + '"]');
          if (old) old.replaceWith(document.importNode(fresh, true));
        });
        if (!TERMINAL.includes(status())) setProgress(progress); // never step back
        startTicking();
        window.edgeslimJob.refreshed += 1;
      })
      .catch(() => { /* the next event or poll tries again */ })
      .finally(() => {
        inFlight = null;
        if (again) { again = false; refreshRegions(); }
      });
    return inFlight;
  }

  function apply(ev) {
    if (typeof ev.seq !== "number" || ev.seq <= lastSeq) return;
    lastSeq = ev.seq;
    window.edgeslimJob.received += 1;
    const p = ev.payload || {};
    switch (ev.kind) {
      case "status": setStatus(p); refreshRegions(); break;
      case "progress":
        setProgress(p.progress, p.message);
        if (p.phase === "measuring" && typeof p.stage === "number") setStage(p.stage, "measuring");
        break;
      case "stage_started":
        setStage(p.stage, "running"); setProgress(p.progress, p.message); appendLog(p.message);
        break;
      case "stage_finished": setStage(p.stage, "done"); setProgress(p.progress); refreshRegions(); break;
      case "epoch": epochs.push(p); scheduleCurves(); setProgress(p.progress); break;
      case "log": appendLog(p.line); break;
    }
    document.dispatchEvent(new CustomEvent("edgeslim:job-event", { detail: ev }));
  }

  // --- elapsed time up, remaining time down -------------------------------------------------------
  function durationText(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  let ticker = null;
  function startTicking() {
    const since = Date.now();
    const elapsed = $("[data-elapsed][data-ticking]");
    const eta = $("[data-eta][data-remaining-s]");
    const e0 = elapsed ? +elapsed.dataset.seconds : 0;
    const r0 = eta ? +eta.dataset.remainingS : 0;
    if (ticker) clearInterval(ticker);
    if (!elapsed && !eta) return;
    ticker = setInterval(() => {
      const d = (Date.now() - since) / 1000;
      if (elapsed && elapsed.isConnected) elapsed.textContent = durationText(e0 + d);
      if (eta && eta.isConnected) {
        eta.textContent = r0 - d > 0 ? "about " + durationText(r0 - d) + " left" : "any moment now";
      }
    }, 1000);
  }

  // Cancel asks first (the form still works without scripts).
  document.addEventListener("submit", (e) => {
    const form = e.target.closest && e.target.closest("[data-cancel-form]");
    if (form && !window.confirm(form.dataset.confirm || "Cancel this job?")) e.preventDefault();
  });

  drawCurves();
  startTicking();
  // Already past QUEUED when the page loaded: let the notice be read, then drop it.
  if (status() !== "QUEUED") dropStaleNotices(4000);
  if (TERMINAL.includes(history.status)) return;

  // A queued job's position moves when other jobs start: look again now and then.
  const poll = setInterval(() => {
    if (TERMINAL.includes(status())) { clearInterval(poll); return; }
    if (status() === "QUEUED") refreshRegions();
  }, 10000);

  let backoff = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ws/jobs/" + jobId + "/?after=" + lastSeq);
    ws.onmessage = (m) => { try { apply(JSON.parse(m.data)); } catch (e) { /* ignore bad frames */ } };
    ws.onopen = () => { backoff = 500; document.body.dataset.jobSocket = "open"; };
    ws.onclose = (close) => {
      document.body.dataset.jobSocket = "closed";
      if (TERMINAL.includes(status())) return;
      // Signed out or no longer allowed: stop (4409, access changed, reconnects to re-check).
      if (close.code === 4401 || close.code === 4403) return;
      setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
})();
