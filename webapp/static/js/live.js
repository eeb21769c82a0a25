// EdgeSlim live events: one websocket per page to /ws/org/ (the current organisation's group),
// reconnecting with jittered exponential backoff. Every event is {kind, payload, ts}; it is
// re-dispatched on document as "edgeslim:event" so any page can react to the kinds it knows,
// and appended to [data-live-events] when the page has such a list.
(function () {
  "use strict";
  var MAX_EVENTS = 50;
  var statusEl = document.querySelector("[data-live-status]");
  var listEl = document.querySelector("[data-live-events]");
  var attempt = 0;
  var socket = null;
  var pingTimer = null;

  function setStatus(state, text) {
    if (!statusEl) return;
    statusEl.setAttribute("data-live-status", state);
    var label = statusEl.querySelector(".status-text");
    if (label) label.textContent = text;
  }

  function summary(event) {
    var p = event.payload || {};
    if (typeof p.message === "string") return p.message;
    // Flat payloads read better as "key value · key value" than as JSON.
    return Object.keys(p).map(function (key) {
      var value = p[key];
      if (value !== null && typeof value === "object") value = JSON.stringify(value);
      return key + " " + value;
    }).join(" · ");
  }

  function append(event) {
    if (!listEl || event.kind === "hello" || event.kind === "pong") return;
    var empty = listEl.querySelector(".events-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    li.className = "is-new";
    li.setAttribute("data-kind", event.kind);
    var kind = document.createElement("span");
    kind.className = "event-kind";
    kind.textContent = event.kind;
    var text = document.createElement("span");
    text.className = "event-text";
    text.textContent = summary(event);
    var time = document.createElement("time");
    time.className = "event-time";
    var when = event.ts ? new Date(event.ts) : new Date();
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    li.append(kind, text, time);
    listEl.prepend(li);
    while (listEl.children.length > MAX_EVENTS) listEl.lastElementChild.remove();
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    setStatus("connecting", attempt ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(scheme + location.host + "/ws/org/");
    socket.onopen = function () {
      attempt = 0;
      setStatus("live", "Live");
      clearInterval(pingTimer);
      pingTimer = setInterval(function () {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ping" }));
      }, 25000);
    };
    socket.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      append(event);
      document.dispatchEvent(new CustomEvent("edgeslim:event", { detail: event }));
    };
    socket.onclose = function (close) {
      clearInterval(pingTimer);
      if (close.code === 4401 || close.code === 4403) {
        setStatus("offline", "Signed out");
        return;
      }
      attempt += 1;
      var delay = Math.min(30000, 1000 * Math.pow(2, attempt - 1)) * (0.5 + Math.random() / 2);
      setStatus("offline", "Offline — retrying in " + Math.round(delay / 1000) + " s");
      setTimeout(connect, delay);
    };
  }

  window.EdgeSlimLive = { append: append };
  connect();
})();
