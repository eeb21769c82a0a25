// The API console: Swagger UI served from this studio (drf-spectacular-sidecar), never a CDN.
// Requests go out with the browser session; unsafe methods carry the CSRF token that base.html
// puts in <body hx-headers>, so a signed-in user can try every endpoint from the page.
(function () {
  "use strict";
  var root = document.getElementById("api-console");
  if (!root || typeof window.SwaggerUIBundle !== "function") return;

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  window.SwaggerUIBundle({
    url: root.getAttribute("data-schema-url"),
    domNode: root,
    deepLinking: true,
    persistAuthorization: false,
    displayRequestDuration: true,
    tryItOutEnabled: false,
    validatorUrl: null, // the default validator is a third-party web service
    withCredentials: true,
    requestInterceptor: function (request) {
      var method = (request.method || "GET").toUpperCase();
      if (["GET", "HEAD", "OPTIONS", "TRACE"].indexOf(method) === -1) {
        request.headers["X-CSRFToken"] = csrfToken();
      }
      request.credentials = "same-origin";
      return request;
    },
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
