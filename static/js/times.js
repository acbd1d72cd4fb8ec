// Times in the reader's own zone: the server renders <time datetime="ISO"> in its zone (UTC by
// default); here each is rewritten to the browser's local time with its zone, the ISO form kept
// on hover (title). Runs on load and after every htmx swap or websocket push.
(function () {
  "use strict";
  var fmt = null;
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  var zones = {}; // the zone's name by UTC offset (Intl is slow to ask, and pushes ask often)
  function zone(d) {
    var key = d.getTimezoneOffset();
    if (!(key in zones)) zones[key] = zoneName(d);
    return zones[key];
  }
  function zoneName(d) {
    try {
      var parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(d);
      for (var i = 0; i < parts.length; i++) if (parts[i].type === "timeZoneName") return parts[i].value;
    } catch (e) { /* an old browser: fall back to the offset */ }
    var off = -d.getTimezoneOffset();
    return "UTC" + (off >= 0 ? "+" : "-") + pad(Math.floor(Math.abs(off) / 60)) + ":" + pad(Math.abs(off) % 60);
  }
  function localise(root) {
    (root || document).querySelectorAll("time[datetime]:not([data-local])").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + " " + zone(d);
      t.dataset.local = "1";
      if (!t.title) t.title = t.getAttribute("datetime");
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSettle", function (e) { localise(e.target); });
  document.addEventListener("htmx:wsAfterMessage", function () { localise(document); });
  document.addEventListener("htmx:oobAfterSwap", function () { localise(document); });
})();
