"""The live transport (issue #12): one NATS subscription per web process, fan-out to sockets
through Channels groups, coalesced per socket; pure parts unit-tested, the rest against a real
nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from dashboard.live import hub as hub_module
from dashboard.live.consumer import LiveConsumer
from dashboard.live.hub import LiveHub, dirty_topics, group_name, split_roots
from dashboard.live.topics import base_topic, make_topic, parse_topic, parse_topics
from dashboard.pages.overview import kind_of, rate_series, recent_rate, trend
from tests.netutil import proxy_to


def test_topics_are_only_what_a_page_shows():
    assert parse_topic("overview") == ("overview", ())
    assert parse_topic("stream:ORDERS") == ("stream", ("ORDERS",))
    assert parse_topic("consumer:ORDERS:inventory") == ("consumer", ("ORDERS", "inventory"))
    # a chart range may follow a stream's or a consumer's name: the topic of a page showing it
    assert parse_topic("stream:ORDERS:15m") == ("stream", ("ORDERS", "15m"))
    assert parse_topic("consumer:ORDERS:inv:7d") == ("consumer", ("ORDERS", "inv", "7d"))
    assert base_topic("stream:ORDERS:15m") == "stream:ORDERS"
    assert base_topic("consumer:ORDERS:inv:7d") == "consumer:ORDERS:inv"
    assert base_topic("consumer:ORDERS:inv") == "consumer:ORDERS:inv"
    assert base_topic("overview") == "overview"
    for bad in ("overview:x", "stream:", "stream:A:B", "consumer:A", "events", "stream:a\nb", "",
                "stream:A:1h:1h", "consumer:A:b:2h", "replay:1:1h"):  # fmt: skip
        assert parse_topic(bad) is None, bad
    query = "topics=overview,stream:A,stream:A,bogus,stream:B&topics=consumer:A:c"
    assert parse_topics(query) == ["overview", "stream:A", "stream:B", "consumer:A:c"]
    assert len(parse_topics("topics=" + ",".join(f"stream:S{i}" for i in range(50)))) == 8


def test_names_with_commas_colons_and_percents_keep_their_own_topics():
    """NATS allows `,`, `:` and `%` in stream and consumer names: the page of stream `a,b`
    watched `stream:a` (the comma split it), and one of `v1:orders` nothing. The names travel
    percent-encoded; the page's socket and the digests spell the topic the same way."""
    from urllib.parse import quote

    for stream, consumer in (("a,b", "c:d"), ("v1:orders", "50%"), ("ORDERS", "app")):
        # what the stream and consumer pages put in ws-connect (urlencode:'' twice)
        enc = lambda n: quote(quote(n, safe=""), safe="")  # noqa: E731
        page = parse_topics(f"topics=stream:{enc(stream)}:15m")
        other = parse_topics(f"topics=consumer:{enc(stream)}:{enc(consumer)}")
        assert page == [make_topic("stream", stream, "15m")], page
        assert parse_topic(page[0]) == ("stream", (stream, "15m"))
        assert other == [make_topic("consumer", stream, consumer)]
        assert parse_topic(other[0]) == ("consumer", (stream, consumer))
        lag: dict[str, Any] = {"streams": {stream: {"consumers": {consumer: {}}}}}
        dirty = dirty_topics("flowscope.digest.lag", lag)
        assert base_topic(page[0]) in dirty and other[0] in dirty
    assert make_topic("stream", "ORDERS") == "stream:ORDERS"  # plain names read as before
    assert parse_topics("topics=stream:a,b") == ["stream:a"]  # an unencoded comma splits


def test_group_names_are_valid_for_any_topic():
    import re

    for topic in ("overview", "stream:" + "x" * 250, "consumer:ÖRDERS:<b>"):
        name = group_name(topic)
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,99}", name), name
    assert group_name("stream:A") != group_name("stream:B")


def test_a_digest_dirties_the_pages_that_show_what_it_changed():
    events = {"kind": "events", "streams": {"ORDERS": {"count": 3}}, "total": 3}
    assert dirty_topics("flowscope.digest.events", events) == {
        "overview", "topology", "stream:ORDERS",
    }  # fmt: skip
    lag = {"streams": {"ORDERS": {"consumers": {"inventory": {}}, "removed": ["old"]}}}
    assert dirty_topics("flowscope.digest.lag", lag) == {
        "overview", "topology", "stream:ORDERS", "consumer:ORDERS:inventory", "consumer:ORDERS:old",
    }  # fmt: skip
    assert dirty_topics("flowscope.digest.events", {"streams": ["odd"]}) == {"overview", "topology"}


def test_a_rendering_splits_into_its_out_of_band_roots():
    html = (
        '\n<section id="taps-section" hx-swap-oob="true"><p title="a &gt; b">x</p></section>\n'
        '<section id="streams-section" class="r" hx-swap-oob="true"><div data-id="no">'
        "<b>y</b></div></section>"
        '<script type="application/json" id="data" hx-swap-oob="true">{"a":"\\u003c"}</script>'
    )
    parts = split_roots(html)
    assert [i for i, _ in parts] == ["taps-section", "streams-section", "data"]
    assert "".join(h for _, h in parts) == html  # nothing lost, nothing added
    assert parts[1][1].startswith('<section id="streams-section"')
    # no roots, a root without an id, or two with one id: one part, sent whole every time
    assert split_roots("<p>plain</p>") == [(None, "<p>plain</p>")]
    twice = '<a id="x" hx-swap-oob="true">1</a><b id="x" hx-swap-oob="true">2</b>'
    for odd in ('<a hx-swap-oob="true">1</a>', twice):
        assert split_roots(odd) == [(None, odd)]


@pytest.mark.django_db
def test_the_overview_draws_rate_lag_and_trend_from_the_stored_samples():
    from datetime import timedelta

    from django.utils import timezone

    from dashboard.models import Consumer, ConsumerSample, Stream, StreamSample
    from dashboard.pages.overview import overview_context

    now = timezone.now()
    streams = [
        Stream.objects.create(name=name, created=now, retention="limits", observed_by="consumer")
        for name in ("ORDERS", "OTHER")
    ]
    orders, other = streams
    Consumer.objects.create(stream=orders, name="slow", last_seen=now, num_pending=80,
                            num_ack_pending=20)  # fmt: skip
    Consumer.objects.create(stream=orders, name="fast", last_seen=now, num_pending=1)
    ago = [1200, 120, 70, 5]  # seconds: the first is older than the sparklines' 15 minutes
    for (seq, slow, fast), age in zip([(0, 900, 9), (100, 200, 0), (110, 10, 3), (240, 100, 1)],
                                      ago, strict=True):  # fmt: skip
        ts = now - timedelta(seconds=age)
        StreamSample.objects.create(stream=orders, ts=ts, last_seq=seq)
        StreamSample.objects.create(stream=other, ts=ts, last_seq=seq * 7)
        ConsumerSample.objects.create(stream=orders, ts=ts, consumer="slow", num_pending=slow)
        ConsumerSample.objects.create(stream=orders, ts=ts, consumer="fast", num_pending=fast)
        ConsumerSample.objects.create(stream=other, ts=ts, consumer="x", num_pending=5000)
    rows = overview_context(now)["stream_rows"]
    assert isinstance(rows, list)
    row = next(r for r in rows if r.stream.name == "ORDERS")
    t = [(now - timedelta(seconds=age)).timestamp() for age in ago]
    assert row.rate_xs == pytest.approx(t[2:]) and row.rate_ys == pytest.approx([0.2, 2.0])
    assert row.rate == pytest.approx(2.0)  # over the last minute (from the sample at -70 s)
    assert row.lag_xs == pytest.approx(t[1:]) and row.lag_ys == [200, 10, 100]  # the worst's
    # 100 now against 10 at the last sample at least a minute old (-70 s), not the 200 before it
    assert row.worst is not None and row.worst.name == "slow" and row.worst_trend == "growing"


@pytest.mark.django_db
def test_the_benchmarks_socket_reads_the_counter_the_overview_pushes():
    """bench/live.py times a script's socket by the recorded counter in the pushed HTML."""
    from django.utils import timezone

    from bench.markup import recorded_pattern
    from dashboard.models import Checkpoint, Stream
    from dashboard.pages.overview import overview_live_html

    stream = Stream.objects.create(name="BENCH", created=timezone.now(), retention="limits")
    Checkpoint.objects.create(stream=stream, last_seq=12345, recorded=12345)
    found = recorded_pattern("BENCH").search(overview_live_html().encode())
    assert found is not None and found.group(1) == b"12,345"


def test_rates_trends_and_store_names():
    points = [(0.0, 0), (5.0, 50), (10.0, 150), (15.0, 10)]  # purged and reset at the end
    assert rate_series(points) == ([5.0, 10.0, 15.0], [10.0, 20.0, 0.0])
    assert recent_rate([(0.0, 0), (30.0, 300), (70.0, 700), (90.0, 900)]) == pytest.approx(10.0)
    assert recent_rate([(0.0, 0)]) is None
    assert trend(100, 50) == "growing" and trend(10, 50) == "shrinking"
    assert trend(100, 100) == "steady" and trend(101, 100) == "steady"
    assert trend(5, None) == "steady"
    assert kind_of("KV_config") == ("kv", "config") and kind_of("OBJ_files") == ("obj", "files")
    assert kind_of("ORDERS") == ("stream", "ORDERS") and kind_of("KV_") == ("stream", "KV_")


@pytest.fixture
async def _close_thread_connections():
    """The ORM ran in asgiref's thread: close its connection, or the test database cannot be
    dropped at the end."""
    yield

    def close() -> None:
        from django.db import connection  # resolved in the thread that runs this

        connection.close()

    await sync_to_async(close)()


@pytest.fixture
async def live_hub(nats_server, settings):
    """A hub of this test's own on the test's nats-server (the process-wide one is replaced)."""
    renders: list[str] = []

    def render(topic: str) -> str:
        renders.append(topic)
        return f'<div id="t" hx-swap-oob="true">{topic} {len(renders)}</div>'

    hub = LiveHub(nats_server.url, "flowscope", tick=0.05, refresh=60, render=render)
    hub.renders_log = renders  # type: ignore[attr-defined]
    previous, hub_module._hub = hub_module._hub, hub
    yield hub
    hub_module._hub = previous
    if hub.task is not None:
        hub.task.cancel()
        await asyncio.gather(hub.task, return_exceptions=True)


async def _user(username: str):
    from django.contrib.auth.models import User

    return await sync_to_async(User.objects.create_user)(username, password="pw-123456789")


def _socket(user, topics: str = "overview") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), f"/ws/live/?topics={topics}")
    communicator.scope["user"] = user
    return communicator


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_an_anonymous_socket_is_refused(live_hub):
    from django.contrib.auth.models import AnonymousUser

    connected, _ = await _socket(AnonymousUser()).connect()
    assert connected is False
    assert live_hub.task is None  # nothing was started for it


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_socket_gets_the_state_at_once_then_each_digest_coalesced(live_hub, nats_server):
    live_hub.tick = 0.25  # FLOWSCOPE_LIVE_INTERVAL: a page's updates follow the hub's renders
    socket = _socket(await _user("bob"))
    connected, _ = await socket.connect()
    assert connected
    first = await socket.receive_from(timeout=5)
    assert first.startswith('<div id="t" hx-swap-oob="true">overview')  # re-sync on connect
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)  # the hub's subscription is in place
    digest = json.dumps({"kind": "events", "streams": {"S": {"count": 1}}}).encode()
    # A burst of 200 digests in one second: the socket gets a handful of updates, not 200.
    started = time.monotonic()
    for _ in range(200):
        await nc.publish("flowscope.digest.events", digest)
        await asyncio.sleep(0.005)
    received = []
    # (receive_nothing, not a receive timeout: asgiref's testing cancels the socket on those)
    while not await socket.receive_nothing(timeout=1, interval=0.02):
        received.append(await socket.receive_from())
    elapsed = time.monotonic() - started
    await nc.close()
    await socket.disconnect()
    assert live_hub.digests == 200
    assert 1 <= len(received) <= elapsed / live_hub.tick + 1, (len(received), elapsed)
    assert received[-1].endswith(f"overview {len(live_hub.renders_log)}</div>")  # latest wins
    assert live_hub.watched == {}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_two_sockets_share_one_render_per_tick(live_hub, nats_server):
    a, b = _socket(await _user("a")), _socket(await _user("b"))
    assert (await a.connect())[0] and (await b.connect())[0]
    await a.receive_from(timeout=5)
    await b.receive_from(timeout=5)
    before = len(live_hub.renders_log)
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)
    await nc.publish("flowscope.digest.events", b'{"streams": {}}')
    got_a, got_b = await a.receive_from(timeout=5), await b.receive_from(timeout=5)
    await nc.close()
    assert got_a == got_b  # the same rendering, sent to both
    assert len(live_hub.renders_log) == before + 1
    await a.disconnect()
    await b.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_page_showing_another_chart_range_follows_its_streams_changes(
    live_hub, nats_server
):
    """A stream page open on 15 min watches `stream:S:15m`: a digest naming S renders that
    topic (with its range), and not a page of another stream."""
    mine, other = (
        _socket(await _user("d"), "stream:S:15m"),
        _socket(await _user("e"), "stream:T:7d"),
    )
    assert (await mine.connect())[0] and (await other.connect())[0]
    await mine.receive_from(timeout=5)  # the state at once
    await other.receive_from(timeout=5)
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)
    before = len(live_hub.renders_log)
    await nc.publish("flowscope.digest.events", b'{"streams": {"S": {"count": 1}}}')
    pushed = await mine.receive_from(timeout=5)
    await nc.close()
    assert ">stream:S:15m " in pushed
    assert await other.receive_nothing(timeout=0.5)
    assert live_hub.renders_log[before:] == ["stream:S:15m"]
    await mine.disconnect()
    await other.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_the_hub_survives_a_nats_restart(live_hub, nats_server):
    socket = _socket(await _user("carol"))
    assert (await socket.connect())[0]
    await socket.receive_from(timeout=5)
    nats_server.stop(kill=True)
    await asyncio.sleep(1)
    nats_server.start()
    nc = await nats.connect(nats_server.url)

    async def pushed() -> bool:
        await nc.publish("flowscope.digest.lag", b'{"streams": {}}')
        if await socket.receive_nothing(timeout=0.5, interval=0.02):
            return False
        await socket.receive_from()
        return True

    deadline = time.monotonic() + 20
    while not await pushed():
        assert time.monotonic() < deadline, "no push after NATS came back"
    await nc.close()
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_the_hub_re_syncs_when_its_own_connection_dies_and_the_server_stays_up(
    live_hub, nats_server
):
    """Only the hub's connection is cut (a proxy between it and the server); the server and the
    other clients stay up. The hub reconnects by itself, its pages are re-synced without a
    digest (what changed meanwhile), and digests reach them again."""
    with proxy_to(nats_server.url) as proxy:
        live_hub.nats_url = proxy.url
        socket = _socket(await _user("erin"))
        assert (await socket.connect())[0]
        await socket.receive_from(timeout=5)
        other = await nats.connect(nats_server.url)  # a tap, say: not behind the proxy
        while not live_hub.connected:
            await asyncio.sleep(0.05)
        renders = len(live_hub.renders_log)
        assert proxy.cut() == 1
        resynced = await socket.receive_from(timeout=10)  # no digest was sent
        assert resynced.startswith('<div id="t" hx-swap-oob="true">overview')
        assert len(live_hub.renders_log) > renders and proxy.accepted == 2
        assert other.is_connected and live_hub.connected
        await asyncio.sleep(0.3)  # (the subscription is in place again)
        await other.publish("flowscope.digest.events", b'{"kind": "events", "streams": {}}')
        await socket.receive_from(timeout=5)  # a digest reaches the page again
        await other.close()
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_socket_whose_sender_dies_is_closed_and_logged_not_left_silent(
    live_hub, nats_server, monkeypatch, caplog
):
    socket = _socket(await _user("fay"))
    assert (await socket.connect())[0]
    await socket.receive_from(timeout=5)

    def broken(self, batch):
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(LiveConsumer, "_changed", broken)
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)
    await nc.publish("flowscope.digest.events", b'{"kind": "events", "streams": {}}')
    closed = await socket.receive_output(timeout=5)
    await nc.close()
    assert closed == {"type": "websocket.close", "code": 1011}  # the page reconnects by itself
    [record] = [r for r in caplog.records if "its sender failed" in r.getMessage()]
    assert record.levelname == "ERROR" and "a bug in the sender" in str(record.exc_info[1])
    await socket.disconnect()


@pytest.fixture
async def two_root_hub(nats_server, settings):
    """A hub whose topic renders two roots: `#still` never changes, `#moving` counts renders."""
    renders: list[str] = []

    def render(topic: str) -> str:
        renders.append(topic)
        return (
            f'<section id="still" hx-swap-oob="true">{"s" * 2000}</section>'
            f'<section id="moving" hx-swap-oob="true">{topic} {len(renders)}</section>'
        )

    hub = LiveHub(nats_server.url, "flowscope", tick=0.05, refresh=60, render=render)
    previous, hub_module._hub = hub_module._hub, hub
    yield hub
    hub_module._hub = previous
    if hub.task is not None:
        hub.task.cancel()
        await asyncio.gather(hub.task, return_exceptions=True)


async def _digest(nc) -> None:
    await nc.publish("flowscope.digest.events", b'{"kind": "events", "streams": {}}')


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_push_carries_only_the_roots_that_changed(two_root_hub, nats_server):
    socket = _socket(await _user("dora"))
    assert (await socket.connect())[0]
    first = await socket.receive_from(timeout=5)
    assert 'id="still"' in first and 'id="moving"' in first  # the full state on connect
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)
    await _digest(nc)
    pushed = await socket.receive_from(timeout=5)
    assert 'id="moving"' in pushed and "overview 2" in pushed
    assert 'id="still"' not in pushed  # unchanged since this socket got it: not sent again
    # a socket that connects now still gets the whole state
    late = _socket(await _user("erin"))
    assert (await late.connect())[0]
    full = await late.receive_from(timeout=5)
    assert 'id="still"' in full and 'id="moving"' in full
    await nc.close()
    await socket.disconnect()
    await late.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_page_that_acknowledges_has_one_message_in_flight_and_gets_the_latest(
    live_hub, nats_server
):
    socket = _socket(await _user("fred"))
    assert (await socket.connect())[0]
    await socket.send_to(text_data="flow ack")  # what static/js/live.js says once open
    await socket.receive_from(timeout=5)  # the state on connect: not acknowledged yet
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)
    for _ in range(20):  # a second of changes while the page is busy with the first message
        await _digest(nc)
        await asyncio.sleep(0.05)
    assert await socket.receive_nothing(timeout=0.5, interval=0.02)  # nothing queued for it
    renders = len(live_hub.renders_log)
    await socket.send_to(text_data="ack")
    latest = await socket.receive_from(timeout=2)  # at once, and the newest state
    assert latest.endswith(f"overview {renders}</div>")
    assert await socket.receive_nothing(timeout=0.5, interval=0.02)  # again: one in flight
    await socket.send_to(text_data="ack")
    await _digest(nc)
    assert "overview" in await socket.receive_from(timeout=5)  # acknowledged: pushes go on
    await nc.close()
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_the_socket_asks_the_role_check(live_hub, settings):
    """Every persona may watch (browse); nobody may not, unless reading is public; an inactive
    user may not (dashboard/roles.py decides, as for the pages)."""
    from django.contrib.auth.models import AnonymousUser, Group

    viewer = await _user("vera")
    await sync_to_async(lambda: viewer.groups.add(Group.objects.get_or_create(name="viewer")[0]))()
    inactive = await _user("gone")
    inactive.is_active = False
    for user, expected in ((viewer, True), (inactive, False), (AnonymousUser(), False)):
        socket = _socket(user)
        connected, _ = await socket.connect()
        assert connected is expected, user
        await socket.disconnect()
    settings.FLOWSCOPE_PUBLIC_READ = True
    socket = _socket(AnonymousUser())
    connected, _ = await socket.connect()
    assert connected is True
    await socket.disconnect()


def test_the_update_interval_is_a_setting_and_a_bad_one_is_refused() -> None:
    import os
    import subprocess
    import sys

    code = ("import django; django.setup(); from dashboard.live.hub import hub; "
            "print(hub().tick)")  # fmt: skip
    for value, expect in (("", "0.2"), ("0.5", "0.5"), ("0", None), ("11", None), ("fast", None)):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
               "DATABASE_URL": "postgresql://x@127.0.0.1/x"}  # fmt: skip
        env.pop("FLOWSCOPE_LIVE_INTERVAL", None)
        if value:
            env["FLOWSCOPE_LIVE_INTERVAL"] = value
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=False)  # fmt: skip
        if expect is None:
            assert run.returncode != 0 and "FLOWSCOPE_LIVE_INTERVAL" in run.stderr, value
        else:
            assert run.returncode == 0, run.stderr[-300:]
            assert run.stdout.split()[-1] == expect
