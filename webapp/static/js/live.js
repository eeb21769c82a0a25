// EdgeSlim live events: one websocket per page to /ws/org/ (the current organisation's group),
// reconnecting with jittered exponential backoff. Every event is {kind, payload, ts}; it is
// re-dispatched on document as "edgeslim:event" so any page can react to the kinds it knows.
// On a page with a [data-live-events] list (the dashboard's activity feed), an event about a
// job, an upload, a device or a deployment makes the page re-read the feed from the server
// (data-refresh-url), so new lines read as sentences with names and links, like the persisted
// ones; an event that carries its own message (a worker ping) is appended as that sentence.
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

  var REFRESH_KINDS = /^(job|catalog\.|device\.|deployment|batch)/;
  var refreshTimer = null;

  function refresh() {
    var url = listEl && listEl.getAttribute("data-refresh-url");
    if (!url) return;
    clearTimeout(refreshTimer);
    // Several events often arrive together (a stage ends, then the job); read the feed once.
    refreshTimer = setTimeout(function () {
      fetch(url, { credentials: "same-origin", headers: { "HX-Request": "true" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var before = listEl.firstElementChild ? listEl.firstElementChild.textContent : "";
          // Messages that arrived on the socket alone (a worker ping) are not in the server's
          // feed: keep them on top instead of wiping them with the re-read list.
          var kept = Array.prototype.slice.call(listEl.querySelectorAll("li[data-ephemeral]"));
          listEl.innerHTML = html;
          for (var i = kept.length - 1; i >= 0; i--) listEl.prepend(kept[i]);
          var first = listEl.firstElementChild;
          if (first && first.textContent !== before) first.classList.add("is-new");
        })
        .catch(function () { /* the next event or a reload catches up */ });
    }, 300);
  }

  function append(event) {
    if (!listEl || event.kind === "pong") return;
    // On every (re)connect, catch up with what happened while the socket was not yet open.
    if (event.kind === "hello") { refresh(); return; }
    if (REFRESH_KINDS.test(event.kind) && listEl.getAttribute("data-refresh-url")) {
      refresh();
      return;
    }
    var p = event.payload || {};
    if (typeof p.message !== "string" || !p.message) return; // nothing a person would read
    var empty = listEl.querySelector(".events-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    li.className = "is-new";
    li.setAttribute("data-kind", event.kind);
    li.setAttribute("data-ephemeral", "");
    var kind = document.createElement("span");
    kind.className = "badge";
    kind.textContent = event.kind;
    var text = document.createElement("span");
    text.className = "event-text";
    text.textContent = p.message;
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
        setStatus("offline", close.code === 4401 ? "Signed out" : "No access");
        return;
      }
      if (close.code === 4409) { // access changed: the new handshake re-authorises at once
        attempt = 0;
        setStatus("offline", "Access changed — reconnecting");
        setTimeout(connect, 200);
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
