// The event browser's live tail (/events/, toggled by #live-tail). The server pushes, for the
// page's filter, the newest matches and how many arrived since the tail started
// (#tail-incoming, hidden; dashboard/pages/events.py tail_live_html). Here the rows not shown
// yet move into the visible table, newest on top, at most MAX_ROWS kept; arrivals that never
// made it into a push (more than a push carries) are counted as skipped, with a link to them.
(function () {
  "use strict";
  var MAX_ROWS = 200;
  var paused = false;
  var lastMatched = null;
  var arrived = 0;
  var skipped = 0;
  var started = null;

  function el(id) { return document.getElementById(id); }

  function status() {
    var box = el("tail-status");
    if (!box) return;
    box.textContent = "";
    var text = paused ? "paused · " : "";
    text += arrived + " arrived since the tail started";
    box.appendChild(document.createTextNode(text));
    if (skipped > 0) {
      var link = document.createElement("a");
      var filter = el("tail-socket").dataset.filter;
      var query = new URLSearchParams(filter);
      query.delete("last");
      if (started) query.set("since", started);
      link.href = "/events/?" + query.toString();
      link.id = "tail-skipped";
      link.textContent = skipped + " not shown: see them";
      box.appendChild(document.createTextNode(" · "));
      box.appendChild(link);
    }
  }

  function absorb() {
    var incoming = el("tail-incoming");
    var rows = el("tail-rows");
    if (!incoming || !rows || paused) return;
    var matched = Number(incoming.dataset.matched || 0);
    started = started || incoming.dataset.started;
    var shown = {};
    rows.querySelectorAll("tr[data-id]").forEach(function (tr) { shown[tr.dataset.id] = true; });
    var fresh = [];
    incoming.querySelectorAll("tr[data-id]").forEach(function (tr) {
      if (!shown[tr.dataset.id]) fresh.push(tr);
    });
    for (var i = fresh.length - 1; i >= 0; i--) {  // oldest first, so the newest ends on top
      rows.insertBefore(document.importNode(fresh[i], true), rows.firstChild);
    }
    while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
    if (lastMatched !== null && matched >= lastMatched) {
      var count = matched - lastMatched;
      arrived += count;
      skipped += Math.max(0, count - fresh.length);
    }
    lastMatched = matched;
    if (incoming.dataset.capped === "1") rows.dataset.capped = "1";
    status();
  }

  function connect(on) {
    var box = el("tail-socket");
    var toggle = el("live-tail");
    if (!box || !toggle) return;
    var socket = box.querySelector("[ws-connect]");
    if (on && !socket) {
      socket = document.createElement("div");
      socket.setAttribute("hx-ext", "ws");
      socket.setAttribute("ws-connect", "/ws/live/?topics=" + encodeURIComponent(toggle.dataset.topic));
      box.appendChild(socket);
      htmx.process(socket);
    } else if (!on && socket) {
      htmx.trigger(socket, "htmx:beforeCleanupElement");  // the ws extension closes it
      socket.remove();
      var badge = el("live-status");
      if (badge) { badge.dataset.state = "static"; badge.textContent = ""; }
    }
    el("tail").hidden = !on;
    el("results").hidden = on;
    var url = new URL(window.location.href);
    if (on) url.searchParams.set("live", "1"); else url.searchParams.delete("live");
    url.searchParams.delete("cursor");
    history.replaceState(null, "", url.toString());
  }

  document.addEventListener("htmx:wsAfterMessage", absorb);
  document.addEventListener("DOMContentLoaded", function () {
    var toggle = el("live-tail");
    if (!toggle) return;
    toggle.addEventListener("change", function () { connect(toggle.checked); });
    var pause = el("tail-pause");
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", paused ? "true" : "false");
      if (!paused) absorb();
      status();
    });
    if (toggle.checked) connect(true);
  });
})();
