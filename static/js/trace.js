/* An event journey (templates/dashboard/trace.html): places the waterfall's dots, bars and axis
   ticks from their data-at / data-from attributes (per cent of the time axis, set by the
   server), and draws the services the trace crossed with Cytoscape + dagre from
   #trace-graph-data (JSON that is never executed). Clicking a service goes to its first event.
   Exposed as window.flowscopeTrace for tests. */
(function () {
  "use strict";

  function pct(el, name) {
    var v = parseFloat(el.getAttribute(name));
    return isFinite(v) ? Math.max(0, Math.min(100, v)) : 0;
  }

  function placeWaterfall(root) {
    root.querySelectorAll(".wf-dot[data-at], .wf-tick[data-at]").forEach(function (el) {
      el.style.left = pct(el, "data-at") + "%";
    });
    root.querySelectorAll(".wf-bar[data-from]").forEach(function (el) {
      var from = pct(el, "data-from"), at = pct(el, "data-at");
      el.style.left = Math.min(from, at) + "%";
      el.style.width = Math.max(Math.abs(at - from), 0.4) + "%";
    });
  }

  function style() {
    return [
      {
        selector: "node",
        style: {
          label: "data(label)",
          shape: "round-rectangle",
          width: function (n) { return Math.min(240, Math.max(80, (n.data("label") || "").length * 7 + 24)); },
          height: 30,
          "background-color": function (n) { return n.data("health") === "bad" ? "#fee2e2" : "#f8fafc"; },
          "border-color": function (n) { return n.data("health") === "bad" ? "#dc2626" : "#94a3b8"; },
          "border-width": function (n) { return n.data("health") === "bad" ? 3 : 1.5; },
          "font-size": 11,
          "font-family": "system-ui, sans-serif",
          color: "#1f2937",
          "text-valign": "center",
          "text-halign": "center",
          "text-max-width": 220,
          "text-wrap": "ellipsis",
        },
      },
      {
        selector: "edge",
        style: {
          width: 1.5,
          "line-color": "#94a3b8",
          "target-arrow-color": "#94a3b8",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          "control-point-step-size": 48,
          label: "data(label)",
          "text-rotation": "autorotate",
          "text-margin-y": -9,
          "font-size": 9,
          "font-family": "ui-monospace, SFMono-Regular, Menlo, monospace",
          color: "#334155",
          "text-background-color": "#ffffff",
          "text-background-opacity": 0.85,
          "text-background-padding": 2,
        },
      },
      // an edge back to a service seen earlier (orders reacts to a payment) bends around
      { selector: "edge.back", style: { "curve-style": "unbundled-bezier", "control-point-distances": [-120], "text-margin-y": 10, "control-point-weights": [0.5] } },
      { selector: "edge[how = 'replay']", style: { "line-style": "dashed", "line-color": "#7c3aed", "target-arrow-color": "#7c3aed" } },
    ];
  }

  /* The edges that close a cycle: a depth-first walk from each service in the order the trace
     reached it; an edge to a service still on the walk's path goes back. */
  function backEdges(cy) {
    var state = {};  // id -> 1 on the path, 2 done
    var back = cy.collection();
    function walk(node) {
      state[node.id()] = 1;
      node.outgoers("edge").forEach(function (edge) {
        var next = edge.target();
        if (state[next.id()] === 1) back = back.union(edge);
        else if (!state[next.id()]) walk(next);
      });
      state[node.id()] = 2;
    }
    cy.nodes().sort(function (a, b) { return a.data("order") - b.data("order"); }).forEach(function (n) {
      if (!state[n.id()]) walk(n);
    });
    return back;
  }

  function drawGraph() {
    var container = document.getElementById("trace-graph");
    var source = document.getElementById("trace-graph-data");
    if (!container || !source || !window.cytoscape) return null;
    var data = JSON.parse(source.textContent);
    var cy = window.cytoscape({
      container: container,
      elements: data.nodes.concat(data.edges),
      style: style(),
      layout: { name: "preset" },
      minZoom: 0.3,
      maxZoom: 2,
      boxSelectionEnabled: false,
    });
    // (Cytoscape has no cursor style: the hand is the container's, while over a node)
    cy.on("mouseover", "node", function () { container.style.cursor = "pointer"; });
    cy.on("mouseout", "node", function () { container.style.cursor = ""; });
    // Left to right in the order the trace reached each service (top to bottom on a narrow
    // screen): dagre lays out the forward edges; the edges back to an earlier service (a
    // journey's cycles) are drawn after, bent, without pulling the order around.
    var narrow = container.clientWidth < 600;
    var back = backEdges(cy);
    back.addClass("back");
    cy.elements().difference(back).layout({ name: "dagre", rankDir: narrow ? "TB" : "LR", rankSep: narrow ? 70 : 100, nodeSep: 36, edgeSep: 24, fit: false, animate: false }).run();
    cy.fit(cy.elements(), 28);
    if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
    cy.on("tap", "node", function (evt) {
      var name = evt.target.id().slice(4);
      var rows = document.querySelectorAll("#waterfall tr.step");
      for (var i = 0; i < rows.length; i++) {
        if ((rows[i].dataset.service || "(no service header)") === name) {
          window.location.hash = rows[i].id;
          return;
        }
      }
    });
    window.addEventListener("resize", function () { cy.resize(); });
    return cy;
  }

  function start() {
    placeWaterfall(document);
    window.flowscopeTrace = { cy: drawGraph() };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
