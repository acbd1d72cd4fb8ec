// Live pages: the state of the page's websocket, shown in the header (#live-status), and the
// time the last push arrived. htmx's ws extension connects (ws-connect), swaps the pushed
// fragments in by id (out-of-band) and reconnects by itself after a restart; the server sends
// the current state on every (re)connect, so the page re-syncs.
//
// Flow control: once open, the page tells the server it acknowledges ("flow ack"), then sends
// "ack" after each message is swapped in. The server keeps at most one message
// unacknowledged and coalesces what changes meanwhile, so a busy page gets fewer, fresher
// messages rather than a queue of stale ones (dashboard/live/consumer.py).
//
// Patching in place: a pushed region (an out-of-band root) that has the same shape as the one
// shown (the same elements in the same order: a counter moved, a time changed) is not swapped
// whole; its changed texts and attributes are set on the elements already there, and its
// charts take the new data (static/js/charts.js), so a push costs the browser a few text nodes
// instead of a new table. A region of another shape (a row came or went) is swapped by htmx as
// usual. Either way htmx:load follows on the region, so scripts that watch it re-read it.
(function () {
  "use strict";
  var badge = null;
  var lastPush = null;
  var generation = 0; // one per connection: an ack never reaches a later connection
  var live = window.flowscopeLive = { pushes: 0, patched: 0 };

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

  // The edits that make `old` look like `neu`, into `ops`; false (and `ops` of no use) when
  // their shapes differ. A drawn chart is a leaf: its children are uPlot's.
  function plan(old, neu, ops) {
    if (old.nodeType !== neu.nodeType) return false;
    if (old.nodeType === Node.TEXT_NODE || old.nodeType === Node.COMMENT_NODE) {
      if (old.data !== neu.data) ops.push({ node: old, text: neu.data });
      return true;
    }
    if (old.nodeType !== Node.ELEMENT_NODE || old.tagName !== neu.tagName) return false;
    // a time shown in the reader's zone (static/js/times.js) for the same instant: unchanged
    if (old.tagName === "TIME" && old.dataset.local &&
        old.getAttribute("datetime") === neu.getAttribute("datetime")) return true;
    var charts = window.flowscopeCharts;
    if (old.hasAttribute("data-chart") && charts && charts.data(old)) {
      if (!charts.accepts(old, neu)) return false;
      ops.push({ chart: old, from: neu });
      return true;
    }
    var i;
    for (i = 0; i < neu.attributes.length; i++) {
      var a = neu.attributes[i];
      if (old.getAttribute(a.name) !== a.value) ops.push({ node: old, attr: a.name, value: a.value });
    }
    for (i = 0; i < old.attributes.length; i++) {
      var name = old.attributes[i].name;
      if (!neu.hasAttribute(name)) ops.push({ node: old, attr: name, value: null });
    }
    var a1 = old.childNodes, b1 = neu.childNodes;
    if (a1.length !== b1.length) return false;
    for (i = 0; i < a1.length; i++) {
      if (!plan(a1[i], b1[i], ops)) return false;
    }
    return true;
  }

  function patch(ops) {
    var reprocess = [];
    ops.forEach(function (op) {
      if (op.chart) {
        window.flowscopeCharts.update(op.chart, op.from);
      } else if (op.attr === undefined) {
        op.node.data = op.text;
      } else {
        if (op.value === null) op.node.removeAttribute(op.attr);
        else op.node.setAttribute(op.attr, op.value);
        if (op.attr.indexOf("hx-") === 0) reprocess.push(op.node);
      }
    });
    reprocess.forEach(function (el) { htmx.process(el); });
  }

  // Registered once every script has run, so that the charts' own check (a pushed chart region
  // for another range than the one chosen is not swapped) comes first. A region that cannot be
  // patched keeps its charts through the swap (static/js/charts.js).
  function patchPushes() {
    document.addEventListener("htmx:oobBeforeSwap", function (evt) {
      var d = evt.detail;
      if (!d || !d.shouldSwap || !d.target || !d.fragment) return;
      var incoming = d.fragment.firstElementChild;
      if (!incoming || d.fragment.childNodes.length !== 1 || incoming.id !== d.target.id) return;
      // a socket (ws-connect) swapped in is another topic: replaced whole, so its extension
      // closes the old connection and opens the new one
      if (d.target.hasAttribute("ws-connect")) return;
      var ops = [];
      if (!plan(d.target, incoming, ops)) {  // another shape: htmx swaps it whole
        if (window.flowscopeCharts) window.flowscopeCharts.keep(d.target, incoming);
        return;
      }
      d.shouldSwap = false;
      live.patched += 1;
      if (!ops.length) return;
      patch(ops);
      htmx.trigger(d.target, "htmx:load", { elt: d.target });
    });
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
    patchPushes();
  });
})();
