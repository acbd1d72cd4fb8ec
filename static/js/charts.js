/* Flowscope charts: draws every element with a data-chart attribute with uPlot (vendored).
 *
 *   data-chart="spark"  a sparkline: data-x = JSON [unix s], data-y = JSON [number|null],
 *                       data-unit = label shown on hover (title)
 *   data-chart="lag"    a full time chart: data-series = JSON
 *                       {"t": [unix s], "series": {"name": [number|null]}, "unit": "messages",
 *                        "from": unix s, "to": unix s}  (from/to optional: the x range shown)
 *                       with axes, a legend, and the x axis in the browser's local time
 *
 * Charts are drawn on load and whenever htmx adds content (htmx:load fires for every element
 * an htmx swap inserts, out-of-band swaps from the websocket included). A live push keeps the
 * charts it finds (static/js/live.js): a drawn chart takes the new data (uPlot setData) and the
 * data-* attributes of its counterpart in the pushed HTML (same row or region, same place), in
 * place when live.js patches the region, or standing in for its counterpart when htmx swaps
 * the region whole; a push costs no new uPlot, canvas or layout. A chart whose series changed
 * (a consumer came or went) is drawn anew.
 * A chart's uPlot and its ResizeObserver are destroyed when htmx removes its element, and any
 * chart whose element left the document is swept on the next load, so hours of pushes leak
 * nothing. Width follows the container. No inline script anywhere: configuration is in the
 * data-* attributes.
 */
(function () {
  "use strict";

  var PALETTE = ["#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2",
                 "#db2777", "#65a30d", "#475569", "#ea580c", "#4f46e5", "#0d9488"];
  var LAG_HEIGHT = 240;
  var SPARK_HEIGHT = 36;
  var charts = new Map(); // element -> {plot: uPlot, observer: ResizeObserver, kind, names, spec}
  var IDENTITY = ["data-stream", "data-consumer", "data-tap", "data-store", "id"];

  function parse(el, name) {
    try {
      return JSON.parse(el.getAttribute(name) || "null");
    } catch (e) {
      return null;
    }
  }

  function formatNumber(v) {
    if (v == null || isNaN(v)) return "–";
    var abs = Math.abs(v);
    if (abs >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, "") + " G";
    if (abs >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + " M";
    if (abs >= 1e4) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + " k";
    if (abs >= 10 || v === Math.round(v)) return Math.round(v).toLocaleString();
    return v.toFixed(1);
  }

  // A y axis' tick labels: under 1 apart, as many decimals as the step needs (0.05 apart:
  // 0.05, 0.10, 0.15; not 0.1, 0.1, 0.1), else as formatNumber writes them.
  function tickLabels(vals, incr) {
    if (!(incr > 0 && incr < 1)) return vals.map(formatNumber);
    var decimals = Math.min(6, Math.ceil(-Math.log10(incr) - 1e-9));
    return vals.map(function (v) {
      if (v == null || Math.abs(v) >= 1e4) return formatNumber(v);
      return v.toFixed(decimals);
    });
  }

  // Tick steps for counts: whole numbers only (1, 2, 5, 10, 20, 50, ...).
  var COUNT_STEPS = [];
  for (var p = 1; p <= 1e12; p *= 10) COUNT_STEPS.push(p, 2 * p, 5 * p);

  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function dateOf(d) { return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()); }
  function hoursOf(d) { return pad(d.getHours()) + ":" + pad(d.getMinutes()); }

  // The legend's time: the moment under the cursor, to the second, in the reader's zone.
  function fullTime(v) {
    var d = new Date(v * 1000);
    return dateOf(d) + " " + hoursOf(d) + ":" + pad(d.getSeconds());
  }

  // A time axis' label in the reader's zone, 24-hour like the rest of the pages: the date for
  // ticks a day or more apart, seconds only when ticks are under a minute apart.
  function timeLabel(v, incr) {
    var d = new Date(v * 1000);
    if (incr >= 86400) return dateOf(d);
    return incr < 60 ? hoursOf(d) + ":" + pad(d.getSeconds()) : hoursOf(d);
  }

  // The element's width: a sparkline as narrow as its column (60 px at least), a lag chart 120.
  function widthOf(el) {
    var least = el.getAttribute("data-chart") === "spark" ? 60 : 120;
    return Math.max(least, Math.floor(el.clientWidth || el.getBoundingClientRect().width || 300));
  }

  function lagOptions(el, spec, current) {
    var names = Object.keys(spec.series || {});
    var unit = spec.unit || "";
    var series = [
      { label: "Time", value: function (u, v) { return v == null ? "–" : fullTime(v); } },
    ];
    names.forEach(function (name, i) {
      series.push({
        label: name,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        spanGaps: false,
        points: { show: false },
        value: function (u, v) { return v == null ? "–" : formatNumber(v) + " " + unit; },
      });
    });
    var yAxis = {
      stroke: "#475569", size: 60, label: unit, labelSize: 18, labelFont: "12px system-ui",
      grid: { stroke: "#eef2f7", width: 1 }, ticks: { stroke: "#e5e7eb" },
      values: function (u, vals, axis, space, incr) { return tickLabels(vals, incr); },
    };
    // counts: no tick at 0.2 of a message (or of a pull request)
    if (unit === "messages" || unit === "requests") yAxis.incrs = COUNT_STEPS;
    return {
      width: widthOf(el),
      height: LAG_HEIGHT,
      series: series,
      scales: {
        // the range chosen, not just what the samples cover
        x: spec.from && spec.to
          ? { time: true, range: function () { var c = current(); return [c.from, c.to]; } }
          : { time: true },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } },
      },
      axes: [
        {
          stroke: "#475569", grid: { stroke: "#eef2f7", width: 1 }, ticks: { stroke: "#e5e7eb" },
          values: function (u, vals, axis, space, incr) {
            return vals.map(function (v) { return timeLabel(v, incr); });
          },
        },
        yAxis,
      ],
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
    };
  }

  function lagData(spec) {
    var data = [spec.t || []];
    Object.keys(spec.series || {}).forEach(function (name) { data.push(spec.series[name]); });
    return data;
  }

  function sparkOptions(el, unit) {
    return {
      width: widthOf(el),
      height: SPARK_HEIGHT,
      pxAlign: false,
      series: [{}, { stroke: "#1d4ed8", fill: "rgba(29, 78, 216, 0.12)", width: 1.25,
                     points: { show: false } }],
      scales: { x: { time: true }, y: { range: function (u, min, max) {
        return [0, max > 0 ? max : 1];
      } } },
      axes: [{ show: false }, { show: false }],
      legend: { show: false },
      cursor: { show: false },
      select: { show: false },
    };
  }

  // What an element's attributes say to draw: {kind, data, names, spec} or null (too few points).
  function specOf(el) {
    var kind = el.getAttribute("data-chart");
    if (kind === "lag") {
      var spec = parse(el, "data-series");
      if (!spec || !spec.t || spec.t.length < 2) return null;
      return { kind: kind, data: lagData(spec), names: Object.keys(spec.series || {}).join("\n"),
               spec: spec };
    }
    if (kind === "spark") {
      var xs = parse(el, "data-x"), ys = parse(el, "data-y");
      if (!xs || !ys || xs.length < 2 || xs.length !== ys.length) return null;
      return { kind: kind, data: [xs, ys], names: "", spec: null };
    }
    return null;
  }

  function sparkTitle(el, ys) {
    var unit = el.getAttribute("data-unit") || "";
    el.title = "now " + formatNumber(ys[ys.length - 1]) + (unit ? " " + unit : "");
  }

  function draw(el) {
    if (charts.has(el) || typeof uPlot === "undefined") return;
    var want = specOf(el);
    if (!want) return;
    var chart = { kind: want.kind, names: want.names, spec: want.spec };
    var opts;
    if (want.kind === "lag") {
      opts = lagOptions(el, want.spec, function () { return chart.spec; });
    } else {
      opts = sparkOptions(el, el.getAttribute("data-unit") || "");
      if (!el.title) sparkTitle(el, want.data[1]);
    }
    var plot = new uPlot(opts, want.data, el);
    var observer = new ResizeObserver(function () {
      var w = widthOf(el);
      if (w !== plot.width) plot.setSize({ width: w, height: plot.height });
    });
    observer.observe(el);
    chart.plot = plot;
    chart.observer = observer;
    charts.set(el, chart);
  }

  // Whether the drawn chart `el` can show what `incoming` (its counterpart in a pushed region)
  // says in place: not for another kind of chart, other series, or too few points.
  function accepts(el, incoming) {
    var chart = charts.get(el);
    var want = specOf(incoming);
    return !!(chart && want && want.kind === chart.kind && want.names === chart.names);
  }

  // Give the drawn chart `el` what `incoming` shows: its attributes and its data, in place.
  // False when it cannot (see accepts): then the incoming element is drawn anew.
  function update(el, incoming) {
    if (!accepts(el, incoming)) return false;
    var chart = charts.get(el);
    var want = specOf(incoming);
    var changed = false;
    Array.prototype.forEach.call(incoming.attributes, function (a) {
      if (el.getAttribute(a.name) !== a.value) {
        el.setAttribute(a.name, a.value);
        changed = true;
      }
    });
    if (changed) {
      chart.spec = want.spec;
      chart.plot.setData(want.data);
      if (want.kind === "spark") sparkTitle(el, want.data[1]);
    }
    return true;
  }

  // Where a chart sits in a region: the nearest row or region that names itself, and its
  // place among that one's charts ("data-stream=ORDERS#1"). The same in the old region and
  // in the pushed one.
  function keyOf(el, root) {
    var owner = el.parentElement;
    while (owner && owner !== root && !IDENTITY.some(function (a) { return owner.hasAttribute(a); })) {
      owner = owner.parentElement;
    }
    owner = owner || root;
    var name = IDENTITY.find(function (a) { return owner.hasAttribute(a); });
    var index = Array.prototype.indexOf.call(owner.querySelectorAll("[data-chart]"), el);
    return (name ? name + "=" + owner.getAttribute(name) : "") + "#" + index;
  }

  // Before a pushed region replaces `target` (live.js calls it): each drawn chart in it is
  // updated in place and moved into the incoming HTML instead of its counterpart, so the swap
  // keeps it.
  function keepCharts(target, incomingRoot) {
    var kept = new Map();
    target.querySelectorAll("[data-chart]").forEach(function (el) {
      if (charts.has(el)) kept.set(keyOf(el, target), el);
    });
    if (!kept.size) return;
    incomingRoot.querySelectorAll("[data-chart]").forEach(function (incoming) {
      var key = keyOf(incoming, incomingRoot);
      var el = kept.get(key);
      if (el && update(el, incoming)) {
        kept.delete(key);
        incoming.replaceWith(el);
      }
    });
  }

  function destroy(el) {
    var chart = charts.get(el);
    if (!chart) return;
    chart.observer.disconnect();
    chart.plot.destroy();
    charts.delete(el);
  }

  function sweep() {
    charts.forEach(function (chart, el) { if (!el.isConnected) destroy(el); });
  }

  function drawWithin(root) {
    sweep();
    if (!root || !root.querySelectorAll) return;
    if (root.matches && root.matches("[data-chart]")) draw(root);
    root.querySelectorAll("[data-chart]").forEach(draw);
  }

  // htmx removes an element: its chart goes with it (descendants get the event too).
  document.addEventListener("htmx:beforeCleanupElement", function (evt) {
    if (charts.has(evt.target)) destroy(evt.target);
  });
  document.addEventListener("htmx:load", function (evt) {
    drawWithin((evt.detail && evt.detail.elt) || evt.target);
  });
  // A pushed chart region for another range than the one shown is not swapped in: the page
  // watches its range's topic, and the range control swaps in a socket for the new range, but
  // a push of the old one may still be on its way.
  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    var target = evt.detail && evt.detail.target;
    var fragment = evt.detail && evt.detail.fragment;
    if (!target || !fragment) return;
    var incoming = fragment.firstElementChild;
    if (!incoming) return;
    if (target.hasAttribute("data-range") &&
        incoming.getAttribute("data-range") !== target.getAttribute("data-range")) {
      evt.detail.shouldSwap = false;
    }
  });

  function start() { drawWithin(document.body); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }

  // For tests and the console: how many charts are alive.
  window.flowscopeCharts = {
    count: function () { return charts.size; },
    redraw: start,
    data: function (el) { var c = charts.get(el); return c ? c.plot.data : null; },
    // the labels of a chart's axes as last drawn (uPlot draws them on the canvas)
    labels: function (el) {
      var c = charts.get(el);
      return c ? c.plot.axes.map(function (a) { return a._values || []; }) : null;
    },
    // for live.js, which patches a pushed region in place or, when it cannot, keeps its charts
    tickLabels: tickLabels,
    accepts: accepts,
    update: update,
    keep: keepCharts,
  };
})();
