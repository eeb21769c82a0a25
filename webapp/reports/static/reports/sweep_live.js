// The live sweep page: draw the Pareto chart, then redraw the regions whenever /ws/sweeps/<id>/
// says a child started or ended (or the baseline moved on), keeping the constraints in the URL.
(function () {
  const root = document.getElementById("sweep-regions");
  if (!root) return;
  const sweepId = root.dataset.sweepId;
  const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];

  function draw() {
    const el = document.getElementById("sweep-figures");
    const figures = el ? JSON.parse(el.textContent) : {};
    let drawn = 0;
    for (const [id, fig] of Object.entries(figures)) {
      const div = document.getElementById(id);
      if (div && window.Plotly) { window.Plotly.react(div, fig.data, fig.layout, { responsive: true }); drawn += 1; }
    }
    document.body.dataset.sweepCharts = String(drawn);
  }
  function state() {
    const s = root.querySelector("[data-sweep-state]");
    return s ? s.dataset.sweepState : "";
  }

  let pending = null;
  let inflight = false;
  async function refresh() {
    if (inflight) { pending = pending || setTimeout(() => { pending = null; refresh(); }, 300); return; }
    inflight = true;
    try {
      const r = await fetch(root.dataset.regionsUrl + location.search, { headers: { "X-Requested-With": "fetch" } });
      if (r.ok || r.status === 400) {
        root.innerHTML = await r.text();
        draw();
        document.body.dataset.sweepRefreshes = String(Number(document.body.dataset.sweepRefreshes || 0) + 1);
      }
    } finally { inflight = false; }
  }
  function later() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 250); }

  draw();
  if (TERMINAL.includes(state())) return;
  let ws = null;
  let backoff = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ws/sweeps/" + sweepId + "/");
    ws.onopen = () => { backoff = 500; document.body.dataset.sweepSocket = "open"; refresh(); };
    ws.onmessage = (m) => {
      let msg = null;
      try { msg = JSON.parse(m.data); } catch (e) { return; }
      if (msg && msg.kind === "progress") {
        const bar = root.querySelector("[data-sweep-progress]");
        if (bar && typeof msg.progress === "number") bar.value = Math.max(bar.value, msg.progress / (Number(root.querySelector("[data-sweep-total]").dataset.sweepTotal) + 1));
        return;
      }
      later();
    };
    ws.onclose = (close) => {
      document.body.dataset.sweepSocket = "closed";
      if (TERMINAL.includes(state())) return;
      if (close.code === 4401 || close.code === 4403) return;
      setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
})();
