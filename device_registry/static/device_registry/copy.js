// Copy buttons: <button data-copy-target="ID"> copies the text of #ID. Uses the clipboard API
// where the page is a secure context, else a hidden textarea and execCommand (plain-http
// studios on a LAN address are not secure contexts, and the API is missing there).
(function () {
  "use strict";

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        function () { return true; },
        function () { return fallbackCopy(text); }
      );
    }
    return Promise.resolve(fallbackCopy(text));
  }

  function flash(button, label) {
    var original = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", original);
    button.textContent = label;
    window.setTimeout(function () { button.textContent = original; }, 1500);
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest("[data-copy-target]") : null;
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy-target"));
    if (!source) return;
    copy(source.textContent.trim()).then(function (ok) {
      button.setAttribute("data-copied", ok ? "yes" : "no");
      flash(button, ok ? "Copied" : "Select and copy");
    });
  });
})();
