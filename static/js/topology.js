/* The topology graph: Cytoscape.js with the dagre layout, fed by #topology-data (JSON that is
   never executed). The first non-empty graph is laid out by dagre, left to right (top to bottom
   in a box narrower than NARROW px: a phone's five ranks side by side would be unreadable,
   one under the other they keep a readable size; crossing that width lays it out anew); after that,
   when the server replaces #topology-data (an htmx out-of-band swap), the diff is applied: new
   nodes are placed next to their neighbours, vanished ones removed, labels and health updated,
   and no existing node moves. A node with dead letters waiting is drawn red with a double
   border and their count under its name. The list beside it (#topology-list) is filtered by
   #topology-filter. Exposed as window.flowscopeTopology for tests. */
(function () {
  "use strict";

  var KIND_RANK = { publisher: 0, subject: 1, stream: 2, consumer: 3, service: 4 };
  var NARROW = 600; // px: below it the ranks go top to bottom
  var READABLE = 0.8; // the least zoom a narrow graph is drawn at (labels of 11 px: 9 px); wider
  // than its box then, it is panned to its top and middle, and drags and pinches show the rest
  var HEALTH = {
    ok: { fill: "#f8fafc", line: "#94a3b8" },
    warn: { fill: "#fef3c7", line: "#d97706" },
    bad: { fill: "#fee2e2", line: "#dc2626" },
    dead: { fill: "#fee2e2", line: "#dc2626" }, // dead letters waiting
  };
  var KIND_SHAPE = {
    publisher: "ellipse",
    subject: "round-rectangle",
    stream: "barrel",
    consumer: "round-rectangle",
    service: "round-hexagon",
  };

  function deadText(n) {
    return n + " dead letter" + (n === 1 ? "" : "s");
  }

  // The label drawn: the name, and under it the dead letters waiting, if any.
  function nodeLabel(node) {
    var dead = node.data("dead_letters") || 0;
    return (node.data("label") || "") + (dead ? "\n" + deadText(dead) : "");
  }

  function nodeWidth(node) {
    var label = node.data("label") || "";
    var dead = node.data("dead_letters") ? deadText(node.data("dead_letters")).length : 0;
    return Math.min(260, Math.max(70, Math.max(label.length, dead) * 7 + 24));
  }

  function style() {
    return [
      {
        selector: "node",
        style: {
          label: nodeLabel,
          shape: function (n) { return KIND_SHAPE[n.data("kind")] || "round-rectangle"; },
          width: nodeWidth,
          height: function (n) { return n.data("dead_letters") ? 44 : 30; },
          "background-color": function (n) { return (HEALTH[n.data("health")] || HEALTH.ok).fill; },
          "border-color": function (n) { return (HEALTH[n.data("health")] || HEALTH.ok).line; },
          "border-width": function (n) { return n.data("health") === "ok" ? 1.5 : 3; },
          "font-size": 11,
          "font-family": "ui-monospace, SFMono-Regular, Menlo, monospace",
          color: "#1f2937",
          "text-valign": "center",
          "text-halign": "center",
          "text-max-width": 240,
          "text-overflow-wrap": "anywhere",
          "text-wrap": "ellipsis",
        },
      },
      { selector: "node[dead_letters > 0]", style: { "text-wrap": "wrap", "border-style": "double", "border-width": 4 } },
      { selector: "node[kind = 'stream']", style: { "font-weight": "bold", "background-color": function (n) { return n.data("health") === "ok" ? "#dbeafe" : HEALTH[n.data("health")].fill; } } },
      { selector: "node[kind = 'publisher'], node[kind = 'service']", style: { "font-family": "system-ui, sans-serif" } },
      {
        selector: "edge",
        style: {
          width: 1.5,
          "line-color": "#94a3b8",
          "target-arrow-color": "#94a3b8",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          label: "data(label)",
          "font-size": 10,
          color: "#334155",
          "text-background-color": "#ffffff",
          "text-background-opacity": 0.85,
          "text-background-padding": 2,
        },
      },
      { selector: "node:selected", style: { "overlay-opacity": 0.08 } },
    ];
  }

  function Topology(container, source) {
    this.container = container;
    this.rankDir = this.direction();
    this.source = source;
    this.lastText = null;
    this.laidOut = false;
    this.rankSep = Number(container.dataset.rankSep || 110);
    this.nodeSep = Number(container.dataset.nodeSep || 18);
    this.cy = window.cytoscape({
      container: container,
      elements: [],
      style: style(),
      layout: { name: "preset" },
      minZoom: 0.2,
      maxZoom: 2.5,
      boxSelectionEnabled: false,
      autoungrabify: false,
    });
    var self = this;
    this.cy.on("tap", "node", function (evt) {
      var url = evt.target.data("url");
      if (url) window.location.assign(url);
    });
    // The tooltip: the node's name, what it is, and what is wrong with it.
    this.cy.on("mouseover", "node", function (evt) {
      var d = evt.target.data();
      container.title = [d.label, d.detail, d.health_text].filter(Boolean).join("\n");
      container.style.cursor = d.url ? "pointer" : "";  // (Cytoscape has no cursor style)
    });
    this.cy.on("mouseout", "node", function () { container.title = ""; container.style.cursor = ""; });
  }

  Topology.prototype.read = function () {
    var el = document.getElementById("topology-data");
    return el ? el.textContent : null;
  };

  /* Apply the current #topology-data: returns true if anything was read. */
  Topology.prototype.apply = function () {
    var text = this.read();
    if (!text || text === this.lastText) return false;
    this.lastText = text;
    var data = JSON.parse(text);
    var cy = this.cy;
    var wanted = {};
    var added = [];
    cy.batch(function () {
      data.nodes.concat(data.edges).forEach(function (el) { wanted[el.data.id] = true; });
      cy.elements().forEach(function (el) { if (!wanted[el.id()]) cy.remove(el); });
      data.nodes.forEach(function (el) {
        var existing = cy.getElementById(el.data.id);
        if (existing.nonempty()) existing.data(el.data);
        else added.push(cy.add({ group: "nodes", data: el.data, position: { x: 0, y: 0 } }));
      });
      data.edges.forEach(function (el) {
        var existing = cy.getElementById(el.data.id);
        if (existing.nonempty()) existing.data("label", el.data.label);
        else cy.add({ group: "edges", data: el.data });
      });
    });
    if (!this.laidOut) {
      if (cy.nodes().length) this.layoutAll();
    } else {
      this.place(added);
    }
    return true;
  };

  /* "TB" in a narrow box, else the page's data-rank-dir (LR). */
  Topology.prototype.direction = function () {
    if (this.container.clientWidth && this.container.clientWidth < NARROW) return "TB";
    return this.container.dataset.rankDir || "LR";
  };

  /* The axis ranks follow ("x" left to right, "y" top to bottom) and the one across them. */
  Topology.prototype.axes = function () {
    return this.rankDir === "TB"
      ? { rank: "y", across: "x", rankSize: "height", acrossSize: "width" }
      : { rank: "x", across: "y", rankSize: "width", acrossSize: "height" };
  };

  /* After a resize: the same graph, laid out anew only if the direction changed. */
  Topology.prototype.resize = function () {
    this.cy.resize();
    var dir = this.direction();
    if (dir !== this.rankDir) {
      this.rankDir = dir;
      if (this.cy.nodes().length) this.layoutAll();
    }
  };

  Topology.prototype.layoutAll = function () {
    this.laidOut = true;
    this.cy.layout({
      name: "dagre",
      rankDir: this.rankDir,
      rankSep: this.rankSep,
      nodeSep: this.nodeSep,
      edgeSep: 8,
      fit: true,
      padding: 24,
      animate: false,
    }).run();
    var cy = this.cy;
    if (this.rankDir === "TB" && cy.zoom() < READABLE) {
      cy.zoom(READABLE);
      var streams = cy.nodes("[kind = 'stream']");  // the middle of the flow, in the middle
      cy.center(streams.nonempty() ? streams : cy.elements());
      var top = cy.elements().renderedBoundingBox().y1;
      if (top < 24) cy.panBy({ x: 0, y: 24 - top });
    }
  };

  /* New nodes go beside their already placed neighbours (one rank after their sources, or
     before their targets), then across the ranks until they overlap nothing. No other node
     moves. */
  Topology.prototype.place = function (added) {
    var self = this;
    var placed = {};
    this.cy.nodes().forEach(function (n) { placed[n.id()] = true; });
    added.forEach(function (n) { placed[n.id()] = false; });
    added.sort(function (a, b) { return KIND_RANK[a.data("kind")] - KIND_RANK[b.data("kind")]; });
    added.forEach(function (n) {
      var pos = self.guess(n, placed);
      n.position(self.free(n, pos, placed));
      placed[n.id()] = true;
    });
  };

  Topology.prototype.guess = function (n, placed) {
    var self = this;
    var a = this.axes();
    var size = { width: nodeWidth(n), height: 30 };
    var ins = n.incomers("node").filter(function (m) { return placed[m.id()]; });
    var outs = n.outgoers("node").filter(function (m) { return placed[m.id()]; });
    function mean(nodes, axis) {
      var sum = 0;
      nodes.forEach(function (m) { sum += m.position(axis); });
      return sum / nodes.length;
    }
    function at(rank, across) {
      var pos = {};
      pos[a.rank] = rank;
      pos[a.across] = across;
      return pos;
    }
    if (ins.length) {
      var after = Math.max.apply(null, ins.map(function (m) { return m.position(a.rank) + m[a.rankSize]() / 2; }));
      return at(after + self.rankSep + size[a.rankSize] / 2, mean(ins, a.across));
    }
    if (outs.length) {
      var before = Math.min.apply(null, outs.map(function (m) { return m.position(a.rank) - m[a.rankSize]() / 2; }));
      return at(before - self.rankSep - size[a.rankSize] / 2, mean(outs, a.across));
    }
    var same = this.cy.nodes().filter(function (m) { return placed[m.id()] && m.data("kind") === n.data("kind"); });
    var bb = this.cy.nodes().filter(function (m) { return placed[m.id()]; }).boundingBox();
    var end = a.across === "y" ? bb.y2 : bb.x2, start = a.rank === "x" ? bb.x1 : bb.y1;
    if (same.length) return at(mean(same, a.rank), end + 40);
    return at(isFinite(start) ? start + KIND_RANK[n.data("kind")] * 200 : 0, isFinite(end) ? end + 40 : 0);
  };

  Topology.prototype.free = function (n, pos, placed) {
    var a = this.axes();
    var size = { width: nodeWidth(n), height: 30 }, gap = this.nodeSep;
    var others = this.cy.nodes().filter(function (m) { return m !== n && placed[m.id()]; });
    for (var i = 0; i < 500; i++) {
      var clash = false;
      others.forEach(function (m) {
        var p = m.position();
        if (Math.abs(p.x - pos.x) < (m.width() + size.width) / 2 + gap && Math.abs(p.y - pos.y) < (m.height() + size.height) / 2 + gap) clash = true;
      });
      if (!clash) return pos;
      var next = { x: pos.x, y: pos.y };
      next[a.across] += size[a.acrossSize] + gap;
      pos = next;
    }
    return pos;
  };

  Topology.prototype.positions = function () {
    var out = {};
    this.cy.nodes().forEach(function (n) { out[n.id()] = { x: n.position("x"), y: n.position("y") }; });
    return out;
  };

  function filterList() {
    var input = document.getElementById("topology-filter");
    var list = document.getElementById("topology-list");
    if (!input || !list) return;
    var q = input.value.trim().toLowerCase();
    list.querySelectorAll("li.topo-node").forEach(function (li) {
      li.hidden = q !== "" && li.textContent.toLowerCase().indexOf(q) === -1;
    });
    list.querySelectorAll("section").forEach(function (section) {
      section.hidden = q !== "" && !section.querySelector("li.topo-node:not([hidden])");
    });
  }

  function start() {
    var input = document.getElementById("topology-filter");
    if (input) input.addEventListener("input", filterList);
    var container = document.getElementById("topology-graph");
    if (!container || !window.cytoscape) return;
    var topology = new Topology(container);
    window.flowscopeTopology = topology;
    topology.apply();
    function refresh() {
      topology.apply();
      filterList();
    }
    // htmx 2 fires htmx:oobAfterSwap on the swapped-in element (it bubbles to the document)
    // and htmx:load on new content; either may come first, apply() ignores a repeat.
    document.addEventListener("htmx:oobAfterSwap", refresh);
    document.addEventListener("htmx:load", refresh);
    window.addEventListener("resize", function () { topology.resize(); });
    // the whole graph in its box, however small that makes it (a phone's view is 0.8 at least)
    var fit = document.getElementById("topology-fit");
    if (fit) fit.addEventListener("click", function () { topology.cy.fit(topology.cy.elements(), 24); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
