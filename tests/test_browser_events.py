"""The event browser in chromium: a search from the form, and the live tail (an event published
in the test shows within 2 s, markup as text; pause holds rows back; arrivals beyond what a push
carries are counted as skipped, with a link to them). Real tap process, nats-server, PostgreSQL,
Daphne."""

from __future__ import annotations

import time
from pathlib import Path

import nats
import pytest

from tests.taputil import in_thread, tap_process
from tests.test_browser_live import _wait
from tests.test_browser_streams import _log_in
from tests.webutil import cards_fit, tables_not_cards

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


async def _publish(url: str, stream: str, subjects: list[str], create: bool = False) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    if create:
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    for i, subject in enumerate(subjects):
        await js.publish(subject, f'{{"n": {i}, "note": "<i>hi</i>"}}'.encode())
    await nc.close()


def _tail_subjects(page) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#tail-rows tr td.subject", "els => els.map(e => e.textContent)"
    )


def test_the_live_tail_shows_new_events_as_text_and_can_pause(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    stream = f"TAIL_{unique}"
    base = stream.lower()
    in_thread(_publish(nats_server.url, stream, [f"{base}.old"], create=True))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, alice)
        page.goto(f"{web}/events/?stream={stream}")
        _wait(lambda: (page.reload(), page.locator("#event-table tbody tr").count() == 1)[1], 30,
              "the first event recorded")  # fmt: skip
        page.check("#live-tail")
        assert "live=1" in page.url
        _wait(
            lambda: _tail_subjects(page) == [f"{base}.old"], 10, "the tail starts with the newest"
        )
        in_thread(_publish(nats_server.url, stream, [f"{base}.<b>new</b>"]))
        published = time.monotonic()
        _wait(lambda: len(_tail_subjects(page)) == 2, 5, "the new event in the tail")
        shown_after = time.monotonic() - published
        assert _tail_subjects(page)[0] == f"{base}.<b>new</b>"  # on top, as text
        assert page.locator("#tail-rows b").count() == 0
        print(f"publish to tail: {shown_after * 1000:.0f} ms")
        assert shown_after < 2.0

        page.click("#tail-pause")
        in_thread(_publish(nats_server.url, stream, [f"{base}.while.paused"]))
        time.sleep(1.5)
        assert len(_tail_subjects(page)) == 2, "a paused tail took rows in"
        page.click("#tail-pause")
        _wait(lambda: len(_tail_subjects(page)) == 3, 5, "resumed: the held row comes in")

        # more than a push carries (50) at once: the rest are counted and linked
        in_thread(_publish(nats_server.url, stream, [f"{base}.burst.{i}" for i in range(120)]))

        def accounted() -> int:  # rows shown + skipped, of the burst
            link = page.locator("#tail-skipped")
            skipped = int(link.inner_text().split()[0]) if link.count() else 0
            return len(_tail_subjects(page)) - 3 + skipped

        _wait(lambda: accounted() == 120, 10, "every event of the burst shown or counted")
        assert page.locator("#tail-skipped").count() == 1, "more arrived than a push carries"
        time.sleep(1)
        assert accounted() == 120  # and none counted twice
        link = page.get_attribute("#tail-skipped", "href")
        assert link and f"stream={stream}" in link and "since=" in link
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "events-tail.png"), full_page=True)

        page.uncheck("#live-tail")
        assert page.locator("#results").is_visible() and "live=1" not in page.url
    finally:
        tap.terminate()
        tap.wait(30)


def test_a_search_from_the_form_keeps_the_filter_in_the_url(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    stream = f"FORM_{unique}"
    base = stream.lower()
    subjects = [f"{base}.eu.created", f"{base}.us.created", f"{base}.eu.paid"]
    in_thread(_publish(nats_server.url, stream, subjects, create=True))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, alice)
        page.goto(f"{web}/events/")
        _wait(lambda: (page.reload(), page.locator("#event-table tbody tr").count() == 3)[1], 30,
              "three events recorded")  # fmt: skip
        page.fill('input[name="subject"]', f"{base}.*.created")
        page.click("#filters button[type=submit]")
        page.wait_for_load_state()
        assert "subject=" in page.url
        got = page.eval_on_selector_all(
            "#event-table td.subject", "els => els.map(e => e.textContent)"
        )
        assert got == [f"{base}.us.created", f"{base}.eu.created"]
        page.fill('input[name="subject"]', f"{base}.>.x")
        page.click("#filters button[type=submit]")
        assert "only be the last token" in page.inner_text("#filter-error")
        page.go_back()
        assert page.eval_on_selector_all("#event-table td.subject", "els => els.length") == 2
        # times are the reader's: chromium in Kolkata sees IST (+05:30), ISO on hover
        kolkata = page.context.browser.new_context(timezone_id="Asia/Kolkata")
        try:
            other = kolkata.new_page()
            _log_in(other, web, alice)
            other.goto(page.url)
            cell = other.locator("#event-table time").first
            iso = cell.get_attribute("datetime")
            assert iso and iso.endswith("+00:00")  # the server's zone, UTC
            from datetime import datetime, timedelta, timezone

            shown = datetime.fromisoformat(iso).astimezone(timezone(timedelta(hours=5, minutes=30)))
            assert cell.inner_text() in (
                shown.strftime("%Y-%m-%d %H:%M:%S GMT+5:30"),
                shown.strftime("%Y-%m-%d %H:%M:%S IST"),
            ), cell.inner_text()
            assert cell.get_attribute("title") == iso
        finally:
            kolkata.close()
        # a row with a long subject and payload (as the demo's are) still fits 1280 px: the
        # payload takes the width left and ends in an ellipsis
        page.evaluate("""() => {
          const row = document.querySelector('#event-table tbody tr').cloneNode(true);
          row.querySelector('td.subject').textContent = 'orders.' + 'abcdef0123456789'.repeat(3);
          row.querySelector('td.preview').textContent = '{"order_id": 1, ' + 'x'.repeat(3000);
          document.querySelector('#event-table tbody').prepend(row);
        }""")
        box = page.evaluate("""() => { const t = document.querySelector('#event-table');
          const b = t.closest('.table-scroll') || t.parentElement;
          return [b.scrollWidth, b.clientWidth]; }""")
        assert box[0] <= box[1], f"the events table is {box[0]} px wide in a {box[1]} px box"
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 900})
            page.screenshot(path=str(ARTIFACTS / f"events-{width}.png"), full_page=True)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page scrolls sideways at {width} px"
            if width == 390:  # each event a card: subject and payload on lines of their own
                cards_fit(page, at_least=8)
            else:
                tables_not_cards(page)
    finally:
        tap.terminate()
        tap.wait(30)
