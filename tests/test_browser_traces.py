"""An event journey in chromium, at 1280 and 390 px: the waterfall's rows in time order with
their dots placed on the time axis by static/js/trace.js, the services graph drawn by Cytoscape +
dagre, markup from the wire shown as text, no console error (the CSP refuses inline script and
style), and a click through to an event. Real tap, nats-server, PostgreSQL and Daphne."""

from __future__ import annotations

import pytest

from tests.conftest import ARTIFACTS
from tests.taputil import in_thread
from tests.test_browser_streams import _log_in
from tests.test_traces import MARKUP_SERVICE, TRACE, Flow, record_flow
from tests.webutil import no_page_overflow, wait_js

pytestmark = pytest.mark.browser


def test_the_journey_page_draws_the_waterfall_and_graph_and_opens_an_event(
    web, page, alice, nats_server, database_url, unique
):
    flows: list[Flow] = []

    async def record() -> None:
        flows.append(await record_flow(nats_server.url, database_url, unique))

    in_thread(record())
    flow = flows[0]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # errors, and warnings too (the graph library warned of its settings on every load)
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    _log_in(page, web, alice)
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"{web}/traces/{TRACE}/"
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        wait_js(page, "window.flowscopeTrace && window.flowscopeTrace.cy")
        # the graph: one node per service, drawn on canvas, edges as the waterfall's "follows"
        assert page.locator("#trace-graph canvas").count() > 0
        nodes = page.evaluate("window.flowscopeTrace.cy.nodes().map(n => n.id())")
        assert sorted(nodes) == sorted(
            f"svc:{s}" for s in ("orders", "inventory", "payments", MARKUP_SERVICE)
        )
        assert page.evaluate("window.flowscopeTrace.cy.edges().length") == 4
        overlaps = page.evaluate(
            "(() => { const n = window.flowscopeTrace.cy.nodes().map(x => x.renderedBoundingBox());"
            " let c = 0; for (let i = 0; i < n.length; i++) for (let j = i + 1; j < n.length; j++)"
            " if (n[i].x1 < n[j].x2 && n[j].x1 < n[i].x2 && n[i].y1 < n[j].y2 && n[j].y1 < n[i].y2)"
            " c++; return c; })()"
        )
        assert overlaps == 0  # laid out by dagre, not piled at one point
        # the waterfall: rows in time order, each dot further right than the one before
        rows = page.locator("#waterfall tr.step")
        assert rows.count() == 6
        assert [rows.nth(i).get_attribute("data-index") for i in range(6)] == [
            str(i) for i in range(1, 7)
        ]
        lefts = page.evaluate(
            "[...document.querySelectorAll('#waterfall .wf-dot')]"
            ".map(d => d.getBoundingClientRect().left)"
        )
        assert lefts == sorted(lefts) and lefts[-1] > lefts[0] + 50, lefts
        bars = page.evaluate(
            "[...document.querySelectorAll('#waterfall .wf-bar')].map(b => b.style.width)"
        )
        assert len(bars) == 4 and all(w.endswith("%") for w in bars)  # rows 2, 3, 4 and 6
        # markup from the wire is text
        assert page.locator(f"#waterfall tr.step >> text={MARKUP_SERVICE}").count() == 1
        assert page.locator("#waterfall img, #waterfall b").count() == 0
        no_page_overflow(page)
        for table in ("#services", "#waterfall"):  # both fit their box: nothing hidden aside
            fits = page.evaluate(
                "(sel) => { const b = document.querySelector(sel).closest('.table-scroll');"
                " return b.scrollWidth <= b.clientWidth; }",
                table,
            )
            assert fits, (table, width)
        page.screenshot(path=str(ARTIFACTS / f"trace_page_{width}.png"), full_page=True)

    # clicking a service in the graph goes to its first event's row
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url)
    wait_js(page, "window.flowscopeTrace && window.flowscopeTrace.cy")
    page.evaluate("window.flowscopeTrace.cy.getElementById('svc:payments').emit('tap')")
    wait_js(page, "window.location.hash === '#step-3'")
    # and an event's subject opens the event, whose trace links back here
    page.locator("#step-2 a.subject").click()
    page.wait_for_url(f"{web}/events/{flow.inventory}/1/")
    assert page.locator("#trace-link").get_attribute("href") == f"/traces/{TRACE}/"
    page.locator("#trace-link").click()
    page.wait_for_url(url)
    # the search box on the page takes a pasted traceparent
    page.fill("#trace-search-input", f"00-{TRACE.upper()}-00f067aa0ba902b7-01")
    page.locator("#trace-search button[type=submit]").click()
    page.wait_for_url(url)
    assert not errors, errors
    page.fill("#trace-search-input", "not a trace")  # a 400 page: chromium logs its status
    page.locator("#trace-search button[type=submit]").click()
    assert "32 hexadecimal characters" in page.locator("#trace-error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "trace_page_bad_id.png"), full_page=True)
    assert [e for e in errors if "status of 400" not in e] == []
