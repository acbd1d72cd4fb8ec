"""Dead letters, live, in a real browser (issues #15.4, #12.4, #12.7): with /dead-letters/ open, a
new dead letter appears at the top without a reload and a ticked box stays ticked; a status
change shows in its row; the overview's and the topology's counts move without a reload;
markup in names stays text. Real tap process, nats-server, PostgreSQL, Daphne and chromium; the
dead letters are made by a consumer that naks until max deliveries."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import nats
import pytest

from dashboard.models import DeadLetter
from eventbus.deadletters import (
    ADVISORY_CONSUMER,
    ADVISORY_STREAM,
    deadletters_changed_digest,
    deadletters_digest,
)
from tests.conftest import ARTIFACTS
from tests.taputil import eventually, in_thread, tap_process
from tests.test_browser_live import _wait
from tests.test_browser_streams import _log_in
from tests.test_deadletters_live import EVIL_CONSUMER, SUBJECT, nak_until_dead, naking_consumer
from tests.webutil import cards_fit

pytestmark = pytest.mark.browser


async def _dead(url: str, db_url: str, stream: str, subject: str, total: int, create: bool) -> None:
    """One more message that its consumer gives up on, until `stream` has `total` dead
    letters (the stream and its naking consumer made first if `create`)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    if create:
        await naking_consumer(js, stream, subject)
    await eventually(lambda: _capturing(js), what="the tap reads advisories")
    await js.publish(f"{subject}.poison", f"poison {total}".encode())
    await nak_until_dead(js, stream, "worker", total, db_url)
    await nc.close()


async def _capturing(js: Any) -> bool:
    """The tap's advisory consumer is pulling (an advisory sent before is lost)."""
    try:
        info = await js.consumer_info(ADVISORY_STREAM, ADVISORY_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return bool(info.num_waiting)


async def _setup(url: str, stream: str, subject: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await naking_consumer(js, stream, subject)
    await nc.close()


async def _announce(url: str, body: bytes) -> None:
    nc = await nats.connect(url)
    await nc.publish(SUBJECT, body)
    await nc.flush()
    await nc.close()


def _rows(page: Any) -> list[str]:
    ids = page.eval_on_selector_all(
        "#dead-letters tbody tr[data-id]", "rows => rows.map(r => r.dataset.id)"
    )
    return [str(i) for i in ids]


def _waiting(page: Any, stream: str) -> str:
    cell = page.locator(f'#waiting tr[data-stream="{stream}"] td.count')
    return str(cell.first.inner_text()) if cell.count() else ""


def _shoot(page: Any, name: str) -> None:
    """The page as it is at 1280 px, then loaded anew at 390 px (laid out for that width)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_timeout(1500)  # live, charts and graph drawn
    cards_fit(page, at_least=8 if name == "dead-letters" else 0)  # rows as cards, all in view
    if name == "dead-letters":  # the header's "select all shown" box stays, above the cards
        box = page.locator("#dead-letters thead input.pick-all").bounding_box()
        assert box is not None and 0 < box["width"] < 40 and box["x"] + box["width"] <= 390
        # brought into the window: what is drawn at its centre is the box (not clipped away)
        hit = page.evaluate("""async () => {
            const box = () => document.querySelector('#dead-letters thead input.pick-all');
            box().scrollIntoView({block: 'center'});
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            const r = box().getBoundingClientRect();
            return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)
                ?.classList.contains('pick-all'); }""")
        assert hit, "the select-all box is not in view on a phone"
    page.screenshot(path=str(ARTIFACTS / f"{name}-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_a_new_dead_letter_appears_on_the_open_list_and_ticked_boxes_stay_ticked(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    stream, subject = f"DLB_{unique}", f"dlb.{unique}"
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    try:
        in_thread(_dead(nats_server.url, database_url, stream, subject, 1, create=True))
        _log_in(page, web, alice)
        page.goto(f"{web}/dead-letters/?stream={stream}")
        page.evaluate("window.__sameDocument = true")
        _wait(lambda: page.locator("#live-status").get_attribute("data-state") == "live", 10,
              "the list is live")  # fmt: skip
        (first,) = _rows(page)
        box = f'#dead-letters tr[data-id="{first}"] input.pick'
        page.check(box)
        assert _waiting(page, stream) == "1"

        in_thread(_dead(nats_server.url, database_url, stream, subject, 2, create=False))
        _wait(lambda: len(_rows(page)) == 2, 15, "the new dead letter shows")
        second = _rows(page)[0]
        assert second != first  # the newest on top, the first one below it
        assert page.is_checked(box), "a live update cleared the ticked box"
        assert page.evaluate("document.querySelector('.pick-all').indeterminate") is True
        _wait(lambda: _waiting(page, stream) == "2", 10, "the count of new ones moves")

        # the first is replayed (as the lead's replay will do: the row, then the digest)
        DeadLetter.objects.filter(pk=int(first)).update(status=DeadLetter.Status.REPLAYED)
        body = deadletters_changed_digest(Counter({(stream, "worker", "replayed"): 1}))
        in_thread(_announce(nats_server.url, body))
        status = f'#dead-letters tr[data-id="{first}"] td.status'
        _wait(lambda: page.inner_text(status) == "replayed", 10, "the status cell changes")
        assert page.is_checked(box)
        _wait(lambda: _waiting(page, stream) == "1", 10, "one new one left")
        page.check("#dead-letters .pick-all")
        ticked = "boxes => boxes.map(b => b.checked)"
        assert page.eval_on_selector_all("#dead-letters input.pick", ticked) == [True, True]

        # a name that is markup arrives live: shown as text, nothing runs
        newest = DeadLetter.objects.get(pk=int(second))
        evil = DeadLetter.objects.create(
            stream_name=stream, seq=999, consumer=EVIL_CONSUMER,
            subject='<img src=x onerror="window.__xss=3">', reason=DeadLetter.Reason.TERMINATED,
            payload=b"", payload_source=DeadLetter.PayloadSource.GONE,
            died_at=newest.died_at, captured_at=newest.captured_at,
        )  # fmt: skip
        body = deadletters_digest(Counter({(stream, EVIL_CONSUMER, "terminated"): 1}))
        in_thread(_announce(nats_server.url, body))
        _wait(lambda: str(evil.id) in _rows(page), 10, "the markup row shows")
        row = page.locator(f'#dead-letters tr[data-id="{evil.id}"]')
        assert EVIL_CONSUMER in row.inner_text() and "<img src=x" in row.inner_text()
        assert page.locator("#dead-letters img, #dead-letters script").count() == 0
        assert page.evaluate("window.__xss") is None
        assert page.is_checked(box) and page.evaluate("window.__sameDocument") is True
        _shoot(page, "dead-letters")
    finally:
        tap.terminate()
        tap.wait(30)


def _cell(page: Any, selector: str) -> str:
    cell = page.locator(selector)
    return str(cell.first.inner_text()) if cell.count() else ""


def test_the_overview_and_the_topology_count_them_without_a_reload(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    stream, subject = f"DLO_{unique}", f"dlo.{unique}"
    in_thread(_setup(nats_server.url, stream, subject))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    stream_cell = f'#streams tr[data-stream="{stream}"] td[data-field="dead-letters"]'
    consumer_cell = f'#consumers tr[data-consumer="{stream}/worker"] td[data-field="dead-letters"]'
    try:
        _log_in(page, web, alice)
        page.evaluate("window.__sameDocument = true")
        _wait(lambda: _cell(page, consumer_cell) == "0", 30, "the consumer shows, none waiting")
        assert _cell(page, stream_cell) == "0"
        in_thread(_dead(nats_server.url, database_url, stream, subject, 1, create=False))
        recorded = time.monotonic()  # the dead letter's row is committed
        _wait(lambda: _cell(page, stream_cell) == "1", 15, "the stream's count moves")
        print(f"dead letter recorded to overview: {(time.monotonic() - recorded) * 1000:.0f} ms")
        _wait(lambda: _cell(page, consumer_cell) == "1", 10, "the consumer's count moves")
        assert page.evaluate("window.__sameDocument") is True, "the overview reloaded"
        link = page.locator(f"{consumer_cell} a").get_attribute("href")
        assert link == f"/dead-letters/?stream={stream}&consumer=worker&status=new"
        _shoot(page, "dead-letters-overview")

        page.goto(f"{web}/topology/")
        page.evaluate("window.__sameDocument = true")
        node = f"consumer:{stream}/worker"
        data = "id => window.flowscopeTopology?.cy.getElementById(id).data()"
        _wait(lambda: (page.evaluate(data, node) or {}).get("dead_letters") == 1, 30, "drawn")
        assert page.evaluate(data, node)["health"] == "dead"
        in_thread(_dead(nats_server.url, database_url, stream, subject, 2, create=False))
        _wait(lambda: page.evaluate(data, node)["dead_letters"] == 2, 20, "the graph's count moves")
        label = "(id) => window.flowscopeTopology.cy.getElementById(id).style('label')"
        assert page.evaluate(label, node) == "worker\n2 dead letters"
        item = page.locator(f'#topology-list li[data-node-id="{node}"]')
        _wait(lambda: "2 dead letters waiting" in item.inner_text(), 10, "the list's count moves")
        assert page.evaluate("window.__sameDocument") is True, "the topology reloaded"
        _shoot(page, "dead-letters-topology")

        page.goto(f"{web}/streams/{stream}/")
        assert page.inner_text("#dead-letters-waiting") == "2"
        _shoot(page, "dead-letters-stream")
        page.goto(f"{web}/streams/{stream}/consumers/worker/")
        assert page.inner_text("#dead-letters-waiting") == "2"
        _shoot(page, "dead-letters-consumer")
    finally:
        tap.terminate()
        tap.wait(30)
