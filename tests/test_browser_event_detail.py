"""The event page in chromium, at 1280 and 390 px: JSON highlighted by the vendored highlight.js,
the view tabs, the full payload loaded from the stream through htmx, the copy button. Real tap,
nats-server, PostgreSQL and Daphne."""

from __future__ import annotations

import json

import nats
import pytest
from nats.js.api import StreamConfig

from eventbus.observers import ObserverSettings
from tests.conftest import ARTIFACTS
from tests.taputil import eventually, in_thread, query, tap_running
from tests.test_browser_streams import _log_in
from tests.webutil import no_page_overflow, wait_js

pytestmark = pytest.mark.browser

ORDER = {"order": 4711, "customer": {"id": 42, "name": "<b>Ada</b>"}, "total": 12.5,
         "items": [{"sku": "A-1", "qty": 2}], "express": True, "note": None}  # fmt: skip


async def _record(nats_url: str, database_url: str, u: str) -> None:
    """EV_<u>: seq 1 a JSON order, seq 2 a 20 KiB JSON document (preview 4 KiB: truncated)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"EV_{u}", subjects=[f"ev.{u}.>"], allow_direct=True))
    observer = ObserverSettings(inactive_threshold=5.0, preview_bytes=4096)
    async with tap_running(nats_url, database_url, observer=observer) as tap:
        await eventually(lambda: _ready(tap, f"EV_{u}"), 30, "the tap watching the stream")
        await js.publish(f"ev.{u}.orders.created", json.dumps(ORDER).encode(),
                         headers={"Nats-Msg-Id": "order-4711", "X-Long": "v" * 300})  # fmt: skip
        big = {"rows": [{"i": i, "label": f"row number {i}"} for i in range(600)]}
        await js.publish(f"ev.{u}.audit", json.dumps(big).encode())

        async def done() -> bool:
            rows = await query(database_url, "SELECT count(*) FROM flowscope_event e JOIN "
                               "flowscope_stream s ON s.id = e.stream_id WHERE s.name = %s",
                               f"EV_{u}")  # fmt: skip
            return bool(rows[0][0] == 2)

        await eventually(done, 30, "both events recorded")
    await nc.close()


async def _ready(tap, name: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(name in tap.observers and tap.observers[name].ready.is_set())


def test_the_event_page_highlights_json_switches_views_and_loads_the_full_payload(
    web, page, alice, nats_server, database_url, unique
):
    u = unique
    in_thread(_record(nats_server.url, database_url, u))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _log_in(page, web, alice)
    url = f"{web}/events/EV_{u}/1/"
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        # highlight.js (loaded as modules from static/vendor) marks up keys, strings, numbers
        page.wait_for_selector("#view-json code[data-highlighted='yes'] .hljs-attr", timeout=10_000)
        assert page.locator("#view-json .hljs-attr").first.inner_text() == '"order"'
        assert page.locator("#view-json .hljs-number").first.inner_text() == "4711"
        assert page.locator("#view-json .hljs-literal").count() == 2  # true, null
        # the name from the payload is text inside a string token, not a <b> element
        assert page.locator("#view-json b").count() == 0
        assert '"<b>Ada</b>"' in page.locator("#view-json").inner_text()
        assert (
            page.locator("#view-json").is_visible() and not page.locator("#view-hex").is_visible()
        )
        no_page_overflow(page)
        page.screenshot(path=str(ARTIFACTS / f"event_page_{width}.png"), full_page=True)

        page.locator("#payload [data-view=hex]").click()
        assert (
            page.locator("#view-hex").is_visible() and not page.locator("#view-json").is_visible()
        )
        assert page.locator("#payload [data-view=hex]").get_attribute("aria-selected") == "true"
        assert page.url.endswith("?view=hex")  # a reload keeps the view
        assert "00000000  7b 22 6f 72 64 65 72 22" in page.locator("#view-hex").inner_text()
        no_page_overflow(page)  # the dump scrolls inside its own box
        page.screenshot(path=str(ARTIFACTS / f"event_page_hex_{width}.png"), full_page=True)
        page.locator("#payload [data-view=text]").click()
        assert (
            page.locator("#view-text").is_visible() and not page.locator("#view-hex").is_visible()
        )

    # copy as nats pub: the clipboard holds the command as shown
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url)
    page.locator("#nats-pub button[data-copy]").click()
    wait_js(page, "document.querySelector('#nats-pub button').textContent === 'Copied'")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#pub-command").inner_text()
    assert (
        copied.startswith("nats pub --no-templates -H ") and " -H Nats-Msg-Id:order-4711 " in copied
    )

    # a truncated preview: the full payload comes from the stream, highlighted like the first
    page.goto(f"{web}/events/EV_{u}/2/")
    assert "showing the first 4.0 KiB of" in page.locator("#payload-note").inner_text()
    assert page.locator("#payload").get_attribute("data-active") == "text"
    page.locator("#load-full").click()
    page.wait_for_selector("#payload[data-active='json'] code[data-highlighted='yes']")
    assert "loaded from the stream" in page.locator("#payload-note").inner_text()
    assert '"row number 599"' in page.locator("#view-json").inner_text()
    page.locator("#payload [data-view=hex]").click()  # the tabs work on the swapped region
    assert page.locator("#view-hex").is_visible()
    page.screenshot(path=str(ARTIFACTS / "event_page_full_payload.png"), full_page=True)
    assert not errors, errors
