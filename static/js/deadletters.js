// /dead-letters/: the selection boxes and the live list.
//
// Selection: the header's box (.pick-all) ticks or clears every row's box (.pick) of the table,
// and shows whether all, some or none are ticked.
//
// Live: the server pushes, for the page's filter (dashboard/pages/deadletters.py
// dead_letters_live_html), the filter's newest rows (#dl-incoming, hidden) and the status of its
// newest dead letters (data-statuses: {"new": [ids], "replayed": [ids], ...}). Here the rows not
// shown yet are inserted into #dead-letters in their place (newest first; on the first page
// only), and rows already shown get their status cell updated. Rows are inserted, never
// replaced: a ticked box stays ticked, and when the reader has scrolled into the list the page
// scrolls by what was inserted above, so the row under the pointer stays under it.
(function () {
  "use strict";
  var MAX_ROWS = 1000; // rows the page holds; beyond, it says so instead of growing

  function el(id) { return document.getElementById(id); }

  function key(tr) {
    var parts = (tr.dataset.key || "0.0").split(".");
    return [Number(parts[0]), Number(parts[1])];
  }

  function newer(a, b) { return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]); }

  function rows(table) { return table.tBodies[0].querySelectorAll("tr[data-id]"); }

  function syncAll(table) {
    var all = table.querySelector("thead input.pick-all");
    if (!all) return;
    var boxes = table.tBodies[0].querySelectorAll("input.pick");
    var ticked = 0;
    boxes.forEach(function (b) { if (b.checked) ticked += 1; });
    all.checked = boxes.length > 0 && ticked === boxes.length;
    all.indeterminate = ticked > 0 && ticked < boxes.length;
    selection(ticked);
  }

  // The bulk actions (#dead-letter-actions): "… selected" only with something ticked.
  function selection(ticked) {
    ["replay-selected", "discard-selected"].forEach(function (id) {
      var button = el(id);
      if (button) button.disabled = ticked === 0;
    });
    var count = el("selected-count");
    if (count) count.textContent = ticked ? ticked + " selected." : count.dataset.none;
  }

  function statuses(incoming) {
    var byId = {};
    var byStatus;
    try {
      byStatus = JSON.parse(incoming.dataset.statuses || "{}");
    } catch (e) {
      return byId;
    }
    Object.keys(byStatus).forEach(function (status) {
      (byStatus[status] || []).forEach(function (id) { byId[String(id)] = status; });
    });
    return byId;
  }

  function setStatus(tr, status) {
    if (tr.dataset.status === status) return;
    tr.dataset.status = status;
    var cell = tr.querySelector("td.status");
    if (!cell) return;
    var badge = document.createElement("span");
    badge.className = "state" + (status === "new" ? " state-behind" : "");
    badge.textContent = status;
    cell.textContent = "";
    cell.appendChild(badge);
  }

  // The first row at or below the top of the window, and where it is, when the reader has
  // scrolled past the table's head (else null: new rows at the top push the list down, as
  // they should when its top is in view).
  function anchor(table) {
    if (table.getBoundingClientRect().top >= 0) return null;
    var list = rows(table);
    for (var i = 0; i < list.length; i++) {
      var top = list[i].getBoundingClientRect().top;
      if (top >= 0) return { row: list[i], top: top };
    }
    return null;
  }

  function say(text) {
    var note = el("dl-arrived");
    if (!note) return;
    note.hidden = !text;
    note.textContent = text || "";
    if (text) {
      var link = document.createElement("a");
      link.href = window.location.pathname + window.location.search.replace(/([?&])cursor=[^&]*&?/, "$1");
      link.textContent = "show the newest";
      note.appendChild(document.createTextNode(" "));
      note.appendChild(link);
    }
  }

  function insert(table, incoming, shown) {
    var body = table.tBodies[0];
    var pick = !!table.querySelector("thead input.pick-all");
    var sent = incoming.querySelectorAll("tr[data-id]");
    var fresh = [];
    sent.forEach(function (tr) { if (!shown[tr.dataset.id]) fresh.push(tr); });
    if (!fresh.length) return;
    var had = rows(table).length;
    if (had + fresh.length > MAX_ROWS) {
      say("More dead letters arrived than this page holds:");
      return;
    }
    // every row of the push is new and it was full: some may have arrived between them and
    // the rows shown, which no push carried
    if (had && fresh.length === sent.length && sent.length >= Number(incoming.dataset.limit || 0)) {
      say("More dead letters arrived than were pushed:");
    }
    var before = anchor(table);
    fresh.forEach(function (tr) {
      var row = document.importNode(tr, true);
      if (!pick) {
        var cell = row.querySelector("td.pick");
        if (cell) cell.remove();
      }
      row.classList.add("fresh");
      var k = key(row);
      var list = rows(table);
      var at = null;
      for (var i = 0; i < list.length; i++) {
        if (newer(k, key(list[i]))) { at = list[i]; break; }
      }
      if (at) body.insertBefore(row, at);
      else if (table.dataset.more !== "1") body.appendChild(row); // else: on an older page
    });
    if (before) {
      var moved = before.row.getBoundingClientRect().top - before.top;
      if (moved) window.scrollBy(0, moved);
    }
    if (rows(table).length) {
      table.hidden = false;
      var empty = el("no-dead-letters");
      if (empty) empty.hidden = true;
    }
  }

  function absorb() {
    var incoming = el("dl-incoming");
    var table = el("dead-letters");
    if (!incoming || !table) return;
    var shown = {};
    rows(table).forEach(function (tr) { shown[tr.dataset.id] = tr; });
    var status = statuses(incoming);
    Object.keys(status).forEach(function (id) { if (shown[id]) setStatus(shown[id], status[id]); });
    if (table.dataset.live === "1") insert(table, incoming, shown);
    syncAll(table);
  }

  document.addEventListener("change", function (evt) {
    var target = evt.target;
    var table = el("dead-letters");
    if (!table || !target.classList || !table.contains(target)) return;
    if (target.classList.contains("pick-all")) {
      table.tBodies[0].querySelectorAll("input.pick").forEach(function (b) { b.checked = target.checked; });
    }
    if (target.classList.contains("pick") || target.classList.contains("pick-all")) syncAll(table);
  });
  document.addEventListener("htmx:wsAfterMessage", absorb);
  document.addEventListener("DOMContentLoaded", function () {
    var table = el("dead-letters");
    if (table) syncAll(table);
  });
  window.flowscopeDeadLetters = { absorb: absorb };
})();
