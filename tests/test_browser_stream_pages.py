"""The stream and consumer pages in chromium, at 1280 and 390 px: charts drawn with uPlot, tables
scrolling in their own box, the range control through htmx, and live partials swapped in
out of band without leaking charts. Real tap, nats-server, PostgreSQL and Daphne."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from tests.conftest import ARTIFACTS
from tests.taputil import in_thread, tap_process
from tests.test_browser_streams import _log_in, _wait_for_text
from tests.webutil import cards_fit, no_page_overflow, wait_until

pytestmark = pytest.mark.browser
HTMX = Path(__file__).resolve().parent.parent / "static/vendor/htmx-2.0.11/htmx.min.js"


async def _setup(url: str, u: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"ORDERS_{u}", subjects=[f"orders.{u}.>"],
                                     max_age=7 * 86400.0, max_msgs=100_000))  # fmt: skip
    for name in ("billing", "shipping-with-a-long-name"):
        config = ConsumerConfig(
            durable_name=name, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=5
        )
        await js.add_consumer(f"ORDERS_{u}", config)
    await nc.close()


async def _traffic(url: str, u: str, stop: threading.Event) -> None:
    """Orders published, billing working off most of them: lag and ack floor move."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind("billing", f"ORDERS_{u}")
    i = 0
    while not stop.is_set():
        for region in ("eu", "us", "apac"):
            await js.publish(f"orders.{u}.{region}.created", f"order {i}".encode())
            i += 1
        try:
            for msg in await sub.fetch(2, timeout=0.5):
                await msg.ack()
        except nats.errors.TimeoutError:
            pass
        await asyncio.sleep(0.2)
    await nc.close()


def _choose_range(page, r: str) -> None:
    """Click a range link. Live pushes replace the chart region every second or so, and a
    click can land on the region just swapped out: then click again."""
    for _ in range(5):
        page.locator("#stream-lag nav a", has_text=r).first.click()
        try:
            page.wait_for_selector(f'#stream-lag[data-range="{r}"]', timeout=4000)
            return
        except Exception:
            continue
    raise AssertionError(f"the {r} range never showed")


def _charts_alive(page) -> tuple[int, int]:
    """(uPlot instances alive, chart elements in the document)."""
    alive, elements = page.evaluate(
        "[window.flowscopeCharts.count(), document.querySelectorAll('[data-chart]').length]"
    )
    return alive, elements


# A table box at 390 px: its hint before and after scrolling to its end, and the mask (the fade)
# while there was more to the right. The page's own tables are cards or barely wider than the
# phone (by a few pixels that live figures change), so the box is one of fixed markup added here,
# 1,200 px of table in the page's main column, marked by static/js/scroll.js as any other.
SCROLL_HINTS = """async () => {
    const frames = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const box = document.createElement('div');
    box.className = 'table-scroll';
    box.innerHTML = '<table class="data"><tr><td>wide</td></tr></table>';
    box.firstChild.style.width = '1200px';  // (through the CSSOM: the CSP refuses style="")
    document.querySelector('main').appendChild(box);
    window.flowscopeScroll.mark();
    await frames();
    const before = box.dataset.more, mask = getComputedStyle(box).maskImage;
    box.scrollLeft = box.scrollWidth;
    await frames();
    const after = box.dataset.more;
    box.remove();
    return [before, after, mask];
}"""


def test_stream_and_consumer_pages_draw_their_charts_at_1280_and_390_px(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    from dashboard.pages.streams import stream_live_html

    u = unique
    in_thread(_setup(nats_server.url, u))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    stop = threading.Event()
    traffic = threading.Thread(target=in_thread, args=(_traffic(nats_server.url, u, stop),))
    traffic.start()
    stream_url = f"{web}/streams/ORDERS_{u}/"
    consumer_url = f"{stream_url}consumers/billing/"
    try:
        _log_in(page, web, alice)
        time.sleep(6)  # a few lag samples (every second) in more than one 2 s bucket
        _wait_for_text(page, stream_url + "?range=15m", "#subjects", f"orders.{u}.eu.created")
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 900})
            for url, name in ((stream_url + "?range=15m", "stream"),
                              (consumer_url + "?range=15m", "consumer")):  # fmt: skip
                page.goto(url)
                page.wait_for_selector(".chart canvas", timeout=10_000)
                alive, elements = _charts_alive(page)
                assert alive == elements >= 1
                assert page.locator(".u-legend").count() == elements  # full charts: a legend
                no_page_overflow(page)
                if width == 1280 and name == "stream":
                    # axes as the rest of the pages write: 24-hour times; whole messages only
                    x, y = page.evaluate("""() => window.flowscopeCharts.labels(
                        document.querySelector('.chart[data-chart=lag]'))""")
                    assert x and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", v) for v in x), x
                    assert y and all(re.fullmatch(r"[\d,.]+( [kMG])?", v) for v in y), y
                    assert "." not in "".join(y), y  # no tick at 0.2 of a message
                    # the subjects get a row of their own in the configuration
                    share = page.evaluate("""() => {
                        const d = document.querySelector('#config > div.wide');
                        return d.getBoundingClientRect().width / d.parentElement.clientWidth; }""")
                    assert share > 0.9
                if width == 390 and name == "stream":
                    # consumers and events are cards, every figure in view; the rest scroll
                    # inside their own box (one query each: pushes replace them any moment)
                    cards_fit(page, at_least=10)
                    overflow = page.evaluate(
                        "getComputedStyle(document.querySelector('.table-scroll')).overflowX"
                    )
                    assert overflow == "auto"
                    # and say so: the edge with more of the table fades (static/js/scroll.js)
                    before, after, mask = page.evaluate(SCROLL_HINTS)
                    assert (before, after) == ("right", "left"), (before, after)
                    assert "gradient" in mask
                if width == 1280:  # a table that fits has no hint
                    assert page.locator(".table-scroll[data-more]").count() == 0
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"{name}_page_{width}.png"), full_page=True)
        consumer_text = page.locator("#consumer-state").inner_text()
        assert "pending + ack pending" in consumer_text and "msg/s" in consumer_text
        # the y axis tells small rates' ticks apart (the demo's ack rate read 0.1, 0.1, 0.1)
        ticks = "([vals, incr]) => window.flowscopeCharts.tickLabels(vals, incr)"
        small = page.evaluate(ticks, [[0, 0.05, 0.1, 0.15], 0.05])
        assert small == ["0.00", "0.05", "0.10", "0.15"]
        assert page.evaluate(ticks, [[0, 0.5, 1], 0.5]) == ["0.0", "0.5", "1.0"]
        assert page.evaluate(ticks, [[0, 2000, 4000], 2000]) == ["0", "2,000", "4,000"]

        # htmx (base.html will load it; here the test adds it): the range control swaps the
        # chart region, keeps the range in the address, and leaves no chart behind
        page.set_viewport_size({"width": 1280, "height": 900})
        sockets: list[tuple[Any, str, list[Any]]] = []  # websockets, and the frames each got

        def opened(ws: Any) -> None:
            frames: list[Any] = []
            sockets.append((ws, ws.url, frames))
            ws.on("framereceived", lambda frame: frames.append(frame))

        page.on("websocket", opened)
        page.goto(stream_url + "?range=15m")
        if not page.evaluate("!!window.htmx"):  # until base.html loads it
            page.add_script_tag(path=str(HTMX))
        assert _charts_alive(page) == (1, 1)

        # a live push (what the websocket transport sends): every region swapped out of band;
        # the chart region for the default range (1 h) is not swapped over the user's 15 min
        page.evaluate("document.getElementById('stream-events').dataset.old = 'yes'")
        html = stream_live_html(f"ORDERS_{u}")
        page.evaluate("html => htmx.swap(document.body, html, {swapStyle: 'none'})", html)
        assert page.locator("#stream-events").get_attribute("data-old") is None  # replaced
        assert page.locator("#stream-lag").get_attribute("data-range") == "15m"
        assert page.locator("[hx-swap-oob]").count() == 0
        assert _charts_alive(page) == (1, 1)

        _choose_range(page, "1h")
        assert page.url.endswith("?range=1h")
        # the chart of the range chosen stays live: the page swapped in a socket for it, which
        # gets pushes, and closed the one for 15 min
        ranged = lambda r: [(ws, f) for ws, url, f in sockets if unquote(url).endswith(":" + r)]  # noqa: E731
        pumped = lambda check: page.wait_for_timeout(100) or check()  # noqa: E731  # events
        wait_until(lambda: pumped(lambda: ranged("1h")), 10, "a socket for the 1h range")
        frames = ranged("1h")[0][1]
        wait_until(lambda: pumped(lambda: len(frames) >= 2), 15, "pushes on the 1h socket")
        assert ranged("15m") and all(ws.is_closed() for ws, _ in ranged("15m"))
        assert page.locator("[ws-connect]").count() == 1
        page.wait_for_selector("#stream-lag canvas")
        for _ in range(5):  # pushes of the range shown replace the chart; none leaks
            page.evaluate("html => htmx.swap(document.body, html, {swapStyle: 'none'})", html)
        page.wait_for_selector("#stream-lag canvas")
        assert _charts_alive(page) == (1, 1)
        assert page.locator("#stream-lag canvas").count() == 1
        _choose_range(page, "24h")
        alive, elements = _charts_alive(page)  # a few seconds of samples: maybe no chart yet
        assert alive == elements <= 1
    finally:
        stop.set()
        traffic.join(30)
        tap.send_signal(signal.SIGTERM)
        tap.wait(30)
