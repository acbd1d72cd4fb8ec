"""The event browser page (/events/) on events a real tap recorded from a real nats-server:
each filter, field errors as 400 next to the field, keyset pages, markup shown as text, and the
live tail's rendering (dashboard/pages/events.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import nats
import pytest
from django.test import Client

from dashboard.pages.events import tail_live_html
from tests.htmltree import parse
from tests.taputil import eventually, query, tap_running

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def _record(nats_url: str, database_url: str, stream: str) -> None:
    """ORDERS-like stream with 30 events: JSON, text, binary, markup; headers; msg ids; a trace."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    async with tap_running(nats_url, database_url):
        base = stream.lower()
        for i in range(1, 26):
            region = ("eu", "us")[i % 2]
            body = {
                "order": {"id": i, "customer": {"id": i % 5}},
                "note": "refund" if i == 7 else "ok",
            }
            headers = {"Nats-Msg-Id": f"{stream}-{i}", "tenant": f"t{i % 3}",
                       "Flowscope-Service": f"svc{i % 2}"}  # fmt: skip
            if i % 10 == 0:
                headers["traceparent"] = f"00-{TRACE}-00f067aa0ba902b7-01"
            await js.publish(f"{base}.{region}.created", json.dumps(body).encode(), headers=headers)
        await js.publish(f"{base}.eu.binary", b"\xff\xfe\x00\x01 binary")
        await js.publish(f"{base}.eu.<b>bold</b>", b"<script>alert(1)</script>",
                         headers={"x-html": "<img src=x onerror=alert(1)>"})  # fmt: skip
        await js.publish(f"{base}.us.text", "plain text, café".encode())
        await js.publish(f"{base}.us.invalid", b"caf\xe9 not utf-8")
        await js.publish(f"{base}.us.huge", b"x" * 200_000)

        async def all_recorded() -> Any:
            rows = await query(
                database_url,
                "SELECT count(*) FROM flowscope_event e JOIN flowscope_stream s"
                " ON s.id = e.stream_id WHERE s.name = %s",
                stream,
            )
            return rows[0][0] == 30

        await eventually(all_recorded, 30, "30 events recorded")
    await nc.close()


@pytest.fixture
def recorded(database_url: str, nats_server: Any, unique: str) -> str:
    stream = f"EV_{unique}"
    asyncio.run(_record(nats_server.url, database_url, stream))
    return stream


@pytest.fixture
def logged_in(alice: tuple[str, str]) -> Client:
    client = Client()
    assert client.login(username=alice[0], password=alice[1])
    return client


def _all(node: Any, id_: str) -> list[Any]:
    return [e for e in node.elements() if e.attrs.get("id") == id_]


def _table_rows(doc: Any) -> list[Any]:
    return (
        _all(doc, "event-table")[0].find_all("tbody")[0].find_all("tr")
        if _all(doc, "event-table")
        else []
    )


def _rows(client: Client, **params: str) -> list[dict[str, str]]:
    response = client.get("/events/", params)
    assert response.status_code == 200, response.content[:500]
    doc = parse(response.content.decode())
    rows = []
    for tr in _table_rows(doc):
        cells = [td.text().strip() for td in tr.find_all("td")]
        rows.append({"seq": cells[2], "subject": cells[3], "service": cells[5]})
    return rows


def test_it_needs_a_login(db: None) -> None:
    response = Client().get("/events/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_each_filter_on_recorded_events(logged_in: Client, recorded: str) -> None:
    s = recorded
    seqs = lambda **p: [r["seq"] for r in _rows(logged_in, stream=s, **p)]  # noqa: E731
    assert seqs() == [str(n) for n in range(30, 0, -1)]
    assert seqs(subject=f"{s.lower()}.*.created") == [str(n) for n in range(25, 0, -1)]
    assert seqs(subject=f"{s.lower()}.eu.>") == ["27", "26"] + [str(n) for n in range(24, 0, -2)]
    assert seqs(msg_id=f"{s}-7") == ["7"]
    assert seqs(trace_id=TRACE) == ["20", "10"]
    assert seqs(header="tenant=t0") == [str(n) for n in range(24, 0, -3)]
    assert seqs(service="svc1") == [str(n) for n in range(25, 0, -2)]
    assert seqs(text="refund") == ["7"]
    assert seqs(json="order.customer.id=3") == ["23", "18", "13", "8", "3"]
    assert seqs(min_size="100000") == ["30"]
    assert seqs(last="15m") == [str(n) for n in range(30, 0, -1)]
    # no stream filter: the time walk finds the same events
    us = [r["seq"] for r in _rows(logged_in, subject=f"{s.lower()}.us.*")]
    assert us == ["30", "29", "28"] + [str(n) for n in range(25, 0, -2)]


def test_markup_in_events_shows_as_text(logged_in: Client, recorded: str) -> None:
    response = logged_in.get("/events/", {"stream": recorded})
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    doc = parse(html)
    table = doc.by_id("event-table")
    assert not table.find_all("b") and not table.find_all("script")


def test_each_rows_time_opens_its_event_like_its_sequence(logged_in: Client, recorded: str):
    """On a phone the time is the column in view: it links where the sequence does."""
    doc = parse(logged_in.get("/events/", {"stream": recorded}).content.decode())
    rows = _table_rows(doc)
    assert len(rows) == 30
    for tr in rows:
        time_cell, _, seq_cell = tr.find_all("td")[:3]
        [time_link], [seq_link] = time_cell.find_all("a"), seq_cell.find_all("a")
        assert time_link.attrs["href"] == seq_link.attrs["href"]
        assert time_link.attrs["href"] == f"/events/{recorded}/{seq_link.text().strip()}/"


def test_pages_go_older_without_repeating(logged_in: Client, recorded: str) -> None:
    from dashboard.pages import events

    seen: list[str] = []
    url = f"/events/?stream={recorded}"
    old, events.PAGE_SIZE = events.PAGE_SIZE, 7
    try:
        while url:
            doc = parse(logged_in.get(url).content.decode())
            seen += [tr.find_all("td")[2].text().strip() for tr in _table_rows(doc)]
            older = _all(doc, "older")
            url = older[0].attrs["href"] if older else ""
            if url.startswith("?"):
                url = "/events/" + url
    finally:
        events.PAGE_SIZE = old
    assert seen == [str(n) for n in range(30, 0, -1)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"subject": "orders.>.x"}, "subject"),
        ({"since": "not a time"}, "since"),
        ({"stream": "NO_SUCH_STREAM"}, "stream"),
        ({"cursor": "garbage"}, "cursor"),
        ({"min_size": "-5"}, "min_size"),
    ],
)
def test_a_bad_filter_says_which_field_and_why(
    logged_in: Client, db: None, params: dict[str, str], field: str
) -> None:
    response = logged_in.get("/events/", params)
    assert response.status_code == 400
    doc = parse(response.content.decode())
    error = _all(doc, "filter-error")
    assert error and error[0].attrs["data-field"] == field
    form = doc.by_id("filters")  # what was typed stays in the form
    for name, value in params.items():
        if name != "cursor":
            inputs = [e for e in form.elements() if e.attrs.get("name") == name]
            assert inputs and (inputs[0].attrs.get("value") == value or name == "stream")


def test_the_tail_renders_new_matches_and_counts_them(recorded: str, db: None) -> None:
    from dashboard.pages.events import _tails

    qs = f"stream={recorded}&subject={recorded.lower()}.*.created"
    first = tail_live_html(quote(qs, safe=""))
    assert first is not None and 'hx-swap-oob="true"' in first
    doc = parse(first)
    body = doc.by_id("tail-incoming")
    assert body.attrs["data-matched"] == "0"
    assert len(body.find_all("tr")) == 25  # the newest matches there are, as `tail` shows
    again = parse(tail_live_html(quote(qs, safe="")) or "")
    assert again.by_id("tail-incoming").attrs["data-matched"] == "0"  # nothing new
    assert tail_live_html(quote("subject=a.>.b", safe="")) is None
    _tails.clear()


async def _record_with_bucket(nats_url: str, database_url: str, stream: str) -> None:
    """A stream of 3 events and a KV bucket of 4 writes, both recorded by a real tap."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    async with tap_running(nats_url, database_url):
        kv = await js.create_key_value(bucket=f"{stream}_cfg")
        for i in range(3):
            await js.publish(f"{stream.lower()}.e{i}", b"{}")
        for i in range(4):
            await kv.put(f"k{i}", b"v")

        async def all_recorded() -> Any:
            rows = await query(
                database_url,
                "SELECT count(*) FROM flowscope_event e JOIN flowscope_stream s"
                " ON s.id = e.stream_id WHERE s.name IN (%s, %s)",
                stream,
                f"KV_{stream}_cfg",
            )
            return rows[0][0] == 7

        await eventually(all_recorded, 30, "7 events recorded")
    await nc.close()


def test_a_fresh_page_leaves_kv_writes_out_and_kind_brings_them_back(
    logged_in: Client, database_url: str, nats_server: Any, unique: str
) -> None:
    """KV buckets are streams; their writes would swamp the list. A page opened with no filter
    shows the application streams (and says so in its Kind menu); kind=all or kv shows them;
    the pages that follow keep the kind."""
    from dashboard.pages import events

    stream = f"KB_{unique}"
    asyncio.run(_record_with_bucket(nats_server.url, database_url, stream))

    def subjects(url: str) -> tuple[list[str], Any]:
        response = logged_in.get(url)
        assert response.status_code == 200, response.content[:300]
        doc = parse(response.content.decode())
        return [tr.find_all("td")[3].text().strip() for tr in _table_rows(doc)], doc

    fresh, doc = subjects("/events/")
    assert [s for s in fresh if s.startswith(stream.lower())] == [
        f"{stream.lower()}.e{i}" for i in (2, 1, 0)
    ]
    assert not [s for s in fresh if s.startswith("$KV.")]
    kind = next(e for e in doc.by_id("filters").elements() if e.attrs.get("name") == "kind")
    assert [o.text() for o in kind.find_all("option") if "selected" in o.attrs] == ["streams"]
    every, _ = subjects("/events/?kind=all")
    assert sorted(s for s in every if s.startswith("$KV.")) == [
        f"$KV.{stream}_cfg.k{i}" for i in range(4)
    ]
    only, _ = subjects("/events/?kind=kv")
    assert only and all(s.startswith("$KV.") for s in only)
    named, _ = subjects(f"/events/?stream=KV_{stream}_cfg&kind=stream")  # a named one is whole
    assert len(named) == 4

    seen: list[str] = []
    url = "/events/"
    old, events.PAGE_SIZE = events.PAGE_SIZE, 2
    try:
        while url:
            rows, doc = subjects(url)
            seen += rows
            older = _all(doc, "older")
            url = "/events/" + older[0].attrs["href"] if older else ""
    finally:
        events.PAGE_SIZE = old
    assert [s for s in seen if s.startswith(stream.lower())] == [
        f"{stream.lower()}.e{i}" for i in (2, 1, 0)
    ]
    assert not [s for s in seen if s.startswith("$KV.")]
