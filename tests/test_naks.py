"""Naks on a dead letter's page (issue #15.5): the server's MSG_NAKED advisories, captured by the
tap's advisory consumer into flowscope_nak once per (stream, seq, consumer, delivery), shown in
time order on /dead-letters/<id>/ (the "Deliveries" section) and in `GET /api/dead-letters/<id>`.
Real nats-server, real tap, real PostgreSQL; the screenshots in a real chromium."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import psycopg
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from dashboard.models import DeadLetter, Nak, Stream
from eventbus.deadletters import (
    ADVISORY_CONSUMER,
    ADVISORY_MAX_BYTES,
    ADVISORY_MAX_PER_SUBJECT,
    ADVISORY_STREAM,
    BadAdvisory,
    parse_advisory,
    parse_nak,
)
from tests.conftest import ARTIFACTS
from tests.htmltree import parse
from tests.taputil import eventually, in_thread, query, tap_running

# Captured from nats-server 2.15.1 (a limits stream, a consumer with MaxDeliver 3 whose
# application naks each delivery): the third nak comes just before the max-deliveries advisory.
NAK = (
    b'{"type":"io.nats.jetstream.advisory.v1.nak","id":"SCtytki7cjD3k7mR6Ic6q3",'
    b'"timestamp":"2026-12-02T18:21:20.832777135Z","stream":"WQ","consumer":"worker",'
    b'"consumer_seq":5,"stream_seq":1,"deliveries":3}'
)
NAKED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED"
NAKS = (
    "SELECT consumer, deliveries, ts FROM flowscope_nak WHERE stream_name = %s AND seq = %s "
    "ORDER BY ts"
)
ALL_NAKS = (
    "SELECT seq, consumer, deliveries, ts FROM flowscope_nak WHERE stream_name = %s "
    "ORDER BY seq, ts"
)
NO_GAP = "\N{EN DASH}"


def test_it_parses_the_servers_nak_advisory() -> None:
    n = parse_nak(NAK)
    assert (n.stream, n.seq, n.consumer, n.deliveries) == ("WQ", 1, "worker", 3)
    assert n.at == datetime(2026, 12, 2, 18, 21, 20, 832777, tzinfo=UTC)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    no_time = NAK.replace(b'"timestamp":"2026-12-02T18:21:20.832777135Z",', b"")
    assert parse_nak(no_time, now=now).at == now
    with pytest.raises(BadAdvisory):  # a nak names no dead letter
        parse_advisory(NAK)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b'["a"]',
        NAK.replace(b"advisory.v1.nak", b"advisory.v1.max_deliver"),
        NAK.replace(b'"deliveries":3', b'"deliveries":0'),
        NAK.replace(b',"deliveries":3', b""),
        NAK.replace(b'"stream_seq":1', b'"stream_seq":"1"'),
        NAK.replace(b'"consumer":"worker"', b'"consumer":null'),
        NAK.replace(b'"stream":"WQ"', b'"stream":"' + b"S" * 300 + b'"'),
    ],
)
def test_it_refuses_nak_advisories_it_cannot_key(data: bytes) -> None:
    with pytest.raises(BadAdvisory):
        parse_nak(data)


async def _app(js: Any, stream: str, subject: str) -> None:
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT, max_deliver=3,
                       ack_wait=1),
    )  # fmt: skip


async def _work(nc: Any, js: Any, stream: str, rounds: int = 12) -> None:
    """The application: naks every `.poison` delivery; naks a `.bad` one once, then terminates
    it ("schema mismatch"); never answers a `.silent` one (its ack wait runs out)."""
    sub = await js.pull_subscribe_bind("worker", stream=stream)
    for _ in range(rounds):
        try:
            msgs = await sub.fetch(20, timeout=0.5)
        except TimeoutError:
            continue
        for m in msgs:
            if m.subject.endswith(".poison"):
                await m.nak()
            elif m.subject.endswith(".bad"):
                if m.metadata.num_delivered == 1:
                    await m.nak()
                else:
                    await nc.publish(m.reply, b"+TERM schema mismatch")
    await sub.unsubscribe()


async def _capturing(js: Any) -> bool:
    try:
        info = await js.consumer_info(ADVISORY_STREAM, ADVISORY_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return bool(info.num_waiting)


async def _drained(js: Any) -> bool:
    try:
        info = await js.consumer_info(ADVISORY_STREAM, ADVISORY_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _count(database_url: str, sql: str, *params: Any) -> int:
    return int((await query(database_url, sql, *params))[0][0])


async def _make_dead_letters(url: str, db_url: str, stream: str, subject: str) -> dict[str, Any]:
    """Three dead letters (poison: 3 naks then max deliveries; bad: 1 nak then terminated;
    silent: no nak, max deliveries); then a second tap reads every advisory again (the
    advisory consumer deleted) and writes nothing twice."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await _app(js, stream, subject)
    async with tap_running(url, db_url) as tap:
        await eventually(lambda: _capturing(js), what="the tap reads advisories")
        for kind in ("poison", "bad", "silent"):
            await js.publish(f"{subject}.{kind}", f'{{"kind": "{kind}"}}'.encode())
        await _work(nc, js, stream)
        await eventually(
            lambda: _count(db_url, "SELECT count(*) = 3 FROM flowscope_deadletter "
                           "WHERE stream_name = %s", stream),
            what="three dead letters",
        )  # fmt: skip
        await eventually(lambda: _drained(js), what="every advisory acked")
        first: dict[str, Any] = {"naks": tap.deadletters.naks_written if tap.deadletters else -1}
    first["rows"] = await query(db_url, ALL_NAKS, stream)
    await js.delete_consumer(ADVISORY_STREAM, ADVISORY_CONSUMER)  # the next tap reads all again
    async with tap_running(url, db_url) as again:
        await eventually(lambda: _drained(js), what="every advisory read again")
        first["again"] = again.deadletters.naks_written if again.deadletters else -1
    first["rows_after"] = await query(db_url, ALL_NAKS, stream)
    await nc.close()
    return first


@pytest.fixture
def viewer(database_url: str) -> Client:
    user = User.objects.create_user("vera", password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    client = Client()
    client.force_login(user)
    return client


def _page_naks(client: Client, d: DeadLetter) -> tuple[Any, list[tuple[int, str, str]]]:
    response = client.get(f"/dead-letters/{d.id}/")
    assert response.status_code == 200
    doc = parse(response.content.decode())
    found = [doc.by_id("deliveries-region")]
    rows = []
    for tr in found[0].find_all("tr"):
        if "data-deliveries" in tr.attrs:
            (when,) = tr.find_all("time")
            rows.append((int(str(tr.attrs["data-deliveries"])), str(when.attrs["datetime"]),
                         tr.text()))  # fmt: skip
    return found[0], rows


def test_a_dead_letters_page_and_api_show_its_naks_in_order(
    viewer: Client, nats_server: Any, database_url: str, unique: str
) -> None:
    stream, subject = f"NAKS_{unique}", f"naks.{unique}"
    got: dict[str, Any] = {}

    async def run() -> None:
        got.update(await _make_dead_letters(nats_server.url, database_url, stream, subject))

    in_thread(run())
    # Restarted with the advisories all delivered again: nothing written twice.
    assert got["again"] == 0 and got["rows_after"] == got["rows"]
    assert got["naks"] == 4  # poison 1, 2, 3; bad 1
    letters = {
        d.subject.rsplit(".", 1)[1]: d for d in DeadLetter.objects.filter(stream_name=stream)
    }
    poison, bad, silent = letters["poison"], letters["bad"], letters["silent"]
    assert (poison.reason, bad.reason, silent.reason) == ("max_deliveries", "terminated",
                                                          "max_deliveries")  # fmt: skip

    region, rows = _page_naks(viewer, poison)
    assert [r[0] for r in rows] == [1, 2, 3]
    stored = list(Nak.objects.filter(stream_name=stream, seq=poison.seq).order_by("ts"))
    to_ms = [n.ts.replace(microsecond=n.ts.microsecond // 1000 * 1000) for n in stored]
    assert [datetime.fromisoformat(r[1]) for r in rows] == to_ms  # <time datetime>: to the ms
    assert all(a.ts < b.ts for a, b in itertools.pairwise(stored))
    assert stored[-1].ts <= poison.died_at
    assert rows[0][2].count(NO_GAP) == 1 and re.search(r"\d (ms|s)\b", rows[1][2]), rows
    (final,) = [tr for tr in region.find_all("tr") if tr.attrs.get("id") == "final-event"]
    assert "max deliveries reached" in final.text()
    api = viewer.get(f"/api/dead-letters/{poison.id}").json()
    assert [n["deliveries"] for n in api["naks"]] == [1, 2, 3] and api["naks_total"] == 3
    assert [datetime.fromisoformat(n["at"]) for n in api["naks"]] == to_ms  # the API: to the ms

    region, rows = _page_naks(viewer, bad)  # terminated: its reason, after its one nak
    assert [r[0] for r in rows] == [1]
    (final,) = [tr for tr in region.find_all("tr") if tr.attrs.get("id") == "final-event"]
    assert "terminated" in final.text() and "schema mismatch" in final.text()
    api = viewer.get(f"/api/dead-letters/{bad.id}").json()
    assert [n["deliveries"] for n in api["naks"]] == [1]

    region, rows = _page_naks(viewer, silent)  # the ack wait ran out: said plainly
    assert rows == []
    (empty,) = [e for e in region.find_all("p") if e.attrs.get("id") == "no-naks"]
    assert "ack wait" in empty.text()
    assert viewer.get(f"/api/dead-letters/{silent.id}").json()["naks"] == []


def test_only_the_naks_of_this_life_are_shown(viewer: Client) -> None:
    """Another consumer's, another message's, the same sequence's in an earlier incarnation of
    the stream, in an earlier death in this one, and a later life's (after the death) are not
    this dead letter's; of many, the
    last NAKS_SHOWN are shown, with the total."""
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    stream = Stream.objects.create(name="ORDERS", created=t0, retention="limits")
    died = t0 + timedelta(minutes=10)
    d = DeadLetter.objects.create(
        stream=stream, stream_name="ORDERS", seq=7, consumer="billing", deliveries=150,
        reason=DeadLetter.Reason.MAX_DELIVERIES, payload_source=DeadLetter.PayloadSource.GONE,
        died_at=died, captured_at=died,
    )  # fmt: skip

    def nak(n: int, at: datetime, seq: int = 7, consumer: str = "billing") -> None:
        Nak.objects.create(stream_name="ORDERS", seq=seq, consumer=consumer, deliveries=n, ts=at)

    # (The same delivery numbers in other lives: the key has the time, see Nak's docstring.)
    for n in (1, 2, 3):
        nak(n, t0 - timedelta(days=1, seconds=-n))  # an earlier incarnation's sequence 7
    nak(1, died + timedelta(minutes=5))  # a later life: the consumer reset, delivered again
    # an earlier death of the same seq in this incarnation (the consumer created again)
    DeadLetter.objects.create(
        stream=stream, stream_name="ORDERS", seq=7, consumer="billing", deliveries=2,
        reason=DeadLetter.Reason.MAX_DELIVERIES, payload_source=DeadLetter.PayloadSource.GONE,
        died_at=t0 + timedelta(seconds=30), captured_at=t0 + timedelta(seconds=30),
    )  # fmt: skip
    nak(1, t0 + timedelta(seconds=10))
    nak(2, t0 + timedelta(seconds=20))
    nak(1, t0 + timedelta(minutes=1), consumer="mailer")
    nak(1, t0 + timedelta(minutes=1), seq=8)
    for n in range(1, 151):
        nak(n, t0 + timedelta(minutes=1, seconds=n))
    _, rows = _page_naks(viewer, d)
    assert [r[0] for r in rows] == list(range(51, 151))
    api = viewer.get(f"/api/dead-letters/{d.id}").json()
    assert [n["deliveries"] for n in api["naks"]] == list(range(51, 151))
    assert api["naks_total"] == 150
    doc = parse(viewer.get(f"/dead-letters/{d.id}/").content.decode())
    assert "The last 100 of the 150 naks" in doc.by_id("naks-note").text()


def test_a_dead_letter_streams_message_says_it_has_no_naks(viewer: Client) -> None:
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    d = DeadLetter.objects.create(
        stream_name="DLQ", seq=3, consumer="", reason=DeadLetter.Reason.DLQ_STREAM,
        payload_source=DeadLetter.PayloadSource.STREAM, died_at=t0, captured_at=t0,
    )  # fmt: skip
    Nak.objects.create(stream_name="DLQ", seq=3, consumer="x", deliveries=1, ts=t0)
    region, rows = _page_naks(viewer, d)
    assert rows == [] and "dead-letter stream" in region.text()
    assert viewer.get(f"/api/dead-letters/{d.id}").json()["naks"] == []


async def test_odd_nak_advisories_are_acked_counted_and_capture_goes_on(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"ODDNAK_{unique}"
    async with tap_running(nats_server.url, database_url) as tap:
        await eventually(lambda: _capturing(js), what="the tap reads advisories")
        odd = (b"garbage{", b"{}", NAK.replace(b',"deliveries":3', b""),
               NAK.replace(b"advisory.v1.nak", b"advisory.v1.max_deliver"))  # fmt: skip
        for data in odd:
            await nc.publish(f"{NAKED}.{stream}.worker", data)
        good = NAK.replace(b'"WQ"', json.dumps(stream).encode())
        for _ in range(2):  # the same advisory twice: one row
            await nc.publish(f"{NAKED}.{stream}.worker", good)
        own = NAK.replace(b'"WQ"', json.dumps(ADVISORY_STREAM).encode())  # the capture's own
        await nc.publish(f"{NAKED}.{ADVISORY_STREAM}.{ADVISORY_CONSUMER}", own)
        await eventually(lambda: query(database_url, NAKS, stream, 1), what="the good nak")
        await eventually(lambda: _drained(js), what="every advisory acked")
        assert tap.deadletters is not None
        assert (tap.deadletters.bad, tap.deadletters.naks_written) == (len(odd), 1)
        assert tap.supervisor.tasks["dead letters"].restarts == 0
    await nc.close()
    assert await query(database_url, NAKS, stream, 1) == [
        ("worker", 3, datetime(2026, 12, 2, 18, 21, 20, 832777, tzinfo=UTC))
    ]
    assert await query(database_url, NAKS, ADVISORY_STREAM, 1) == []


async def test_an_existing_advisory_stream_is_given_the_nak_subject_and_bounds(
    nats_server, database_url
):
    """An install from before naks: its stream (two subjects, no bounds) is put back as wanted."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    old = ["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
           "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>"]  # fmt: skip
    await js.add_stream(StreamConfig(name=ADVISORY_STREAM, subjects=old, max_age=7 * 86400))
    async with tap_running(nats_server.url, database_url):
        await eventually(lambda: _capturing(js), what="the tap reads advisories")
        info = await js.stream_info(ADVISORY_STREAM)
    await nc.close()
    subjects = info.config.subjects or []
    assert f"{NAKED}.>" in subjects and set(old) <= set(subjects)
    assert info.config.max_msgs_per_subject == ADVISORY_MAX_PER_SUBJECT
    assert info.config.max_bytes == ADVISORY_MAX_BYTES


async def test_naks_older_than_the_retention_are_deleted(nats_server, database_url, unique):
    now = datetime.now(UTC)
    stream = f"OLD_{unique}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as db:
        for seq, age in ((1, timedelta(days=8)), (2, timedelta(days=6)), (3, timedelta(days=9))):
            await db.execute(
                "INSERT INTO flowscope_nak (stream_name, seq, consumer, deliveries, ts) "
                "VALUES (%s, %s, 'worker', 1, %s)",
                (stream, seq, now - age),
            )
    async with tap_running(nats_server.url, database_url, retention=timedelta(days=7)):
        await eventually(
            lambda: _count(database_url, "SELECT count(*) = 1 FROM flowscope_nak "
                           "WHERE stream_name = %s", stream),
            what="the old naks deleted",
        )  # fmt: skip
    assert await query(database_url, "SELECT seq FROM flowscope_nak WHERE stream_name = %s",
                       stream) == [(2,)]  # fmt: skip


@pytest.mark.browser
def test_the_deliveries_section_in_a_browser(web, page, alice) -> None:
    from tests.test_browser_streams import _log_in

    died = datetime.now(UTC).replace(microsecond=0)
    d = DeadLetter.objects.create(
        stream_name="ORDERS", seq=42, consumer="billing<script>", deliveries=5,
        reason=DeadLetter.Reason.MAX_DELIVERIES, subject="orders.42.created",
        payload=b'{"id": 42}', payload_source=DeadLetter.PayloadSource.STREAM,
        died_at=died, captured_at=died + timedelta(milliseconds=40),
    )  # fmt: skip
    gaps = [0, 0.012, 1.5, 30, 125]
    start = died - timedelta(seconds=sum(gaps) + 0.4)
    at = start
    for n, gap in enumerate(gaps, start=1):
        at += timedelta(seconds=gap)
        Nak.objects.create(stream_name="ORDERS", seq=42, consumer="billing<script>",
                           deliveries=n, ts=at)  # fmt: skip
    _log_in(page, web, alice)
    page.goto(f"{web}/dead-letters/{d.id}/")
    rows = page.locator("#naks tbody tr")
    assert rows.count() == 6
    assert page.locator("#naks tr.nak td:first-child").nth(1).inner_text() == "2"
    assert page.locator("#final-event").inner_text().count("max deliveries reached") == 1
    title = page.locator("#naks tr.nak time").first.get_attribute("title")
    assert title is not None and title.startswith(start.date().isoformat())
    assert "billing<script>" in page.locator("#naks-note").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#deliveries-region").screenshot(path=str(ARTIFACTS / "naks-deliveries-1280.png"))
    page.screenshot(path=str(ARTIFACTS / "naks-page-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    region = page.locator("#deliveries-region")
    region.screenshot(path=str(ARTIFACTS / "naks-deliveries-390.png"))
    page.screenshot(path=str(ARTIFACTS / "naks-page-390.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at 390 px ({width} px wide)"
