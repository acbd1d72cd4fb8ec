"""The topology graph in chromium: it draws, keeps node positions when the data element is
swapped with one more node, filters its list, and a click on a stream opens the stream's page.
Real tap, nats-server, PostgreSQL, Daphne."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ARTIFACTS
from tests.taputil import in_thread
from tests.test_browser_streams import _log_in
from tests.test_topology_page import _flow
from tests.webutil import cards_fit, no_page_overflow, tables_not_cards, wait_js

pytestmark = pytest.mark.browser

# What the websocket transport will do: replace #topology-data out of band. Until it lands,
# the test does the same swap by hand and fires the event htmx 2 fires after an OOB swap.
SWAP = """(extra) => {
  const old = document.getElementById("topology-data");
  const data = JSON.parse(old.textContent);
  data.nodes.push(...extra.nodes);
  data.edges.push(...extra.edges);
  const el = document.createElement("script");
  el.type = "application/json";
  el.id = "topology-data";
  el.textContent = JSON.stringify(data);
  old.replaceWith(el);
  el.dispatchEvent(new CustomEvent("htmx:oobAfterSwap", {bubbles: true}));
}"""


REMOVE_PUBLISHERS = """() => {
  const el = document.getElementById("topology-data");
  const d = JSON.parse(el.textContent);
  d.nodes = d.nodes.filter(n => n.data.kind !== "publisher");
  d.edges = d.edges.filter(e => !e.data.source.startsWith("publisher:"));
  el.textContent = JSON.stringify(d);
  el.dispatchEvent(new CustomEvent("htmx:oobAfterSwap", {bubbles: true}));
}"""


# Each kind's mean y on the graph: the ranks' order down the page
RANKS = """() => {
  const out = {}, n = {};
  window.flowscopeTopology.cy.nodes().forEach(node => {
    const k = node.data("kind");
    out[k] = (out[k] || 0) + node.position().y;
    n[k] = (n[k] || 0) + 1;
  });
  for (const k in out) out[k] /= n[k];
  return out;
}"""


def test_the_graph_draws_keeps_positions_on_update_and_opens_pages(
    web, page, alice, nats_server, database_url, unique
):
    u = unique
    in_thread(_flow(nats_server.url, database_url, u))
    said: list[str] = []  # the console's warnings and errors, the page's uncaught errors
    page.on("console", lambda m: said.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: said.append(str(exc)))
    _log_in(page, web, alice)
    page.goto(web + "/topology/")
    wait_js(page, "window.flowscopeTopology && window.flowscopeTopology.cy.nodes().length > 0")
    assert said == []
    assert page.locator("#topology-graph canvas").count() > 0
    listed = page.locator("#topology-list li.topo-node").count()
    drawn = page.evaluate("window.flowscopeTopology.cy.nodes().length")
    assert drawn == listed >= 8
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "topology-1280.png"), full_page=True)

    before = page.evaluate("window.flowscopeTopology.positions()")
    stream_id = f"stream:F{u}_ORDERS"
    new = {
        "id": f"stream:NEW_{u}",
        "kind": "stream",
        "label": f"NEW_{u}",
        "detail": "",
        "url": f"/streams/NEW_{u}/",
        "health": "ok",
        "health_text": "",
    }
    subject = f"subject:flow{u}.orders.>"
    edge = {"id": f"{subject}->{new['id']}", "source": subject, "target": new["id"], "label": "1/s"}
    extra = {"nodes": [{"data": new}], "edges": [{"data": edge}]}
    page.evaluate(SWAP, extra)
    wait_js(page, f"window.flowscopeTopology.cy.getElementById({json.dumps(new['id'])}).nonempty()")
    after = page.evaluate("window.flowscopeTopology.positions()")
    assert set(after) == set(before) | {new["id"]}
    for node, pos in before.items():
        assert after[node] == pytest.approx(pos, abs=0.01), node
    # the new node sits right of its subject, clear of every other node
    placed = after[new["id"]]
    assert placed["x"] > after[subject]["x"]
    boxes = page.evaluate(
        """(id) => window.flowscopeTopology.cy.nodes().filter(n => n.id() !== id)
        .map(n => n.boundingBox())""",
        new["id"],
    )
    mine = page.evaluate(
        f"window.flowscopeTopology.cy.getElementById({json.dumps(new['id'])}).boundingBox()"
    )
    for b in boxes:
        assert (
            mine["x2"] < b["x1"]
            or mine["x1"] > b["x2"]
            or mine["y2"] < b["y1"]
            or mine["y1"] > b["y2"]
        )
    # a vanished node goes, the others stay put
    page.evaluate(REMOVE_PUBLISHERS)
    wait_js(page, "window.flowscopeTopology.cy.nodes('[kind = \"publisher\"]').length === 0")
    assert page.evaluate("window.flowscopeTopology.positions()")[stream_id] == pytest.approx(
        before[stream_id]
    )

    # the list filters
    page.fill("#topology-filter", "billing")
    visible = page.locator("#topology-list li.topo-node:visible")
    assert 1 <= visible.count() < listed
    assert all("billing" in t for t in visible.all_inner_texts())
    page.fill("#topology-filter", "")

    # clicking the stream node opens its page
    point = page.evaluate(
        f"window.flowscopeTopology.cy.getElementById({json.dumps(stream_id)}).renderedPosition()"
    )
    box = page.locator("#topology-graph").bounding_box()
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_url(f"{web}/streams/F{u}_ORDERS/")


def test_the_page_fits_a_phone(web, page, alice, nats_server, database_url, unique):
    in_thread(_flow(nats_server.url, database_url, unique))
    page.set_viewport_size({"width": 390, "height": 844})
    _log_in(page, web, alice)
    page.goto(web + "/topology/")
    wait_js(page, "window.flowscopeTopology && window.flowscopeTopology.cy.nodes().length > 0")
    # the page's own content fits (the top bar is base.html's, fixed with issue #12's header)
    widths = page.evaluate("""() => [...document.querySelectorAll('.topology, .topology *')]
        .map(e => e.getBoundingClientRect().right)""")
    assert max(widths) <= 390
    assert page.locator("#topology-list").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "topology-390.png"), full_page=True)
    # the graph's ranks go top to bottom on a phone, at a size one can read
    topology = "window.flowscopeTopology"
    assert page.evaluate(f"{topology}.rankDir") == "TB"
    ranks = page.evaluate(RANKS)
    kinds = ["publisher", "subject", "stream", "consumer"]  # (a micro service answers a subject)
    assert [ranks[k] for k in kinds] == sorted(ranks[k] for k in kinds)
    zoom = page.evaluate(f"{topology}.cy.zoom()")
    assert zoom >= 0.8, f"drawn at {zoom:.2f} of its size"  # its labels readable, panned
    # "Show all" fits the whole graph in its box
    page.click("#topology-fit")
    inside = page.evaluate(f"""() => {{
        const cy = {topology}.cy, bb = cy.elements().renderedBoundingBox();
        return bb.x1 >= 0 && bb.y1 >= 0 && bb.x2 <= cy.width() && bb.y2 <= cy.height(); }}""")
    assert inside and page.evaluate(f"{topology}.cy.zoom()") < zoom
    # a new node goes below its subject, the others stay put
    before = page.evaluate(f"{topology}.positions()")
    subject = f"subject:flow{unique}.orders.>"
    new = {"id": f"stream:NEW_{unique}", "kind": "stream", "label": f"NEW_{unique}",
           "detail": "", "url": "", "health": "ok", "health_text": ""}  # fmt: skip
    edge = {"id": f"{subject}->{new['id']}", "source": subject, "target": new["id"], "label": ""}
    page.evaluate(SWAP, {"nodes": [{"data": new}], "edges": [{"data": edge}]})
    wait_js(page, f"{topology}.cy.getElementById({json.dumps(new['id'])}).nonempty()")
    after = page.evaluate(f"{topology}.positions()")
    assert all(after[n] == pytest.approx(p, abs=0.01) for n, p in before.items())
    assert after[new["id"]]["y"] > after[subject]["y"]
    # wider than a phone: left to right again
    page.set_viewport_size({"width": 1280, "height": 844})
    wait_js(page, f"{topology}.rankDir === 'LR'")
    ranks = page.evaluate(RANKS.replace(".y", ".x"))
    assert [ranks[k] for k in kinds] == sorted(ranks[k] for k in kinds)
    page.set_viewport_size({"width": 390, "height": 844})
    wait_js(page, f"{topology}.rankDir === 'TB'")  # (its resize handler has run)
    no_page_overflow(page)  # and the whole page, the top bar's navigation in view
    page.goto(web + "/")  # the overview: its tables' rows are cards, every figure in view
    page.wait_for_selector("#streams-section")
    no_page_overflow(page)
    cards_fit(page, at_least=10)
    page.screenshot(path=str(ARTIFACTS / "overview-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 844})
    tables_not_cards(page)
