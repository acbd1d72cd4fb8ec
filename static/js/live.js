// Live pages: the state of the page's websocket, shown in the header (#live-status), and the
// time the last push arrived. htmx's ws extension connects (ws-connect), swaps the pushed
// fragments in by id (out-of-band) and reconnects by itself after a restart; the server sends
// the current state on every (re)connect, so the page re-syncs.
(function () {
  "use strict";
  var badge = null;
  var lastPush = null;

  function show(state, text) {
    badge = badge || document.getElementById("live-status");
    if (!badge) return;
    badge.dataset.state = state;
    badge.textContent = text;
  }

  document.addEventListener("htmx:wsConnecting", function () {
    show(document.body.dataset.liveEver ? "reconnecting" : "connecting",
         document.body.dataset.liveEver ? "reconnecting…" : "connecting…");
  });
  document.addEventListener("htmx:wsOpen", function () {
    document.body.dataset.liveEver = "1";
    show("live", "live");
  });
  document.addEventListener("htmx:wsClose", function () { show("reconnecting", "reconnecting…"); });
  document.addEventListener("htmx:wsError", function () { show("reconnecting", "reconnecting…"); });
  document.addEventListener("htmx:wsAfterMessage", function () {
    lastPush = new Date();
    if (badge) badge.title = "last update " + lastPush.toLocaleTimeString();
    document.body.dataset.pushes = String(Number(document.body.dataset.pushes || 0) + 1);
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (!document.querySelector("[ws-connect]")) show("static", "");
  });
})();
