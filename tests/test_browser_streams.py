"""What the tap recorded, as a user sees it: how each stream is observed, what that misses, and
the gaps. Real tap process, nats-server, PostgreSQL, Daphne and chromium."""

from __future__ import annotations

import signal
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from tests.taputil import in_thread, tap_process

pytestmark = pytest.mark.browser


async def _make_streams(url: str, unique: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    # A limits stream that keeps only 10: the first 20 of 30 are gone before the tap starts.
    await js.add_stream(StreamConfig(name=f"LIM_{unique}", subjects=[f"lim.{unique}"], max_msgs=10))
    for i in range(30):
        await js.publish(f"lim.{unique}", f"event {i}".encode())
    await js.add_stream(
        name=f"WQ_{unique}", subjects=[f"wq.{unique}"], retention=RetentionPolicy.WORK_QUEUE
    )
    await nc.close()


def _log_in(page, web: str, alice: tuple[str, str]) -> None:
    page.goto(web + "/login/")
    page.fill("#id_username", alice[0])
    page.fill("#id_password", alice[1])
    page.click("button[type=submit]")
    page.wait_for_url(web + "/")


def _wait_for_text(page, url: str, selector: str, text: str, timeout: float = 30) -> None:
    """Reload `url` until `selector` contains `text` (the tap writes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        loc = page.locator(selector)
        if loc.count() and text in loc.first.inner_text():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never showed {text!r}")
        time.sleep(0.5)


def test_stream_pages_say_how_each_stream_is_observed_and_show_gaps(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    in_thread(_make_streams(nats_server.url, unique))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, alice)
        _wait_for_text(page, web + "/", "#streams", f"WQ_{unique}")
        rows = {
            r.get_attribute("data-stream"): r.locator("td").all_inner_texts()
            for r in page.locator("#streams tbody tr").all()
        }
        lim, wq = rows[f"LIM_{unique}"], rows[f"WQ_{unique}"]
        assert lim[0] == f"LIM_{unique}\nlimits · ephemeral ack-none consumer"
        assert wq[0] == f"WQ_{unique}\nworkqueue · subject subscription"
        # the jargon links to its explanation on the stream's page
        how = page.locator(f'#streams tr[data-stream="LIM_{unique}"] a.how')
        assert how.get_attribute("href") == f"/streams/LIM_{unique}/#observation"
        assert "sampled every" in page.locator("#streams-legend").inner_text()

        _wait_for_text(page, f"{web}/streams/LIM_{unique}/", "#gaps", "20")
        gap = page.locator("#gaps tbody tr").first.locator("td").all_inner_texts()
        assert gap[:3] == ["1", "20", "20"]
        events = page.locator("#events tbody tr")
        assert events.count() == 10
        # the server's figures, with when it reported them (the lag sampler, every second here)
        _wait_for_text(page, f"{web}/streams/LIM_{unique}/", "#stream-state", "s ago")
        assert "10 msgs" in page.locator("#facts").inner_text()

        page.goto(f"{web}/streams/WQ_{unique}/")
        note = page.locator("#observation").inner_text()
        assert "subject subscription" in note
        assert "admit no second consumer" in note and "misses what was published" in note
        facts = page.locator("#facts").inner_text()
        assert "no stream sequences" in facts and "up to seq" not in facts
        assert "cannot be counted" in page.locator("main").inner_text()  # no "No gaps" claim
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.wait(30)


# Markup in everything from the wire that the pages show. NATS refuses ">" and white space in
# stream and consumer names, so those carry an unclosed tag, an entity and quotes; subjects and
# header values take whole elements. Rendered as markup, each would change its text (the entity
# decoded, the tag swallowed) and add an element.
def _wire_text(unique: str) -> dict[str, str]:
    return {
        "stream": f"ESC_{unique}_<i&amp;\"'",
        "consumer": "app_<i&amp;\"'",
        "subject": f"esc.{unique}.<b>bold</b>&amp;",
        "filter": f"esc.{unique}.>",
        "filter2": f"html.{unique}.<b>cfg</b>&amp;",
        "service": "<img src=x onerror=\"document.title='pwned'\">&amp;",
    }


async def _publish_markup(url: str, wire: dict[str, str]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=wire["stream"], subjects=[wire["filter"], wire["filter2"]])
    )
    await js.add_consumer(
        wire["stream"],
        ConsumerConfig(durable_name=wire["consumer"], ack_policy=AckPolicy.EXPLICIT),
    )
    for _ in range(3):
        await js.publish(
            wire["subject"],
            b"<script>document.title='pwned'</script><b>payload</b>",
            headers={"Flowscope-Service": wire["service"]},
        )
    await nc.close()


def test_names_subjects_and_services_from_the_wire_are_shown_as_text_never_markup(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    wire = _wire_text(unique)
    in_thread(_publish_markup(nats_server.url, wire))
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    wrong: list[str] = []

    def shows(where: str, loc, expected: str) -> None:
        """`loc` is one element whose text is exactly `expected` and that holds no element."""
        if loc.count() != 1:
            wrong.append(f"{where}: {loc.count()} matches")
        elif (text := loc.inner_text()) != expected:
            wrong.append(f"{where} shows {text!r}, not {expected!r}")
        elif n := loc.locator("*").count():
            wrong.append(f"{where} holds {n} element(s)")

    try:
        _log_in(page, web, alice)
        _wait_for_text(page, web + "/", "#consumers", f"ESC_{unique}")
        row = page.locator("#streams tbody tr").filter(has_text=f"ESC_{unique}")
        shows("overview: stream", row.locator("td a").first, wire["stream"])
        cells = page.locator("#consumers tbody tr").filter(has_text=f"ESC_{unique}").locator("td")
        shows("overview: consumer's stream", cells.nth(0).locator("a"), wire["stream"])
        shows("overview: consumer", cells.nth(1).locator("a"), wire["consumer"])

        row.locator("td a").first.click()  # its address carries the name too
        _wait_for_text(page, page.url, "#facts", "3 events")  # all recorded
        shows("stream page: heading", page.locator("h1 .mono"), wire["stream"])
        subjects = f"{wire['filter']}, {wire['filter2']}"
        shows("stream page: subjects", page.locator("#config dd.mono"), subjects)
        cells = page.locator("#events tbody tr").first.locator("td")
        shows("stream page: subject", cells.nth(2), wire["subject"])
        shows("stream page: service", cells.nth(3), wire["service"])
        shows("stream page: consumer", page.locator("#consumers tbody td a"), wire["consumer"])
        if page.title() != f"{wire['stream']} · Flowscope":
            wrong.append(f"stream page: title {page.title()!r}")
        assert not wrong, "\n".join(wrong)
        assert page.locator("#events tbody tr").count() == 3
        assert page.locator("main b, main i, main img, main script").count() == 0
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.wait(30)
