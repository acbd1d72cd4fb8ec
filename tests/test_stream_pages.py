"""The stream and consumer pages as served: configuration and state of streams recorded by a real
tap (real nats-server and PostgreSQL), 404s, markup from the wire shown as text, the live
partials the websocket transport pushes, and the chart range control."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import nats
import pytest
from django.test import Client
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from dashboard.live.topics import make_topic
from dashboard.models import Consumer, ConsumerSample, Event, Stream
from dashboard.pages.streams import (
    CONSUMER_PARTIALS,
    STREAM_PARTIALS,
    consumer_live_html,
    stream_live_html,
)
from tests.htmltree import Node, parse
from tests.taputil import eventually, in_thread, query, tap_running
from tests.test_stream_page_data import ensure_partition

run = in_thread  # the test itself is sync: Django's test client and the ORM


@pytest.fixture
def logged_in(client: Client, alice: tuple[str, str]) -> Client:
    client.login(username=alice[0], password=alice[1])
    return client


def page(client: Client, url: str, status: int = 200, **headers: str) -> Node:
    response = client.get(url, headers=headers)
    assert response.status_code == status, response.content[:500]
    return parse(response.content.decode())


def facts(tree: Node, id_: str) -> dict[str, str]:
    """A <dl>'s label -> value (whitespace collapsed)."""
    out = {}
    for div in tree.by_id(id_).top():
        dt, *dds = [e for e in div.top() if e.tag in ("dt", "dd")]
        out[dt.text().strip()] = " ".join(" ".join(d.text().split()) for d in dds)
    return out


async def _record_three_streams(nats_url: str, database_url: str, u: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(
        name=f"LIM_{u}", subjects=[f"lim.{u}.>"], max_msgs=1000, max_age=3600.0,
        max_msg_size=4096, duplicate_window=60.0, storage=StorageType.MEMORY, allow_direct=True,
    ))  # fmt: skip
    await js.add_stream(StreamConfig(
        name=f"INT_{u}", subjects=[f"int.{u}"], retention=RetentionPolicy.INTEREST,
    ))  # fmt: skip
    await js.add_stream(StreamConfig(
        name=f"WQ_{u}", subjects=[f"wq.{u}"], retention=RetentionPolicy.WORK_QUEUE,
    ))  # fmt: skip
    await js.add_consumer(f"LIM_{u}", ConsumerConfig(
        durable_name="billing", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"lim.{u}.orders",
        ack_wait=30.0, max_deliver=5, backoff=[1.0, 5.0],
    ))  # fmt: skip
    await js.add_consumer(f"INT_{u}", ConsumerConfig(durable_name="audit"))
    async with tap_running(nats_url, database_url) as tap:

        async def watching() -> bool:
            names = [f"LIM_{u}", f"INT_{u}", f"WQ_{u}"]
            return all(n in tap.observers and tap.observers[n].ready.is_set() for n in names)

        await eventually(watching, 30, "the tap watching the three streams")
        for i in range(7):
            await js.publish(f"lim.{u}.orders", f"order {i}".encode())
        for i in range(3):
            await js.publish(f"lim.{u}.refunds", f"refund {i}".encode())
            await js.publish(f"int.{u}", b"x")
            await js.publish(f"wq.{u}", b"job")
        sub = await js.pull_subscribe_bind("billing", f"LIM_{u}")
        for msg in await sub.fetch(2, timeout=5):
            await msg.ack()

        async def done() -> bool:
            rows = await query(
                database_url,
                "SELECT s.name, c.recorded, s.messages FROM flowscope_checkpoint c "
                "JOIN flowscope_stream s ON s.id = c.stream_id WHERE s.name LIKE %s",
                f"%_{u}",
            )
            got = {name: (rec, msgs) for name, rec, msgs in rows}
            floors = await query(
                database_url,
                "SELECT count(*) FROM flowscope_consumer_sample WHERE consumer = 'billing' "
                "AND ack_floor_stream_seq = 2",
            )
            return (got.get(f"LIM_{u}") == (10, 10) and got.get(f"INT_{u}", (0,))[0] == 3
                    and got.get(f"WQ_{u}", (0,))[0] == 3 and floors[0][0] >= 2)  # fmt: skip

        await eventually(done, 30, "all three streams recorded and the ack sampled")
    await nc.close()


def test_the_pages_show_configuration_and_state_of_streams_recorded_by_a_tap(
    logged_in, nats_server, database_url, unique
):
    u = unique
    run(_record_three_streams(nats_server.url, database_url, u))

    lim = page(logged_in, f"/streams/LIM_{u}/")
    config = facts(lim, "config")
    assert config["Subjects"] == f"lim.{u}.>"
    assert (config["Retention"], config["Storage"], config["Replicas"]) == ("limits", "memory", "1")
    assert (config["Max messages"], config["Max age"], config["Max bytes"]) == (
        "1,000", "1 h", "unlimited")  # fmt: skip
    assert (config["Max message size"], config["Duplicate window"]) == ("4.0 KiB", "1 min")
    assert (config["Discard"], config["Allow direct"]) == ("old", "yes")
    state = facts(lim, "facts")
    assert state["Messages"].startswith("10 msgs")
    assert state["Sequences"].startswith(f"1 {DASH} 10")
    assert state["Recorded"] == "10 events up to seq 10"
    assert state["Gaps"].startswith("0 gaps")
    assert "UTC" in lim.by_id("stream-state").text()  # local time, with its zone
    rows = lim.by_id("subjects").find_all("tr")[1:]
    got = {r.find_all("td")[0].text(): [" ".join(td.text().split()) for td in r.find_all("td")]
           for r in rows}  # fmt: skip
    # all published within the minute: 7 and 3 events over 60 s and over 300 s
    assert got[f"lim.{u}.orders"][1:] == ["0.12 /s", "0.02 /s", "7"]
    assert got[f"lim.{u}.refunds"][1:] == ["0.05 /s", "0.01 /s", "3"]
    heads = [th.text() for th in lim.by_id("consumers").find_all("th")]
    assert heads == ["Consumer", "Lag", "Dead letters", "Pending", "Ack pending", "Redelivered",
                     "Waiting", "Ack floor", "Sampled"]  # fmt: skip
    assert state["Dead letters"].startswith("0 waiting")
    link = lim.by_id("consumers").find_all("a")[0]
    assert (link.text(), link.attrs["href"]) == ("billing", f"/streams/LIM_{u}/consumers/billing/")
    assert len(lim.by_id("events").find_all("tr")) == 11

    consumer = page(logged_in, f"/streams/LIM_{u}/consumers/billing/")
    cfg = facts(consumer, "config")
    assert cfg["Filter subjects"] == f"lim.{u}.orders"
    # with a backoff the server takes its first step as the ack wait
    assert (cfg["Ack policy"], cfg["Ack wait"], cfg["Max deliver"]) == ("explicit", "1 s", "5")
    assert (cfg["Backoff"], cfg["Durable"], cfg["Deliver policy"]) == ("1 s, 5 s", "yes", "all")
    counters = facts(consumer, "counters")
    # 7 orders for it: 2 delivered and acked, 5 pending
    assert counters["Lag"].startswith("5 msgs") and counters["Pending"].startswith("5 msgs")
    assert counters["Ack floor"].startswith("seq 2") and counters["Delivered"].startswith("seq 2")
    assert "pending + ack pending" in consumer.by_id("lag-definition").text()
    assert counters["Dead letters"].startswith("0 waiting")

    interest = page(logged_in, f"/streams/INT_{u}/")
    assert facts(interest, "config")["Retention"] == "interest"
    assert "ephemeral ack-none consumer" in interest.by_id("observation").text()
    assert facts(interest, "facts")["Recorded"] == "3 events up to seq 3"

    wq = page(logged_in, f"/streams/WQ_{u}/")
    assert facts(wq, "config")["Retention"] == "workqueue"
    state = facts(wq, "facts")
    assert state["Recorded"] == "3 events as published: no stream sequences 0 dropped"
    assert state["Gaps"].startswith(DASH)
    note = wq.by_id("observation")
    assert "`" not in note.text()  # the command is set as code, not between backticks
    assert [c.text() for c in note.find_all("code")] == ["python manage.py republish STREAM"]


def test_unknown_streams_and_consumers_are_404_pages(logged_in, db):
    tree = page(logged_in, "/streams/NOPE/", 404)
    assert "No stream" in tree.by_id("missing").parent.text()  # type: ignore[union-attr]
    stream = Stream.objects.create(name="HERE", created=datetime.now(UTC), retention="limits")
    tree = page(logged_in, "/streams/HERE/consumers/nobody/", 404)
    assert "has no consumer of that name" in tree.by_id("missing").text()
    page(logged_in, "/streams/NOPE/consumers/nobody/", 404)
    Consumer.objects.create(stream=stream, name="old", last_seen=datetime.now(UTC),
                            deleted_at=datetime.now(UTC))  # fmt: skip
    assert "was deleted" in page(logged_in, "/streams/HERE/consumers/old/", 404).by_id(
        "missing").text()  # fmt: skip
    assert stream_live_html("NOPE") is None
    assert consumer_live_html("HERE", "nobody") is None
    assert consumer_live_html("HERE", "old") is None
    assert consumer_live_html("NOPE", "old") is None


def test_counts_of_one_are_singular(logged_in, db):
    stream = Stream.objects.create(name="ONE", created=datetime.now(UTC), retention="limits",
                                   messages=1)  # fmt: skip
    Consumer.objects.create(stream=stream, name="c", last_seen=datetime.now(UTC), num_pending=1,
                            num_waiting=1, num_redelivered=2)  # fmt: skip
    facts = page(logged_in, "/streams/ONE/consumers/c/").by_id("consumer-state").text()
    assert "Pending1 msgnot" in facts and "Waiting1 pullpull" in facts, facts
    assert "Redelivered2 msgs" in facts and "Ack pending0 msgs" in facts, facts
    state = page(logged_in, "/streams/ONE/").by_id("facts").text()
    assert "1 msg" in state and "1 msgs" not in state, state


def test_the_pages_need_a_login(client, db):
    Stream.objects.create(name="HERE", created=datetime.now(UTC), retention="limits")
    assert client.get("/streams/HERE/").status_code == 302
    assert client.get("/streams/HERE/consumers/x/").status_code == 302


MARKUP = "<i&amp;\"'"
DASH = "\N{EN DASH}"
SERVICE = "<img src=x onerror=alert(1)>"


def _markup_stream() -> tuple[Stream, Consumer]:
    now = datetime.now(UTC)
    ensure_partition(now.date())
    stream = Stream.objects.create(
        name=f"ESC_{MARKUP}", created=now, retention="limits", state_at=now,
        subjects=["esc.<b>cfg</b>&amp;"], config={"subjects": ["esc.<b>cfg</b>&amp;"]},
    )  # fmt: skip
    consumer = Consumer.objects.create(
        stream=stream, name=f"app_{MARKUP}", last_seen=now, num_pending=3,
        config={"filter_subject": "esc.<script>x</script>", "durable_name": f"app_{MARKUP}"},
    )  # fmt: skip
    for i in range(3):
        ConsumerSample.objects.create(stream=stream, consumer=consumer.name, num_pending=i,
                                      ts=now - timedelta(seconds=30 * (3 - i)))  # fmt: skip
    Event.objects.create(stream=stream, seq=1, ts=now, subject="esc.<b>bold</b>&amp;", size=1,
                         service=SERVICE, payload=b"", recorded_at=now)  # fmt: skip
    return stream, consumer


def test_a_page_of_a_name_with_a_comma_or_colon_watches_its_own_topic(logged_in, db):
    """NATS allows `,` and `:` in names: the page of `v1:a,b` watched `stream:v1` before."""
    now = datetime.now(UTC)
    stream = Stream.objects.create(name="v1:a,b", created=now, retention="limits", state_at=now)
    Consumer.objects.create(stream=stream, name="c,d:e", last_seen=now)
    base = "/streams/v1:a,b/"
    socket = page(logged_in, base).by_id("live-socket")
    assert _watched(socket) == [make_topic("stream", "v1:a,b", "15m")]
    socket = page(logged_in, base + "consumers/c,d:e/").by_id("live-socket")
    assert _watched(socket) == [make_topic("consumer", "v1:a,b", "c,d:e", "15m")]
    assert stream_live_html("v1:a,b", "15m") is not None  # what the hub renders for it


def test_markup_in_names_subjects_and_headers_is_shown_as_text(logged_in, db):
    stream, consumer = _markup_stream()
    url = f"/streams/{stream.name}/"
    for tree, where in ((page(logged_in, url), "stream"),
                        (parse(stream_live_html(stream.name) or ""), "stream live")):  # fmt: skip
        main = tree.find_all("main")[0] if where == "stream" else tree
        assert not [e.tag for e in main.elements() if e.tag in ("b", "i", "img", "script")], where
        if where == "stream":
            assert tree.find_all("h1")[0].find_all("span")[0].text() == stream.name
            assert facts(tree, "config")["Subjects"] == "esc.<b>cfg</b>&amp;"
        row = tree.by_id("events").find_all("tr")[1].find_all("td")
        assert (row[2].text(), row[3].text()) == ("esc.<b>bold</b>&amp;", SERVICE)
        assert tree.by_id("consumers").find_all("a")[0].text() == consumer.name
        chart = next(e for e in tree.by_id("stream-lag").elements() if "data-chart" in e.attrs)
        assert list(json.loads(chart.attrs["data-series"] or "")["series"]) == [consumer.name]
    tree = page(logged_in, f"/streams/{stream.name}/consumers/{consumer.name}/")
    main = tree.find_all("main")[0]
    assert not [e.tag for e in main.elements() if e.tag in ("b", "i", "img", "script")]
    assert tree.find_all("h1")[0].find_all("span")[0].text() == consumer.name
    assert facts(tree, "config")["Filter subjects"] == "esc.<script>x</script>"
    ws = next(e for e in tree.elements() if "ws-connect" in e.attrs)
    # the socket watches the topic the digests name, the names intact (no samples yet: the
    # page opens on 15 min and watches that range)
    assert _watched(ws) == [make_topic("consumer", stream.name, consumer.name, "15m")]


def _watched(socket: Node) -> list[str]:
    """The topics a socket element's ws-connect URL asks for, as the server reads them."""
    from dashboard.live.topics import parse_topics

    return parse_topics(str(socket.attrs["ws-connect"]).partition("?")[2])


def _oob_ids(html: str | None) -> list[str]:
    """The ids of a live fragment's top-level elements, each checked to be an OOB swap."""
    assert html is not None
    top = parse(html).top()
    assert all(e.attrs.get("hx-swap-oob") == "true" for e in top)
    return [str(e.attrs["id"]) for e in top]


def test_the_live_partials_are_the_pages_regions_marked_for_an_oob_swap(logged_in, db):
    stream, consumer = _markup_stream()
    full = page(logged_in, f"/streams/{stream.name}/")
    ids = _oob_ids(stream_live_html(stream.name))
    assert ids == list(STREAM_PARTIALS)
    for id_ in ids:  # the same element in the page, not marked there
        assert "hx-swap-oob" not in full.by_id(id_).attrs
    assert not [e for e in full.elements() if "hx-swap-oob" in e.attrs]
    ws = next(e for e in full.elements() if "ws-connect" in e.attrs)
    assert ws.attrs["hx-ext"] == "ws"
    assert _watched(ws) == [make_topic("stream", stream.name, "15m")]

    full = page(logged_in, f"/streams/{stream.name}/consumers/{consumer.name}/")
    ids = _oob_ids(consumer_live_html(stream.name, consumer.name))
    assert sorted(ids) == sorted(CONSUMER_PARTIALS)
    for id_ in ids:
        assert "hx-swap-oob" not in full.by_id(id_).attrs
    # the page watches the range it shows (15 min: no samples yet), and that topic's render
    # carries the same range
    assert full.by_id("consumer-charts").attrs["data-range"] == "15m"
    assert str(full.by_id("live-socket").attrs["ws-connect"]).endswith(":15m")
    live = parse(consumer_live_html(stream.name, consumer.name, "15m") or "")
    assert live.by_id("consumer-charts").attrs["data-range"] == "15m"


def test_the_range_control_swaps_the_chart_region_and_keeps_the_range_in_the_address(logged_in, db):
    stream, consumer = _markup_stream()
    base = f"/streams/{stream.name}/"
    tree = page(logged_in, base + "?range=24h")
    region = tree.by_id("stream-lag")
    assert region.attrs["data-range"] == "24h"
    links = {a.text(): a.attrs for a in region.find_all("a")}
    assert list(links) == ["15m", "1h", "6h", "24h", "7d"]
    assert links["24h"].get("aria-current") == "true" and "aria-current" not in links["1h"]
    assert links["7d"]["href"] == links["7d"]["hx-get"] == "?range=7d"
    assert links["7d"]["hx-push-url"] == "true"
    # htmx asks for the region, and gets with it, out of band, the socket for that range
    fragment = page(logged_in, base + "?range=6h", HX_Request="true")
    assert [e.attrs.get("id") for e in fragment.top()] == ["stream-lag", "live-socket"]
    assert fragment.by_id("stream-lag").attrs["data-range"] == "6h"
    assert "hx-swap-oob" not in fragment.by_id("stream-lag").attrs
    socket = fragment.by_id("live-socket").attrs
    assert socket["hx-swap-oob"] == "true"
    assert _watched(fragment.by_id("live-socket")) == [make_topic("stream", stream.name, "6h")]
    # a history restore (back button, cache missed) gets the whole page
    restored = page(logged_in, base + "?range=6h", HX_Request="true",
                    HX_History_Restore_Request="true")  # fmt: skip
    assert restored.find_all("h1")
    fragment = page(logged_in, base + f"consumers/{consumer.name}/?range=7d", HX_Request="true")
    assert [e.attrs.get("id") for e in fragment.top()] == ["consumer-charts", "live-socket"]
    assert str(fragment.by_id("live-socket").attrs["ws-connect"]).endswith(":7d")
    assert page(logged_in, base + "?range=bogus").by_id("stream-lag").attrs["data-range"] == "15m"


def test_a_page_opens_on_the_range_its_data_fills(logged_in, db):
    """Minutes of samples open on 15 min (not squeezed into an hour's right edge); once they
    reach back past 15 min, on 1 h; a range asked for is kept."""
    from datetime import timedelta

    from django.utils import timezone

    from dashboard.models import ConsumerSample, StreamSample

    stream, consumer = _markup_stream()
    base = f"/streams/{stream.name}/"
    opened = lambda url: str(page(logged_in, url).by_id("live-socket").attrs["ws-connect"])  # noqa: E731
    now = timezone.now()
    mine = base + f"consumers/{consumer.name}/"

    def sample(minutes: int, consumer_too: bool = True) -> None:
        ts = now - timedelta(minutes=minutes)
        StreamSample.objects.create(stream=stream, ts=ts, last_seq=1)
        if consumer_too:
            ConsumerSample.objects.create(stream=stream, ts=ts, consumer=consumer.name)

    for minutes in (1, 5, 14):
        sample(minutes)
    assert opened(base).endswith(":15m") and opened(mine).endswith(":15m")
    sample(16, consumer_too=False)  # the stream's samples reach back; the consumer is new
    assert opened(base).endswith(":1h") and opened(mine).endswith(":15m")
    sample(20)
    assert opened(mine).endswith(":1h")
    assert opened(base + "?range=15m").endswith(":15m")
