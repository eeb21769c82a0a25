// EdgeSlim chunked uploads: turns every form[data-upload-form] into a drag-and-drop zone that
// sends the file in 8 MiB chunks to /api/v1/uploads/<id>/ with Content-Range, shows progress,
// and after a network or server error asks the server for its offset and resumes from there.
// Without JavaScript the same form posts the file in one request.
(function () {
  "use strict";
  var DEFAULT_CHUNK = 8 * 1024 * 1024; // a form may set data-chunk-bytes
  var MAX_RETRIES = 8;

  function csrfToken(form) {
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function human(bytes) {
    var units = ["B", "KB", "MB", "GB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function setup(form) {
    var input = form.querySelector("[data-upload-input]");
    var drop = form.querySelector("[data-drop-target]");
    var nameEl = form.querySelector("[data-upload-filename]");
    var wrap = form.querySelector("[data-upload-progress-wrap]");
    var bar = form.querySelector("[data-upload-progress]");
    var barFill = bar.querySelector(".progress-bar");
    var barText = form.querySelector("[data-upload-progress-text]");
    var errorEl = form.querySelector("[data-upload-error]");
    var statusEl = form.querySelector("[data-upload-status]");
    var submit = form.querySelector("[data-upload-submit]");
    var cancel = form.querySelector("[data-upload-cancel]");
    var maxBytes = parseInt(form.dataset.maxBytes || "0", 10);
    var aborted = false;
    var current = null; // {url} of the session in flight

    function showError(message) {
      errorEl.textContent = message;
      errorEl.hidden = !message;
    }

    function progress(done, total) {
      var pct = total ? Math.floor((done / total) * 100) : 0;
      barFill.style.width = pct + "%";
      bar.setAttribute("aria-valuenow", String(pct));
      barText.textContent = pct + "% · " + human(done) + " of " + human(total);
    }

    function showName() {
      var f = input.files && input.files[0];
      nameEl.textContent = f ? f.name + " (" + human(f.size) + ")" : "";
      showError("");
    }

    input.addEventListener("change", showName);
    ["dragenter", "dragover"].forEach(function (type) {
      drop.addEventListener(type, function (e) {
        e.preventDefault();
        drop.classList.add("is-over");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      drop.addEventListener(type, function (e) {
        e.preventDefault();
        drop.classList.remove("is-over");
      });
    });
    drop.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        showName();
      }
    });

    async function api(method, url, body, headers) {
      var h = Object.assign({ "X-CSRFToken": csrfToken(form), "Accept": "application/json" }, headers || {});
      var resp = await fetch(url, { method: method, body: body, headers: h, credentials: "same-origin" });
      var data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      return { status: resp.status, ok: resp.ok, data: data };
    }

    function detail(r) {
      if (r.data && r.data.detail) return r.data.detail;
      if (r.data && typeof r.data === "object") {
        return Object.keys(r.data).map(function (k) { return k + ": " + r.data[k]; }).join("; ");
      }
      return "The server answered " + r.status + ".";
    }

    function fields() {
      var out = {};
      form.querySelectorAll(".upload-fields [name]").forEach(function (el) {
        if (el.value !== "") out[el.name] = el.type === "number" ? parseInt(el.value, 10) : el.value;
      });
      return out;
    }

    async function sendChunks(file, url, offset) {
      var retries = 0;
      var chunk = parseInt(form.dataset.chunkBytes || "0", 10) || DEFAULT_CHUNK;
      while (offset < file.size) {
        if (aborted) throw new Error("Upload cancelled.");
        var end = Math.min(offset + chunk, file.size);
        var r;
        try {
          r = await api("PUT", url, file.slice(offset, end), {
            "Content-Type": "application/octet-stream",
            "Content-Range": "bytes " + offset + "-" + (end - 1) + "/" + file.size,
          });
        } catch (e) {
          r = { status: 0, ok: false, data: null };
        }
        if (r.ok) {
          offset = r.data.received;
          retries = 0;
          progress(offset, file.size);
          continue;
        }
        if (r.status === 409 && r.data && typeof r.data.received === "number") {
          offset = r.data.received; // the server has more or less than we thought: follow it
          continue;
        }
        if (r.status === 0 || r.status >= 500 || r.status === 429) {
          if (++retries > MAX_RETRIES) throw new Error("The connection keeps failing; try again later.");
          statusEl.textContent = "Connection lost; resuming…";
          await sleep(Math.min(500 * Math.pow(2, retries), 15000));
          try {
            var s = await api("GET", url);
            if (s.ok) offset = s.data.received;
          } catch (e) { /* still offline: the next loop retries */ }
          progress(offset, file.size);
          statusEl.textContent = "Uploading…";
          continue;
        }
        throw new Error(detail(r));
      }
    }

    async function upload(file) {
      aborted = false;
      showError("");
      wrap.hidden = false;
      cancel.hidden = false;
      submit.disabled = true;
      progress(0, file.size);
      statusEl.textContent = "Starting…";
      var meta = Object.assign(fields(), { kind: form.dataset.kind, filename: file.name, size: file.size });
      var created = await api("POST", form.dataset.createUrl, JSON.stringify(meta), { "Content-Type": "application/json" });
      if (!created.ok) throw new Error(detail(created));
      current = { url: created.data.url };
      statusEl.textContent = "Uploading…";
      await sendChunks(file, created.data.url, created.data.received || 0);
      statusEl.textContent = "Finishing…";
      var done = await api("POST", created.data.url + "complete");
      if (!done.ok) throw new Error(detail(done));
      progress(file.size, file.size);
      statusEl.textContent = "Uploaded; opening…";
      form.dataset.uploadDone = "1";
      window.location.assign(done.data.page_url);
    }

    cancel.addEventListener("click", async function () {
      aborted = true;
      if (current) {
        try { await api("DELETE", current.url); } catch (e) { /* expiry cleans up */ }
      }
      statusEl.textContent = "Cancelled.";
    });

    form.addEventListener("submit", function (e) {
      var file = input.files && input.files[0];
      if (!file) {
        e.preventDefault();
        showError("Choose a file first.");
        return;
      }
      e.preventDefault();
      if (maxBytes && file.size > maxBytes) {
        showError(file.name + " is " + human(file.size) + ", over the upload limit of " + human(maxBytes) + ".");
        return;
      }
      upload(file).catch(function (err) {
        showError(err.message || String(err));
        statusEl.textContent = "";
      }).finally(function () {
        submit.disabled = false;
        cancel.hidden = true;
        current = null;
      });
    });
  }

  document.querySelectorAll("form[data-upload-form]").forEach(setup);
})();
