// Live pages: the state of the page's websocket, shown in the header (#live-status), and the
// time the last push arrived. htmx's ws extension connects (ws-connect), swaps the pushed
// fragments in by id (out-of-band) and reconnects by itself after a restart; the server sends
// the current state on every (re)connect, so the page re-syncs.
//
// Flow control: once open, the page tells the server it acknowledges ("flow ack"), then sends
// "ack" after each message is swapped in. The server keeps at most one message
// unacknowledged and coalesces what changes meanwhile, so a busy page gets fewer, fresher
// messages rather than a queue of stale ones (dashboard/live/consumer.py).
(function () {
  "use strict";
  var badge = null;
  var lastPush = null;
  var generation = 0; // one per connection: an ack never reaches a later connection
  var live = window.flowscopeLive = { pushes: 0 };

  function show(state, text) {
    badge = badge || document.getElementById("live-status");
    if (!badge) return;
    badge.dataset.state = state;
    badge.textContent = text;
  }

  // Once the task that swapped the message in is over (a page busy rendering acks later).
  function ack(socket) {
    var mine = generation;
    setTimeout(function () { if (mine === generation) socket.send("ack"); }, 0);
  }

  document.addEventListener("htmx:wsConnecting", function () {
    show(document.body.dataset.liveEver ? "reconnecting" : "connecting",
         document.body.dataset.liveEver ? "reconnecting…" : "connecting…");
  });
  document.addEventListener("htmx:wsOpen", function (evt) {
    generation += 1;
    document.body.dataset.liveEver = "1";
    show("live", "live");
    if (evt.detail && evt.detail.socketWrapper) evt.detail.socketWrapper.send("flow ack");
  });
  document.addEventListener("htmx:wsClose", function () {
    generation += 1;
    show("reconnecting", "reconnecting…");
  });
  document.addEventListener("htmx:wsError", function () { show("reconnecting", "reconnecting…"); });
  document.addEventListener("htmx:wsAfterMessage", function (evt) {
    lastPush = new Date();
    live.pushes += 1;
    if (evt.detail && evt.detail.socketWrapper) ack(evt.detail.socketWrapper);
  });
  document.addEventListener("mouseover", function (evt) {
    // the badge's title is set when someone looks, not on every push (no attribute churn)
    if (badge && lastPush && evt.target === badge) {
      badge.title = "last update " + lastPush.toLocaleTimeString();
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (!document.querySelector("[ws-connect]")) show("static", "");
  });
})();
