"""Event journeys (issue #16): /traces/<trace_id>/ and `GET /api/traces/<trace_id>` on a traced
flow across four services and three streams that a real tap recorded from a real nats-server,
with a dead letter the tap captured (a consumer terminated a message) and its replay published
as the replay worker publishes one; then bad, unknown and pasted trace ids, the tracing UI link
(FLOWSCOPE_TRACE_URL), and the index that finds a trace's dead letters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from django.db import connection
from django.test import Client, override_settings
from nats.js.api import AckPolicy, ConsumerConfig

from dashboard import traces
from dashboard.models import DeadLetter
from dashboard.templatetags.traces import duration_ms
from tests.htmltree import parse
from tests.taputil import eventually, query, tap_running

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER = "4bf92f3577b34da6a3ce929d0e0e4736"
MARKUP_SERVICE = "<img src=x onerror=alert(1)>"


@dataclass
class Flow:
    u: str
    orders: str  # stream names
    inventory: str
    payments: str
    dead_letter_id: int


def _tp(span: int, trace: str = TRACE) -> str:
    return f"00-{trace}-{span:016x}-01"


async def record_flow(nats_url: str, database_url: str, u: str) -> Flow:
    """orders -> ORD -> inventory -> INV -> payments -> PAY -> orders, one trace: each service's
    consumer is named after it. Then an event of a fourth service with markup in its name and
    subject, an event of another trace and one without; `payments` terminates the reserved
    message (a dead letter the tap captures), and it is replayed (Flowscope-Replay-Of)."""
    ord_, inv, pay = f"ORD_{u}", f"INV_{u}", f"PAY_{u}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name, token in ((ord_, "orders"), (inv, "inventory"), (pay, "payments")):
        await js.add_stream(name=name, subjects=[f"{u}.{token}.>"])

    def durable(name: str, filter_subject: str | None = None) -> ConsumerConfig:
        return ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT, max_deliver=3,
                              ack_wait=5, filter_subject=filter_subject)  # fmt: skip

    await js.add_consumer(ord_, durable("inventory", f"{u}.orders.created"))
    await js.add_consumer(inv, durable("payments"))
    await js.add_consumer(pay, durable("orders"))

    async def publish(subject: str, service: str, span: int, trace: str = TRACE, **extra: str
                      ) -> None:  # fmt: skip
        headers = {"Flowscope-Service": service, "traceparent": _tp(span, trace), **extra}
        await js.publish(f"{u}.{subject}", b'{"order": 7}', headers=headers)
        await asyncio.sleep(0.03)  # stream timestamps a little apart: a clear order

    async with tap_running(nats_url, database_url) as tap:
        await eventually(lambda: _watching(tap, (ord_, inv, pay)), 30, "the tap watching")
        await publish("orders.created", "orders", 1)
        await publish("inventory.reserved", "inventory", 2)
        await publish("payments.authorized", "payments", 3)
        await publish("orders.confirmed", "orders", 4)
        await publish("orders.<b>x</b>", MARKUP_SERVICE, 5)
        await publish("orders.created", "orders", 6, trace=OTHER)
        await js.publish(f"{u}.orders.untraced", b"{}")
        # payments gives up on the reserved message: the tap captures a dead letter
        sub = await js.pull_subscribe_bind("payments", stream=inv)
        (msg,) = await sub.fetch(1, timeout=5)
        await nc.publish(msg.reply, b"+TERM card declined")

        async def dead() -> Any:
            rows = await query(database_url, "SELECT id FROM flowscope_deadletter "
                               "WHERE stream_name = %s", inv)  # fmt: skip
            return rows[0][0] if rows else None

        dead_id = await eventually(dead, 30, "the dead letter captured")
        # replayed as the replay worker publishes one: same trace, a new span
        await publish("inventory.reserved", "inventory", 7, **{
            "Flowscope-Replay-Of": f"{inv}:1", "Flowscope-Replayed-By": "alice",
            "Nats-Msg-Id": f"replay-{inv}-1"})  # fmt: skip

        async def recorded() -> bool:
            rows = await query(database_url, "SELECT count(*) FROM flowscope_event "
                               "WHERE trace_id = %s", TRACE)  # fmt: skip
            consumers = await query(database_url, "SELECT count(*) FROM flowscope_consumer c "
                                    "JOIN flowscope_stream s ON s.id = c.stream_id "
                                    "WHERE s.name = ANY(%s)", [ord_, inv, pay])  # fmt: skip
            return bool(rows[0][0] == 6 and consumers[0][0] == 3)

        await eventually(recorded, 30, "six events of the trace and three consumers recorded")
    await nc.close()
    return Flow(u, ord_, inv, pay, dead_id)


async def _watching(tap: Any, names: tuple[str, ...]) -> bool:
    return all(n in tap.observers and tap.observers[n].ready.is_set() for n in names)


@pytest.fixture
def flow(database_url: str, nats_server: Any, unique: str) -> Flow:
    return asyncio.run(record_flow(nats_server.url, database_url, unique))


@pytest.fixture
def logged_in(alice: tuple[str, str]) -> Client:
    client = Client()
    assert client.login(username=alice[0], password=alice[1])
    return client


def _rows(doc: Any) -> list[Any]:
    return [r for r in doc.by_id("waterfall").find_all("tr") if "data-index" in r.attrs]


def test_a_traced_flow_across_services_is_one_journey_in_order(
    logged_in: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = logged_in.get(f"/traces/{TRACE}/")
    assert response.status_code == 200, response.content[:500]
    html = response.content.decode()
    doc = parse(html)
    rows = _rows(doc)
    u = flow.u
    assert [r.attrs["data-index"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r.attrs["data-service"] for r in rows] == [
        "orders", "inventory", "payments", "orders", MARKUP_SERVICE, "inventory"]  # fmt: skip
    assert [r.find_all("a")[0].text() for r in rows] == [
        f"{u}.orders.created", f"{u}.inventory.reserved", f"{u}.payments.authorized",
        f"{u}.orders.confirmed", f"{u}.orders.<b>x</b>", f"{u}.inventory.reserved"]  # fmt: skip
    o, i, p = flow.orders, flow.inventory, flow.payments
    assert [r.attrs["data-stream"] for r in rows] == [o, i, p, o, o, i]
    offsets = [float(str(r.attrs["data-offset-ms"])) for r in rows]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] > offsets[3]
    # what each followed: inferred from who consumes what; the replay from its header
    follows = [[a.attrs.get("data-parent") for a in r.find_all("a") if "data-parent" in a.attrs]
               for r in rows]  # fmt: skip
    assert follows == [[], ["1"], ["2"], ["3"], [], ["2"]]
    assert rows[0].find_all("a")[0].attrs["href"] == f"/events/{flow.orders}/1/"
    # the dead letter beside its event, and in the trace's list; the replay marked, linked
    assert "dead" in str(rows[1].attrs["class"]).split()
    dead_links = [
        a.attrs["href"] for a in rows[1].find_all("a") if "dead-badge" in str(a.attrs.get("class"))
    ]
    assert dead_links == [f"/dead-letters/{flow.dead_letter_id}/"]
    assert [r.attrs["data-id"] for r in doc.by_id("trace-dead-letters").find_all("tr")
            if "data-id" in r.attrs] == [str(flow.dead_letter_id)]  # fmt: skip
    assert "replay" in str(rows[5].attrs["class"]).split()
    assert any(a.attrs["href"] == f"/events/{flow.inventory}/1/" for a in rows[5].find_all("a"))
    assert "by alice" in rows[5].text()
    # the services crossed, in order of first appearance; the one whose consumer gave up marked
    table = doc.by_id("services").find_all("tr")
    services = [(r.attrs["data-service"], [td.text() for td in r.find_all("td")])
                for r in table if "data-service" in r.attrs]  # fmt: skip
    assert [(name, cells[1], cells[3]) for name, cells in services] == [
        ("orders", "2", "0"), ("inventory", "2", "0"), ("payments", "1", "1"),
        (MARKUP_SERVICE, "1", "0")]  # fmt: skip
    assert doc.by_id("event-count").text() == "6" and doc.by_id("dead-letter-count").text() == "1"
    assert doc.by_id("duration").text().endswith(("ms", "s"))
    # nothing from the wire is markup; no inline style or script
    assert MARKUP_SERVICE not in html and "<b>x</b>" not in html
    assert "style=" not in html
    assert OTHER not in html and "untraced" not in html
    graph = doc.by_id("trace-graph-data").text()
    assert "<" not in graph and "\\u003Cimg" in graph

    # the event page links its trace here, and to the tracing UI when one is configured
    event = parse(logged_in.get(f"/events/{flow.orders}/1/").content.decode())
    assert event.by_id("trace-link").attrs["href"] == f"/traces/{TRACE}/"
    with override_settings(FLOWSCOPE_TRACE_URL="https://jaeger.example/trace/{trace_id}"):
        for url in (f"/events/{flow.orders}/1/", f"/traces/{TRACE}/"):
            anchors = parse(logged_in.get(url).content.decode()).find_all("a")
            links = [a.attrs["href"] for a in anchors if a.attrs.get("class") == "tracing-link"]
            assert links == [f"https://jaeger.example/trace/{TRACE}"], url
        assert logged_in.get(f"/api/traces/{TRACE}").json()["tracing_url"] == links[0]

    # a trace with more events than a page shows says so
    monkeypatch.setattr(traces, "MAX_EVENTS", 4)
    doc = parse(logged_in.get(f"/traces/{TRACE}/").content.decode())
    assert len(_rows(doc)) == 4
    assert "Showing the first 4 of 6 events" in doc.by_id("capped").text()


def test_the_api_answers_the_journey_oldest_first_in_pages(logged_in: Client, flow: Flow) -> None:
    from dashboard.models import Stream

    # dead letters without headers (the payload gone): of the trace when of its event's stream
    # incarnation, not when of an earlier incarnation with the same name and sequence
    live = Stream.objects.get(name=flow.orders, deleted_at=None)
    y2020 = datetime(2020, 1, 1, tzinfo=UTC)
    earlier = Stream.objects.create(name=flow.orders, created=y2020, retention="limits",
                                    deleted_at=y2020)  # fmt: skip
    _dead_letter(stream_name=flow.orders, seq=2, consumer="a", headers=None, stream=earlier)
    gone = _dead_letter(stream_name=flow.orders, seq=2, consumer="b", headers=None, stream=live)
    body = logged_in.get(f"/api/traces/{TRACE}").json()
    assert [d["id"] for d in body["dead_letters"]] == [gone.id, flow.dead_letter_id]
    assert body["items"][3]["dead_letters"] == [gone.id]
    gone.delete()
    body = logged_in.get(f"/api/traces/{TRACE}").json()
    items = body["items"]
    assert [(i["stream"], i["seq"], i["service"]) for i in items] == [
        (flow.orders, 1, "orders"), (flow.inventory, 1, "inventory"),
        (flow.payments, 1, "payments"), (flow.orders, 2, "orders"),
        (flow.orders, 3, MARKUP_SERVICE), (flow.inventory, 2, "inventory")]  # fmt: skip
    assert body["next"] is None and body["total"] == 6 and body["trace_id"] == TRACE
    assert [i["span_id"] for i in items] == [f"{n:016x}" for n in (1, 2, 3, 4, 5, 7)]
    assert items[0]["offset_ms"] == 0 and items[0]["parent"] is None
    assert items[3]["parent"] == {"stream": flow.payments, "seq": 1, "span_id": f"{3:016x}",
                                  "service": "payments", "how": "consumed"}  # fmt: skip
    assert items[5]["replay_of"] == {"stream": flow.inventory, "seq": 1}
    assert items[5]["replayed_by"] == "alice"
    assert items[5]["parent"]["how"] == "replay" and items[5]["parent"]["seq"] == 1
    assert items[1]["dead_letters"] == [flow.dead_letter_id]
    assert [d["id"] for d in body["dead_letters"]] == [flow.dead_letter_id]
    assert body["dead_letters"][0]["consumer"] == "payments"
    assert [s["name"] for s in body["services"]] == ["orders", "inventory", "payments",
                                                     MARKUP_SERVICE]  # fmt: skip
    assert {(e["source"], e["target"], e["how"]) for e in body["edges"]} == {
        ("orders", "inventory", "consumed"), ("inventory", "payments", "consumed"),
        ("payments", "orders", "consumed"), ("inventory", "inventory", "replay")}  # fmt: skip
    assert body["tracing_url"] is None

    # pages of two: the same items, parents found across pages, offsets from the first event
    paged: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = logged_in.get(f"/api/traces/{TRACE}", params).json()
        paged += page["items"]
        cursor = page["next"]
        if not cursor:
            break
    assert paged == items
    assert logged_in.get(f"/api/traces/{TRACE}", {"cursor": "nope"}).status_code == 400


@pytest.fixture
def viewer(db: None) -> Client:
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user("vera", password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("bad", ["xyz", OTHER[:-1], "0" * 32, OTHER + "ff",
                                 "<script>alert(1)</script>"])  # fmt: skip
def test_a_bad_trace_id_is_a_clear_400(viewer: Client, bad: str) -> None:
    response = viewer.get("/traces/", {"trace_id": bad})
    assert response.status_code == 400
    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert "32 hexadecimal characters" in parse(html).by_id("trace-error").text() or bad == "0" * 32
    api = viewer.get(f"/api/traces/{bad}")
    assert api.status_code in (400, 404), api.content  # a path with markup may not route
    if api.status_code == 400:
        assert api.json()["detail"][0]["field"] == "trace_id"


def test_an_unknown_trace_is_a_clear_404(viewer: Client) -> None:
    response = viewer.get(f"/traces/{OTHER}/")
    assert response.status_code == 404
    assert "No stored events for trace" in response.content.decode()
    assert "traceparent" in parse(response.content.decode()).by_id("missing").text()
    api = viewer.get(f"/api/traces/{OTHER}")
    assert api.status_code == 404 and OTHER in api.json()["detail"]


def test_the_search_box_takes_a_trace_id_or_a_traceparent(viewer: Client) -> None:
    doc = parse(viewer.get("/traces/").content.decode())
    assert doc.by_id("trace-search").attrs["action"] == "/traces/"
    for typed in (OTHER, OTHER.upper(), f" {OTHER} ", f"00-{OTHER}-00f067aa0ba902b7-01"):
        response = viewer.get("/traces/", {"trace_id": typed})
        assert response.status_code == 302 and response["Location"] == f"/traces/{OTHER}/"
    response = viewer.get(f"/traces/{OTHER.upper()}/")
    assert response.status_code == 302 and response["Location"] == f"/traces/{OTHER}/"


def test_login_is_required(db: None) -> None:
    anonymous = Client()
    response = anonymous.get(f"/traces/{TRACE}/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert anonymous.get("/traces/").status_code == 302
    assert anonymous.get(f"/api/traces/{TRACE}").status_code == 401


def _dead_letter(**kw: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "stream_name": "ORDERS", "seq": 5, "consumer": "billing",
        "reason": DeadLetter.Reason.MAX_DELIVERIES, "deliveries": 5, "subject": "orders.5",
        "headers": {"traceparent": _tp(9)}, "payload": b"{}",
        "payload_source": DeadLetter.PayloadSource.STREAM,
        "died_at": datetime(2026, 11, 30, 12, tzinfo=UTC),
        "captured_at": datetime(2026, 11, 30, 12, tzinfo=UTC),
    }  # fmt: skip
    values.update(kw)
    return DeadLetter.objects.create(**values)


def test_a_trace_id_links_to_the_tracing_ui_when_configured(viewer: Client) -> None:
    d = _dead_letter()
    doc = parse(viewer.get(f"/dead-letters/{d.id}/").content.decode())
    assert doc.by_id("trace-link").attrs["href"] == f"/traces/{TRACE}/"
    assert not [a for a in doc.find_all("a") if "tracing-link" in str(a.attrs.get("class"))]
    with override_settings(FLOWSCOPE_TRACE_URL="https://jaeger.example/trace/{trace_id}?x=1&y=2"):
        for url in (f"/dead-letters/{d.id}/", f"/traces/{TRACE}/"):  # the trace: its 404 page
            html = viewer.get(url).content.decode()
            links = [a for a in parse(html).find_all("a")
                     if "tracing-link" in str(a.attrs.get("class"))]  # fmt: skip
            assert [a.attrs["href"] for a in links] == [
                f"https://jaeger.example/trace/{TRACE}?x=1&y=2"], url  # fmt: skip
            assert links[0].attrs["rel"] == "noopener noreferrer"


def test_settings_refuse_a_trace_url_without_its_placeholder() -> None:
    import os
    import subprocess
    import sys

    cases = (("https://j.example/trace/{trace_id}", True),
             ("https://j.example/trace/", False), ("javascript:{trace_id}", False))  # fmt: skip
    for value, ok in cases:
        run = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()"],
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
                 "FLOWSCOPE_TRACE_URL": value, "DATABASE_URL": "postgresql://x@127.0.0.1/x"},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (run.returncode == 0) == ok, (value, run.stderr[-300:])
        if not ok:
            assert "FLOWSCOPE_TRACE_URL" in run.stderr


def test_a_traces_dead_letters_are_found_by_the_index(db: None) -> None:
    mine = _dead_letter()
    _dead_letter(seq=6, headers={"traceparent": _tp(9, OTHER)})
    _dead_letter(seq=7, headers={"Traceparent": "  " + _tp(9).upper()}, stream_name="X")
    assert [d.id for d in traces.dead_letters_of(TRACE, [])] == [mine.id]
    with connection.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(f"EXPLAIN SELECT id FROM flowscope_deadletter WHERE "
                    f"{traces.DEAD_LETTER_TRACE} = %s", [TRACE])  # fmt: skip
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "flowscope_deadletter_trace" in plan, plan


def test_trace_ids_replays_and_durations_are_read_strictly() -> None:
    assert traces.parse_trace_id(f"  {TRACE.upper()} ") == TRACE
    assert traces.parse_trace_id(_tp(1)) == TRACE
    for bad in ("", "g" * 32, TRACE[:-1], "0" * 32, f"01-{TRACE}"):
        with pytest.raises(traces.TraceIdError):
            traces.parse_trace_id(bad)
    assert traces.replay_of({"Flowscope-Replay-Of": "ORDERS:12"}) == traces.ReplayOf("ORDERS", 12)
    assert traces.replay_of({"flowscope-replay-of": "A_B-c:3"}) == traces.ReplayOf("A_B-c", 3)
    for bad in ("ORDERS", "ORDERS:", ":4", "ORD/ERS:4", "ORDERS:-1", "a.b:1", "X:" + "9" * 20):
        assert traces.replay_of({"Flowscope-Replay-Of": bad}) is None
    shown = [duration_ms(v) for v in (0, 0.42, 12.34, 845, 1250, 125_000, None)]
    assert shown == ["0.00 ms", "0.42 ms", "12.3 ms", "845 ms", "1.25 s", "2 min 05 s",
                     "\N{EN DASH}"]  # fmt: skip


async def _demo_order(nats_url: str, database_url: str, namespace: str) -> str:
    """One order through the demo's saga (five services, five streams), recorded by a real tap;
    returns the order id once it shipped and the customer was mailed."""
    from eventbus.demo.run import Demo, DemoConfig
    from eventbus.demo.topology import CONSUMERS, Settings

    topology = Settings(max_deliver=3, ack_wait=5.0)
    demo = Demo(DemoConfig(nats_url, rate=0, failure_rate=0, namespace=namespace, seed=7,
                           retry_delay=0.4, topology=topology))  # fmt: skip
    await demo.start()
    streams = [demo.names.stream(s) for s in ("ORDERS", "INVENTORY", "PAYMENTS", "SHIPPING",
                                             "NOTIFICATIONS")]  # fmt: skip
    try:
        async with tap_running(nats_url, database_url) as tap:
            await eventually(lambda: _watching(tap, tuple(streams)), 30, "the tap watching")
            oid = await demo.place_order()

            async def done() -> bool:
                rows = await query(
                    database_url,
                    "SELECT count(*) FILTER (WHERE subject = %s), count(*) FILTER (WHERE "
                    "subject = %s), (SELECT count(*) FROM flowscope_consumer c JOIN "
                    "flowscope_stream s ON s.id = c.stream_id WHERE s.name = ANY(%s)) "
                    "FROM flowscope_event WHERE position(%s in payload) > 0",
                    f"{namespace}.orders.shipped", f"{namespace}.notifications.email",
                    streams, oid.encode(),
                )  # fmt: skip
                shipped, mailed, consumers = rows[0]
                return bool(shipped == 1 and mailed >= 2 and consumers == len(CONSUMERS))

            await eventually(done, 60, "the order shipped, mailed twice, consumers sampled")
            await asyncio.sleep(0.5)  # anything still in flight is written
    finally:
        await demo.stop()
    return oid


def test_a_demo_order_is_one_journey_across_five_services(
    logged_in: Client, database_url: str, nats_server: Any, unique: str
) -> None:
    ns = f"j{unique}"
    oid = asyncio.run(_demo_order(nats_server.url, database_url, ns))
    with connection.cursor() as cur:
        cur.execute("SELECT DISTINCT trace_id, count(*) OVER () FROM flowscope_event "
                    "WHERE position(%s in payload) > 0", [oid.encode()])  # fmt: skip
        found = cur.fetchall()
        assert len(found) == 1 and found[0][0], found  # one trace carries the whole order
        trace, events_of_order = found[0]
    body = logged_in.get(f"/api/traces/{trace}", {"limit": 500}).json()
    items = body["items"]
    assert len(items) == body["total"] == events_of_order >= 7
    assert [i["ts"] for i in items] == sorted(i["ts"] for i in items)
    local = {i["id"]: i["subject"][len(ns) + 1 :] for i in items}
    assert {s["name"] for s in body["services"]} == {
        "orders", "inventory", "payments", "shipping", "notifications"}  # fmt: skip
    # each step follows the event its service consumed
    follows = {
        "inventory.reserved": {"orders.created"},
        "payments.authorized": {"inventory.reserved"},
        "orders.confirmed": {"payments.authorized"},
        "shipping.requests": {"payments.authorized"},
        "orders.shipped": {"shipping.requests"},
        "notifications.email": {"orders.confirmed", "orders.shipped"},
    }
    by_position = {(i["stream"], i["seq"]): i for i in items}
    for item in items:
        subject = local[item["id"]]
        if subject == "orders.created":
            assert item["parent"] is None
            continue
        parent = item["parent"]
        assert parent and parent["how"] == "consumed", item
        parent_subject = parent_subject_of(parent, by_position, items, ns)
        assert parent_subject in follows[subject], (subject, parent_subject)
    doc = parse(logged_in.get(f"/traces/{trace}/").content.decode())
    assert [r.attrs["data-service"] for r in _rows(doc)] == [i["service"] for i in items]


def parent_subject_of(parent: dict[str, Any], by_position: dict[Any, Any],
                      items: list[dict[str, Any]], ns: str) -> str:  # fmt: skip
    """The parent's subject: by stream and sequence, or by span for an event recorded without a
    sequence (work-queue streams read by subject subscription)."""
    match = by_position.get((parent["stream"], parent["seq"])) if parent["seq"] else None
    if match is None:
        match = next(i for i in items if i["span_id"] == parent["span_id"])
    return str(match["subject"][len(ns) + 1 :])
