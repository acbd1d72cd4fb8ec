// The API docs page (/api/docs): Swagger UI on the OpenAPI document named by the body's
// data-openapi-url. Requests made from it carry the session cookie and, for unsafe methods,
// the page's CSRF token (data-csrf-token).
(function () {
  "use strict";
  function start() {
    var body = document.body;
    window.SwaggerUIBundle({
      url: body.dataset.openapiUrl,
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
      presets: [window.SwaggerUIBundle.presets.apis],
      requestInterceptor: function (req) {
        if (body.dataset.csrfToken) {
          req.headers["X-CSRFToken"] = body.dataset.csrfToken;
        }
        return req;
      },
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
