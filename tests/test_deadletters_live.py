"""Dead letters, live, everywhere they should show (issues #15.4, #12.4, #12.7): the new ones
waiting per stream and consumer on the overview, the stream and consumer pages and the topology
(a health state of their own); the list's selection boxes; the list's live partials; the
digests that move them. Pure parts, pages on rows made here, the hub on a real nats-server, and
dead letters produced for real (a consumer that naks until max deliveries) by a real tap."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import nats
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from nats.js.api import AckPolicy, ConsumerConfig

from dashboard.live import hub as hub_module
from dashboard.live.hub import LiveHub, dirty_topics, fan_out
from dashboard.live.topics import parse_topic, renderer
from dashboard.models import Consumer, DeadLetter, Stream
from dashboard.pages.deadletters import dead_letters_live_html
from dashboard.pages.overview import overview_context, overview_live_html
from dashboard.pages.streams import stream_context, stream_live_html
from dashboard.pages.topology import cache_clear, topology_live_html
from dashboard.topology import build_graph
from eventbus.deadletters import deadletters_changed_digest, deadletters_digest, digest_subject
from tests.htmltree import Node, parse
from tests.taputil import eventually, query, tap_running
from tests.test_live import _close_thread_connections, _socket  # noqa: F401 - fixture

EVIL_STREAM = 'S<img src=x onerror="window.__xss=1">'
EVIL_CONSUMER = "<script>window.__xss=2</script>"
SUBJECT = "flowscope.digest.deadletters"


# -- pure ---------------------------------------------------------------------------------------


def test_a_dead_letter_digest_dirties_every_page_that_shows_them() -> None:
    written = deadletters_digest(
        Counter({("ORDERS", "billing", "max_deliveries"): 2, ("DLQ", "", "dlq_stream"): 1})
    )
    assert dirty_topics(SUBJECT, json.loads(written)) == {
        "overview", "topology", "stream:ORDERS", "consumer:ORDERS:billing", "stream:DLQ",
    }  # fmt: skip
    replayed = Counter({("ORDERS", "billing", "replayed"): 3})
    changed = json.loads(deadletters_changed_digest(replayed))
    assert changed == {
        "kind": "deadletters",
        "changed": [{"stream": "ORDERS", "consumer": "billing", "status": "replayed", "count": 3}],
        "total": 3,
    }
    assert dirty_topics(SUBJECT, changed) == {
        "overview", "topology", "stream:ORDERS", "consumer:ORDERS:billing",
    }  # fmt: skip
    odd = {"kind": "deadletters", "counts": "x", "changed": [1, {"stream": 2}, {"consumer": "c"}]}
    assert dirty_topics(SUBJECT, odd) == {"overview", "topology"}
    assert digest_subject("fs") == "fs.digest.deadletters"
    assert fan_out(SUBJECT, changed) == fan_out(SUBJECT, json.loads(written)) == "deadletters:"
    assert fan_out("flowscope.digest.events", {"kind": "events"}) == "tail:"
    assert fan_out("flowscope.digest.lag", {"streams": {}}) is None


def test_a_replay_that_changed_dead_letters_dirties_the_pages_that_count_them() -> None:
    """eventbus/replay.py's digest: a job's progress, and the dead letters it replayed."""
    replays = "flowscope.digest.replays"
    body = {"jobs": {"7": {"published": 2, "failed": 0, "total": 5}}, "dead_letters": [11, 12],
            "streams": ["ORDERS"]}  # fmt: skip
    assert dirty_topics(replays, body) == {"replay:7", "overview", "topology", "stream:ORDERS"}
    assert fan_out(replays, body) == "deadletters:"
    progress = {"jobs": {"7": {"published": 0, "failed": 1, "total": 5}}, "dead_letters": []}
    assert dirty_topics(replays, progress) == {"replay:7"}
    assert fan_out(replays, progress) is None
    odd = {"jobs": [], "dead_letters": [1], "streams": "ORDERS"}
    assert dirty_topics(replays, odd) == {"overview", "topology"}


def test_a_filtered_dead_letter_list_is_a_topic() -> None:
    assert parse_topic("deadletters:") == ("deadletters", ("",))
    encoded = quote("stream=ORDERS&status=new", safe="")
    assert parse_topic(f"deadletters:{encoded}") == ("deadletters", (encoded,))
    for bad in ("deadletters:a,b", "deadletters:a:b", "deadletters:" + "x" * 5000):
        assert parse_topic(bad) is None, bad


# -- pages, on rows made here --------------------------------------------------------------------


def _letter(stream: str, consumer: str, seq: int, **kw: Any) -> DeadLetter:
    now = timezone.now()
    values: dict[str, Any] = {
        "stream_name": stream, "seq": seq, "consumer": consumer,
        "reason": DeadLetter.Reason.MAX_DELIVERIES, "deliveries": 2,
        "subject": f"orders.{seq}", "payload": b"{}",
        "payload_source": DeadLetter.PayloadSource.STREAM,
        "died_at": now - timedelta(seconds=100 - seq), "captured_at": now,
    }  # fmt: skip
    values.update(kw)
    return DeadLetter.objects.create(**values)


def _person(name: str, group: str) -> Client:
    user = User.objects.create_user(name, password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def world(db: None) -> dict[str, Any]:
    """ORDERS (billing: 3 new and 1 replayed; mailer: none), a stream and a consumer whose
    names are markup (2 new), a dead-letter stream (1 new, no consumer)."""
    now = timezone.now()
    orders = Stream.objects.create(
        name="ORDERS", created=now, retention="limits", subjects=["orders.>"]
    )
    evil = Stream.objects.create(name=EVIL_STREAM, created=now, retention="limits")
    dlq = Stream.objects.create(name="DLQ", created=now, retention="limits")
    for stream, name in ((orders, "billing"), (orders, "mailer"), (evil, EVIL_CONSUMER)):
        Consumer.objects.create(stream=stream, name=name, last_seen=now)
    made = [_letter("ORDERS", "billing", i) for i in (1, 2, 3)]
    made.append(_letter("ORDERS", "billing", 4, status=DeadLetter.Status.REPLAYED))
    made += [_letter(EVIL_STREAM, EVIL_CONSUMER, i) for i in (5, 6)]
    made.append(_letter("DLQ", "", 7, reason=DeadLetter.Reason.DLQ_STREAM))
    return {"orders": orders, "evil": evil, "dlq": dlq, "letters": made}


def _cell(tree: Node, table: str, attr: str, value: str) -> Node:
    rows = [r for r in tree.by_id(table).find_all("tr") if r.attrs.get(attr) == value]
    assert len(rows) == 1, (table, value)
    cells = [td for td in rows[0].find_all("td") if td.attrs.get("data-field") == "dead-letters"]
    assert len(cells) == 1
    return cells[0]


def _figure(cell: Node) -> tuple[str, str | None, str]:
    """(text, link, class of what shows it) of a dead-letters cell."""
    shown = cell.top()[0]
    return shown.text(), shown.attrs.get("href"), str(shown.attrs.get("class"))


def test_the_overview_counts_them_per_stream_and_consumer(world: dict[str, Any]) -> None:
    viewer = _person("vera", "viewer")
    html = viewer.get("/").content.decode()
    tree = parse(html)
    assert _figure(_cell(tree, "streams", "data-stream", "ORDERS")) == (
        "3", "/dead-letters/?stream=ORDERS&status=new", "dl-waiting"
    )  # fmt: skip
    assert _figure(_cell(tree, "streams", "data-stream", "DLQ"))[0] == "1"
    assert _figure(_cell(tree, "consumers", "data-consumer", "ORDERS/billing")) == (
        "3", "/dead-letters/?stream=ORDERS&consumer=billing&status=new", "dl-waiting"
    )  # fmt: skip
    # none waiting: "0", muted, not blank and not a link
    assert _figure(_cell(tree, "consumers", "data-consumer", "ORDERS/mailer")) == (
        "0", None, "muted"
    )  # fmt: skip
    evil = _cell(tree, "consumers", "data-consumer", f"{EVIL_STREAM}/{EVIL_CONSUMER}")
    assert _figure(evil)[1] == (
        f"/dead-letters/?stream={quote(EVIL_STREAM, safe='')}"
        f"&consumer={quote(EVIL_CONSUMER, safe='')}&status=new"
    )
    assert "<img src=x" not in html and "<script>window" not in html
    assert EVIL_STREAM in tree.by_id("streams").text()
    heads = [th.text() for th in tree.by_id("consumers").find_all("th")]
    assert heads[:4] == ["Stream", "Consumer", "Lag", "Dead letters"]
    # the live push carries the same figures
    live = parse(overview_live_html())
    assert _figure(_cell(live, "streams", "data-stream", "ORDERS"))[0] == "3"


def test_the_stream_and_consumer_pages_show_them(world: dict[str, Any]) -> None:
    viewer = _person("vera", "viewer")
    tree = parse(viewer.get("/streams/ORDERS/").content.decode())
    assert tree.by_id("dead-letters-waiting").text() == "3"
    link = tree.by_id("dead-letters-figure").find_all("a")[0]
    assert link.attrs["href"] == "/dead-letters/?stream=ORDERS&status=new"
    consumers = {
        r.find_all("td")[0].text(): r.find_all("td")[2]
        for r in tree.by_id("consumers").find_all("tr")[1:]
    }
    assert _figure(consumers["billing"])[:2] == (
        "3", "/dead-letters/?stream=ORDERS&consumer=billing&status=new"
    )  # fmt: skip
    assert _figure(consumers["mailer"]) == ("0", None, "muted")
    consumer = parse(viewer.get("/streams/ORDERS/consumers/billing/").content.decode())
    assert consumer.by_id("dead-letters-waiting").text() == "3"
    assert consumer.by_id("dead-letters-figure").find_all("a")[0].attrs["href"] == (
        "/dead-letters/?stream=ORDERS&consumer=billing&status=new"
    )
    mailer = parse(viewer.get("/streams/ORDERS/consumers/mailer/").content.decode())
    assert mailer.by_id("dead-letters-waiting").text() == "0"
    live = stream_live_html("ORDERS")
    assert live is not None and parse(live).by_id("dead-letters-waiting").text() == "3"


def test_the_topology_marks_them_as_a_health_state_of_their_own(world: dict[str, Any]) -> None:
    cache_clear()
    tree = parse(topology_live_html())
    items = {li.attrs["data-node-id"]: li for li in tree.by_id("topology-list").find_all("li")
             if li.attrs.get("data-node-id")}  # fmt: skip
    billing = items["consumer:ORDERS/billing"]
    assert billing.attrs["data-health"] == "dead"
    badge = next(a for a in billing.find_all("a") if "health-badge" in str(a.attrs["class"]))
    assert badge.text() == "3 dead letters waiting"
    assert badge.attrs["href"] == "/dead-letters/?stream=ORDERS&consumer=billing&status=new"
    assert items["stream:ORDERS"].attrs["data-health"] == "dead"
    assert "3 dead letters waiting" in items["stream:ORDERS"].text()
    assert items["stream:DLQ"].attrs["data-health"] == "dead"
    assert "1 dead letter waiting" in items["stream:DLQ"].text()
    assert items["consumer:ORDERS/mailer"].attrs["data-health"] == "ok"
    evil = items[f"consumer:{EVIL_STREAM}/{EVIL_CONSUMER}"]
    assert evil.attrs["data-health"] == "dead" and EVIL_CONSUMER in evil.text()
    assert tree.by_id("topology-dead-letters").text().split() == ["6", "dead", "letters", "waiting"]
    # the count of nodes needing attention is red like its worst nodes, not the amber of lag
    [count] = [e for e in tree.elements() if "problems" in str(e.attrs.get("class", "")).split()]
    assert "problems-dead" in str(count.attrs["class"]).split()
    graph = json.loads(tree.by_id("topology-data").text())
    nodes = {n["data"]["id"]: n["data"] for n in graph["nodes"]}
    assert nodes["consumer:ORDERS/billing"]["dead_letters"] == 3
    assert nodes["stream:ORDERS"]["dead_letters"] == 3
    assert nodes["consumer:ORDERS/mailer"]["dead_letters"] == 0
    # lag growing is "warn"; dead letters outrank it and both are said
    DeadLetter.objects.filter(consumer="billing").update(status=DeadLetter.Status.DISCARDED)
    cache_clear()
    items = {li.attrs["data-node-id"]: li for li in parse(topology_live_html()).elements()
             if li.attrs.get("data-node-id")}  # fmt: skip
    assert items["consumer:ORDERS/billing"].attrs["data-health"] == "ok"
    assert items["stream:ORDERS"].attrs["data-health"] == "ok"


def test_rendering_counts_them_in_one_query_whatever_the_consumers(
    world: dict[str, Any],
) -> None:
    """No query per row: the overview, a stream page and the topology each ask the dead-letter
    table once, with 3 consumers or 23."""

    def dead_letter_queries() -> list[int]:
        counts = []
        for render in (
            lambda: overview_context(timezone.now()),
            lambda: stream_context(world["orders"], "1h"),
            build_graph,
        ):
            with CaptureQueriesContext(connection) as q:
                render()
            counts.append(len(q.captured_queries))
            assert sum("flowscope_deadletter" in x["sql"] for x in q.captured_queries) == 1
        return counts

    before = dead_letter_queries()
    now = timezone.now()
    for i in range(20):
        Consumer.objects.create(stream=world["orders"], name=f"c{i}", last_seen=now)
        _letter("ORDERS", f"c{i}", 100 + i)
    assert dead_letter_queries() == before


def test_the_list_has_selection_boxes_for_those_who_may_replay(world: dict[str, Any]) -> None:
    viewer, operator = _person("vera", "viewer"), _person("oscar", "operator")
    tree = parse(operator.get("/dead-letters/").content.decode())
    table = tree.by_id("dead-letters")
    assert len([i for i in table.find_all("input") if i.attrs.get("class") == "pick-all"]) == 1
    boxes = [i for i in table.find_all("input") if i.attrs.get("class") == "pick"]
    ids = [str(r.attrs["data-id"]) for r in table.find_all("tr") if "data-id" in r.attrs]
    assert [b.attrs["value"] for b in boxes] == ids and len(ids) == 7
    assert {(b.attrs["type"], b.attrs["name"], b.attrs["form"]) for b in boxes} == {
        ("checkbox", "id", "dead-letter-actions")
    }
    assert table.attrs["data-live"] == "1"
    assert tree.by_id("dl-socket").attrs["ws-connect"] == "/ws/live/?topics=deadletters%3A"
    seen = parse(viewer.get("/dead-letters/").content.decode()).by_id("dead-letters")
    assert not [i for i in seen.find_all("input")]  # a viewer may not replay: no boxes
    filtered = parse(operator.get("/dead-letters/?status=new&stream=ORDERS").content.decode())
    topic = "deadletters:" + quote("stream=ORDERS&status=new", safe="")
    assert filtered.by_id("dl-socket").attrs["ws-connect"] == (
        "/ws/live/?topics=" + quote(topic, safe="")
    )
    older = parse(operator.get("/dead-letters/?cursor=9999999999999999.1").content.decode())
    assert older.by_id("dead-letters").attrs["data-live"] == "0"  # new rows: first page only


def _incoming(html: str) -> tuple[list[int], dict[str, list[int]]]:
    body = parse(html).by_id("dl-incoming")
    ids = [int(str(r.attrs["data-id"])) for r in body.find_all("tr")]
    return ids, json.loads(str(body.attrs["data-statuses"]))


def test_the_lists_live_partials_carry_new_rows_statuses_and_counts(
    world: dict[str, Any],
) -> None:
    letters = world["letters"]
    html = dead_letters_live_html(quote("stream=ORDERS&status=new", safe=""))
    assert html is not None
    ids, statuses = _incoming(html)
    assert ids == [letters[2].id, letters[1].id, letters[0].id]  # newest first, new ones only
    # the statuses cover the filter whatever status it asks for: the replayed one is said
    assert statuses == {"replayed": [letters[3].id], "new": ids}
    waiting = parse(html).by_id("waiting-region")
    assert waiting.attrs["hx-swap-oob"] == "true"
    assert [r.attrs.get("data-consumer") for r in waiting.find_all("tr")[1:]] == ["billing"]
    rows = parse(html).by_id("dl-incoming").find_all("tr")
    assert all(r.find_all("input")[0].attrs["value"] == r.attrs["data-id"] for r in rows)
    # a status change shows in the next rendering
    DeadLetter.objects.filter(pk=letters[2].id).update(status=DeadLetter.Status.DISCARDED)
    html = dead_letters_live_html(quote("stream=ORDERS&status=new", safe=""))
    assert html is not None
    ids, statuses = _incoming(html)
    assert statuses["discarded"] == [letters[2].id] and letters[2].id not in ids
    # markup in names is text
    evil = dead_letters_live_html(quote(f"stream={EVIL_STREAM}", safe=""))
    assert evil is not None and "<img src=x" not in evil and "<script>window" not in evil
    assert EVIL_CONSUMER in parse(evil).by_id("dl-incoming").text()
    assert dead_letters_live_html(quote("status=lost", safe="")) is None  # a bad filter


@pytest.mark.slow
def test_the_waiting_count_reads_the_partial_index_alone(
    transactional_db: None, capsys: Any
) -> None:
    """200,000 dead letters, 20,000 of them new over 50 streams x 8 consumers: the grouped count
    is an index-only scan of the partial index (the new rows only)."""
    from dashboard.deadletters import waiting_counts

    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO flowscope_deadletter (stream_name, seq, consumer, reason, "
            "terminate_reason, deliveries, subject, payload, truncated, payload_source, "
            "origin_stream, died_at, captured_at, status, status_note) "
            "SELECT 'S' || (g / 10 % 50), g, 'c' || (g / 500 % 8), 'max_deliveries', '', 3, "
            "'x', '', false, 'gone', '', now() - g * interval '1 second', now(), "
            "CASE WHEN g % 10 = 0 THEN 'new' WHEN g % 2 = 0 THEN 'replayed' "
            "ELSE 'discarded' END, '' FROM generate_series(1, 200000) g"
        )
        cur.execute("VACUUM ANALYZE flowscope_deadletter")
    with CaptureQueriesContext(connection) as q:
        counts = waiting_counts()
    assert sum(counts.values()) == 20_000 and len(counts) == 400
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        waiting_counts()
        timings.append((time.perf_counter() - started) * 1000)
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + q.captured_queries[0]["sql"])
        plan = "\n".join(r[0] for r in cur.fetchall())
    live, plans = [], []
    for filter_qs in ("", "status=new", "stream=S7"):
        dead_letters_live_html(quote(filter_qs, safe=""))  # templates loaded
        with CaptureQueriesContext(connection) as lq:
            started = time.perf_counter()
            dead_letters_live_html(quote(filter_qs, safe=""))
            ms = (time.perf_counter() - started) * 1000
        live.append((filter_qs or "no filter", ms))
        for x in lq.captured_queries:
            with connection.cursor() as cur:
                cur.execute("EXPLAIN " + x["sql"])
                plans.append("\n".join(r[0] for r in cur.fetchall()))
    with capsys.disabled():
        print(f"\nwaiting_counts, 200,000 dead letters (20,000 new): {min(timings):.1f} ms")
        print(plan)
        print("the list's live partials: " + ", ".join(f"{f} {ms:.0f} ms" for f, ms in live))
    assert not [p for p in plans if "Seq Scan" in p], plans  # every list query has an index
    # (times printed, not asserted: a test is no benchmark; the plans are what keep them low)
    assert "Index Only Scan using deadletter_waiting" in plan, plan


# -- the hub, on a real nats-server ---------------------------------------------------------------


@pytest.fixture
async def real_hub(nats_server: Any, settings: Any) -> Any:
    """A hub of this test's own on the test's nats-server, rendering the real pages (and
    closing the worker thread's database connection after each, or the test database could
    not be dropped); it refreshes only on digests."""

    def render(topic: str) -> str | None:
        try:
            return renderer(topic)
        finally:
            connection.close()

    hub = LiveHub(nats_server.url, "flowscope", tick=0.05, refresh=600, render=render)
    previous, hub_module._hub = hub_module._hub, hub
    yield hub
    hub_module._hub = previous
    if hub.task is not None:
        hub.task.cancel()
        await asyncio.gather(hub.task, return_exceptions=True)


def _statuses(push: str) -> dict[str, list[int]]:
    found = re.search(r'id="dl-incoming"[^>]*data-statuses="([^"]*)"', push)
    assert found, push[:300]
    return dict(json.loads(found.group(1).replace("&quot;", '"')))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_close_thread_connections")
async def test_a_list_socket_gets_new_rows_and_status_changes_on_digests(real_hub, nats_server):
    make = sync_to_async(_letter)
    first = await make("ORDERS", "billing", 1)
    user = await sync_to_async(User.objects.create_user)("bob", password="pw-123456789")
    topic = "deadletters:" + quote("stream=ORDERS", safe="")
    socket = _socket(user, quote(topic, safe=""))
    assert (await socket.connect())[0]
    state = await socket.receive_from(timeout=5)
    assert f'data-id="{first.id}"' in state and 'id="waiting-region"' in state
    nc = await nats.connect(nats_server.url)
    await asyncio.sleep(0.3)  # the hub's subscription is in place
    second = await make("ORDERS", "billing", 2)
    counts = Counter({("ORDERS", "billing", "max_deliveries"): 1})
    await nc.publish(SUBJECT, deadletters_digest(counts))
    pushed = await socket.receive_from(timeout=5)
    assert f'data-id="{second.id}"' in pushed
    await sync_to_async(
        DeadLetter.objects.filter(pk=first.id).update
    )(status=DeadLetter.Status.REPLAYED)  # fmt: skip
    await nc.publish(
        SUBJECT, deadletters_changed_digest(Counter({("ORDERS", "billing", "replayed"): 1}))
    )
    pushed = await socket.receive_from(timeout=5)
    assert _statuses(pushed) == {"new": [second.id], "replayed": [first.id]}
    await nc.close()
    await socket.disconnect()


# -- produced for real ----------------------------------------------------------------------------


async def nak_until_dead(js: Any, stream: str, consumer: str, count: int, db_url: str) -> None:
    """The application: naks every message it gets until `count` dead letters of `stream` are
    recorded (max deliveries reached, the server's advisory captured by the tap)."""
    sub = await js.pull_subscribe_bind(consumer, stream=stream)

    async def recorded() -> bool:
        try:
            for m in await sub.fetch(20, timeout=0.3):
                await m.nak()
        except TimeoutError:  # nats-py raises asyncio's or its own
            pass
        rows = await query(
            db_url, "SELECT count(*) FROM flowscope_deadletter WHERE stream_name = %s", stream
        )
        return bool(rows[0][0] >= count)

    await eventually(recorded, what=f"{count} dead letters of {stream}")
    await sub.unsubscribe()


async def naking_consumer(js: Any, stream: str, subject: str, consumer: str = "worker") -> None:
    """A stream and a durable consumer that gives up on a message after 2 deliveries."""
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, max_deliver=2,
                       ack_wait=1),
    )  # fmt: skip


async def _produce(url: str, db_url: str, stream: str, subject: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await naking_consumer(js, stream, subject)
    async with tap_running(url, db_url):
        for i in range(3):
            await js.publish(f"{subject}.poison", f"p{i}".encode())
        await nak_until_dead(js, stream, "worker", 3, db_url)

        async def sampled() -> bool:  # the lag sampler has seen the consumer
            rows = await query(db_url, "SELECT 1 FROM flowscope_consumer WHERE name = 'worker'")
            return bool(rows)

        await eventually(sampled, what="the consumer sampled")
    await nc.close()


def test_real_dead_letters_show_on_every_page_and_in_the_api(
    nats_server: Any, database_url: str, unique: str, alice: tuple[str, str]
) -> None:
    stream, subject = f"DLX_{unique}", f"dlx.{unique}"
    asyncio.run(_produce(nats_server.url, database_url, stream, subject))
    client = Client()
    client.login(username=alice[0], password=alice[1])
    overview = parse(client.get("/").content.decode())
    assert _figure(_cell(overview, "streams", "data-stream", stream))[0] == "3"
    assert _figure(_cell(overview, "consumers", "data-consumer", f"{stream}/worker"))[:2] == (
        "3", f"/dead-letters/?stream={stream}&consumer=worker&status=new"
    )  # fmt: skip
    page = parse(client.get(f"/streams/{stream}/").content.decode())
    assert page.by_id("dead-letters-waiting").text() == "3"
    consumer = parse(client.get(f"/streams/{stream}/consumers/worker/").content.decode())
    assert consumer.by_id("dead-letters-waiting").text() == "3"
    cache_clear()
    topology = parse(client.get("/topology/").content.decode())
    node = next(li for li in topology.by_id("topology-list").find_all("li")
                if li.attrs.get("data-node-id") == f"consumer:{stream}/worker")  # fmt: skip
    assert node.attrs["data-health"] == "dead" and "3 dead letters waiting" in node.text()
    api = client.get("/api/dead-letters", {"stream": stream, "status": "new"}).json()
    assert [(i["consumer"], i["reason"], i["deliveries"]) for i in api["items"]] == [
        ("worker", "max_deliveries", 2)
    ] * 3
