"""The demo services against a real nats-server: the saga, compensation, idempotency, graceful
shutdown, dead letters, trace context, bounded concurrency, and the circuit breaker."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus.demo.breaker import CircuitBreaker, CircuitOpen
from eventbus.demo.run import Demo, DemoConfig
from eventbus.demo.topology import Settings
from eventbus.demo.worker import Worker
from eventbus.records import parse_traceparent
from tests.taputil import eventually

SERVICE_OF = {  # who publishes each event of the saga
    "orders.created": "orders",
    "inventory.reserved": "inventory",
    "payments.authorized": "payments",
    "orders.confirmed": "orders",
    "shipping.requests": "orders",  # the orders service's command to shipping
    "orders.shipped": "shipping",
    "notifications.email": "notifications",
}


@dataclass
class Seen:
    subject: str  # without the namespace
    headers: dict[str, str]
    data: bytes

    @property
    def order_id(self) -> str | None:
        try:
            return str(json.loads(self.data)["order_id"])
        except (ValueError, KeyError, TypeError):
            return None


class Wiretap:
    """A plain core subscription on the namespace: every event the services publish."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.events: list[Seen] = []

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url)

        async def on(msg: Msg) -> None:
            local = msg.subject[len(self.namespace) + 1 :]
            self.events.append(Seen(local, dict(msg.headers or {}), msg.data))

        await self.nc.subscribe(f"{self.namespace}.>", cb=on)
        await self.nc.flush()

    def of(self, order_id: str) -> list[Seen]:
        return [e for e in self.events if e.order_id == order_id]

    def subjects(self, order_id: str) -> list[str]:
        return [e.subject for e in self.of(order_id)]

    async def close(self) -> None:
        await self.nc.close()


def config(url: str, namespace: str, **kw: Any) -> DemoConfig:
    base: dict[str, Any] = {
        "rate": 0,
        "failure_rate": 0,
        "namespace": namespace,
        "seed": 7,
        "retry_delay": 0.4,
        "topology": Settings(max_deliver=3, ack_wait=2.0),
    }
    base.update(kw)
    return DemoConfig(url, **base)


@pytest.fixture
async def wiretap(nats_server, unique):
    tap = Wiretap(f"d{unique}")
    await tap.start(nats_server.url)
    yield tap
    await tap.close()


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _has(wiretap: Wiretap, order_id: str, *subjects: str) -> bool:
    seen = wiretap.subjects(order_id)
    return all(s in seen for s in subjects)


async def test_a_saga_completes_end_to_end_with_trace_context_and_service_headers(
    nats_server, wiretap, spans
):
    provider, exporter = spans
    demo = Demo(config(nats_server.url, wiretap.namespace), tracer_provider=provider)
    await demo.start()
    try:
        oid = await demo.place_order()
        await eventually(
            lambda: _has(wiretap, oid, "orders.shipped", "notifications.email"),
            what="order shipped and mailed",
        )
        await eventually(lambda: _emails(demo, oid, 2), what="two mails sent")
    finally:
        await demo.stop()
    events = wiretap.of(oid)
    assert [e.subject for e in events][:5] == [
        "orders.created",
        "inventory.reserved",
        "payments.authorized",
        "orders.confirmed",
        "shipping.requests",
    ]
    assert {"orders.shipped", "notifications.email"} <= {e.subject for e in events}
    assert sorted(m["template"] for m in demo.world.emails) == ["order-confirmed", "order-shipped"]
    for e in events:  # every event names its service and has an id derived from its cause
        assert e.headers["Flowscope-Service"] == SERVICE_OF[e.subject]
        assert e.headers["Nats-Msg-Id"].startswith(f"{oid}.{e.subject}")
    mail_ids = {e.headers["Nats-Msg-Id"] for e in events if e.subject == "notifications.email"}
    assert mail_ids == {
        f"{oid}.notifications.email.confirmed",
        f"{oid}.notifications.email.shipped",
    }
    # One trace for the whole saga; each message's span is a child of the one that caused it.
    contexts: dict[str, tuple[str, str]] = {}
    for e in events:
        parsed = parse_traceparent(e.headers["traceparent"])
        assert parsed is not None, e.headers["traceparent"]
        contexts[e.subject] = parsed
    assert len({trace for trace, _ in contexts.values()}) == 1
    by_id = {s.context.span_id: s for s in exporter.get_finished_spans() if s.context}

    def span_of(subject: str) -> int:
        return int(contexts[subject][1], 16)

    def cause_of(subject: str) -> int:
        producer = by_id[span_of(subject)]  # the span that published it
        assert producer.parent is not None
        consumer = by_id[producer.parent.span_id]  # handling the message that caused it
        assert consumer.parent is not None
        return int(consumer.parent.span_id)  # the causing message's producer span

    assert cause_of("inventory.reserved") == span_of("orders.created")
    assert cause_of("payments.authorized") == span_of("inventory.reserved")
    assert cause_of("orders.shipped") == span_of("shipping.requests")
    assert by_id[span_of("orders.created")].parent is None  # a new order: a new trace


async def _emails(demo: Demo, oid: str, n: int) -> bool:
    return len([m for m in demo.world.emails if m["order_id"] == oid]) >= n


async def test_a_failed_payment_is_compensated(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace))
    await demo.start()
    try:
        oid = await demo.place_order(simulate="decline")
        await eventually(
            lambda: _has(wiretap, oid, "inventory.released", "orders.cancelled"),
            what="compensation",
        )
        await eventually(lambda: _emails(demo, oid, 1), what="cancellation mailed")
    finally:
        await demo.stop()
    subjects = wiretap.subjects(oid)
    assert "payments.declined" in subjects
    assert "orders.confirmed" not in subjects and "shipping.requests" not in subjects
    assert oid not in demo.world.reservations  # the stock reserved for it was released
    assert [m["template"] for m in demo.world.emails] == ["order-cancelled"]


class LosesFirstAck(Worker):
    """As if the process died after doing the work but before its ack reached the server."""

    lost = 0

    async def _ack(self, msg: Msg) -> None:
        if LosesFirstAck.lost == 0:
            LosesFirstAck.lost += 1
            return
        await super()._ack(msg)


async def test_a_duplicate_is_processed_once(nats_server, wiretap):
    demo = Demo(
        config(nats_server.url, wiretap.namespace),
        worker_types={"inventory": LosesFirstAck},
    )
    await demo.start()
    try:
        oid = await demo.place_order()
        # The same order published again with the same Nats-Msg-Id (a producer's retry).
        created = next(e for e in wiretap.events if e.subject == "orders.created")
        js = demo.js
        assert js is not None
        ack = await js.publish(
            f"{wiretap.namespace}.orders.created", created.data, headers=created.headers
        )
        assert ack.duplicate
        await eventually(lambda: _has(wiretap, oid, "orders.shipped"), what="shipped")
        # the lost ack: the server redelivers after ack_wait; the processed record says done
        inventory = demo.workers["inventory"].stats
        await eventually(lambda: _true(inventory.duplicates == 1), what="redelivery seen")
    finally:
        await demo.stop()
    assert LosesFirstAck.lost == 1
    assert inventory.processed == 1  # the work was done once
    assert wiretap.subjects(oid).count("inventory.reserved") == 1
    assert wiretap.subjects(oid).count("orders.shipped") == 1


async def _true(value: bool) -> bool:
    return value


async def _consumers_idle(js: Any, streams: list[str]) -> list[tuple[str, int]]:
    busy = []
    for stream in streams:
        for info in await js.consumers_info(stream):
            if info.num_ack_pending:
                busy.append((info.name, info.num_ack_pending))
    return busy


class SlowWorker(Worker):
    """Takes a while over each message, so a shutdown finds work in hand."""

    async def _process(self, msg: Msg, incoming: Any, span: Any) -> None:
        await asyncio.sleep(1.5)  # longer than the connection takes to drain
        await super()._process(msg, incoming, span)


async def test_shutdown_finishes_what_it_holds_and_a_restart_completes_the_rest(
    nats_server, wiretap
):
    ns = wiretap.namespace
    first = Demo(config(nats_server.url, ns, concurrency=4), worker_types={"inventory": SlowWorker})
    await first.start()
    orders = [await first.place_order() for _ in range(30)]
    inventory = first.workers["inventory"]
    await eventually(
        lambda: _true(inventory.stats.processed >= 4 and len(inventory.inflight) > 0),
        what="some done, more in hand",
    )
    in_hand = len(inventory.inflight)
    await first.stop()
    assert in_hand > 0  # the stop came with messages in hand
    # Graceful: nothing is left delivered-but-unacked, and everything acked had its effects.
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    streams = [f"{ns.upper()}_{s}" for s in ("ORDERS", "INVENTORY", "PAYMENTS", "SHIPPING")]
    assert await _consumers_idle(js, streams) == []
    for msg_id in first.workers["inventory"].stats.acked:
        oid = msg_id.split(".")[0]
        assert "inventory.reserved" in wiretap.subjects(oid), f"acked {msg_id} without effect"
    assert first.workers["shipping"].stats.processed < 30  # it was stopped mid-flight

    second = Demo(config(nats_server.url, ns, seed=8))
    await second.start()
    try:

        async def all_shipped() -> bool:
            return all("orders.shipped" in wiretap.subjects(o) for o in orders)

        await eventually(all_shipped, timeout=60, what="every order shipped")
    finally:
        await second.stop()
    info = await js.stream_info(f"{ns.upper()}_ORDERS", subjects_filter=f"{ns}.orders.>")
    await nc.close()
    counts = info.state.subjects or {}
    assert counts[f"{ns}.orders.created"] == 30
    assert counts[f"{ns}.orders.confirmed"] == 30  # once each, across the restart
    assert counts[f"{ns}.orders.shipped"] == 30


async def test_poison_and_exhausted_messages_end_as_dead_letters(nats_server, wiretap):
    ns = wiretap.namespace
    nc = await nats.connect(nats_server.url)
    advisories: list[tuple[str, dict[str, Any]]] = []

    async def on(msg: Msg) -> None:
        advisories.append((msg.subject.split(".")[4], json.loads(msg.data)))

    stream = f"{ns.upper()}_ORDERS"
    await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.inventory", cb=on)
    await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.inventory", cb=on)
    demo = Demo(config(nats_server.url, ns))
    await demo.start()
    try:
        poison = await demo.place_order(simulate="poison")
        exhaust = await demo.place_order(simulate="exhaust")
        await eventually(lambda: _true(len(advisories) >= 2), what="two dead-letter advisories")
    finally:
        await demo.stop()
    await nc.close()
    kinds = dict(advisories)
    assert set(kinds) == {"MSG_TERMINATED", "MAX_DELIVERIES"}
    assert kinds["MSG_TERMINATED"]["stream_seq"] == 1
    assert kinds["MSG_TERMINATED"]["reason"].startswith("malformed JSON")
    assert kinds["MAX_DELIVERIES"]["stream_seq"] == 2
    assert kinds["MAX_DELIVERIES"]["deliveries"] == 3
    assert wiretap.subjects(exhaust) == ["orders.created"]  # it went no further
    assert poison not in {e.order_id for e in wiretap.events}  # unreadable: no order id


async def test_transient_failures_are_retried_until_they_pass(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace))
    await demo.start()
    try:
        oid = await demo.place_order(simulate="transient")
        await eventually(lambda: _has(wiretap, oid, "orders.shipped"), what="shipped")
    finally:
        await demo.stop()
    assert demo.workers["payments"].stats.retried == 2  # naked twice, with delay, then charged


async def test_each_consumer_works_on_at_most_its_concurrency(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace, concurrency=3))
    await demo.start()
    try:
        orders = [await demo.place_order() for _ in range(40)]
        await eventually(
            lambda: _true(all("orders.shipped" in wiretap.subjects(o) for o in orders)),
            timeout=60,
            what="all shipped",
        )
    finally:
        await demo.stop()
    peaks = {name: w.stats.max_concurrent for name, w in demo.workers.items()}
    assert max(peaks.values()) == 3, peaks  # the bound was reached, and never passed


async def test_rate_zero_places_no_orders(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace, rate=0))
    await demo.start()
    await asyncio.sleep(0.5)
    await demo.stop()
    assert demo.orders_placed == 0 and wiretap.events == []


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_closes_after_a_good_trial():
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        b.before()
        b.failure()
    assert b.state == "closed"
    b.before()
    b.failure()
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        b.before()
    assert refused.value.retry_in == 10
    clock.now = 10
    assert b.state == "half-open"
    b.before()  # the one trial call
    with pytest.raises(CircuitOpen):
        b.before()  # no second call while the trial runs
    b.success()
    assert b.state == "closed" and b.failures == 0


def test_breaker_reopens_when_the_trial_fails():
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    b.before()
    b.failure()
    clock.now = 5
    b.before()
    b.failure()
    assert b.state == "open"
    clock.now = 9
    with pytest.raises(CircuitOpen):
        b.before()


async def test_breaker_call_counts_failures_and_successes():
    b = CircuitBreaker(threshold=2, cooldown=60)

    async def boom() -> str:
        raise ConnectionError("503")

    async def ok() -> str:
        return "fine"

    with pytest.raises(ConnectionError):
        await b.call(boom)
    assert await b.call(ok) == "fine" and b.failures == 0
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await b.call(boom)
    with pytest.raises(CircuitOpen):
        await b.call(ok)


class FetchFails(Worker):
    """nats-py's fetch at times raises the builtin TimeoutError rather than its own (when the
    server's answer to its no-wait probe comes just before the deadline), or something else."""

    failures: list[BaseException] = [TimeoutError(), RuntimeError("boom")]

    async def _fetch(self, sub: Any, n: int) -> list[Msg]:
        if self.failures:
            raise self.failures.pop(0)
        return await super()._fetch(sub, n)


async def test_a_consumer_keeps_pulling_after_a_fetch_raises(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace), worker_types={"inventory": FetchFails})
    await demo.start()
    try:
        oid = await demo.place_order()
        await eventually(lambda: _has(wiretap, oid, "orders.shipped"), what="shipped")
    finally:
        await demo.stop()
    assert FetchFails.failures == []


async def test_without_a_tap_it_waits_as_long_as_asked_then_places_orders(nats_server, wiretap):
    demo = Demo(config(nats_server.url, wiretap.namespace, rate=20.0, wait_for_tap=1.0))
    await demo.start()
    await asyncio.sleep(0.7)
    placed_while_waiting = demo.orders_placed
    await asyncio.sleep(1.0)
    await demo.stop()
    assert placed_while_waiting == 0
    assert demo.orders_placed > 0


async def test_a_backlog_waits_for_the_tap_before_any_service_consumes_it(
    nats_server, wiretap, database_url
):
    """A second `make run`: the previous run left a notification in a work-queue stream. The
    services must not work it off before a tap subscribes: what they would publish meanwhile
    (the next saga steps) would pass the work-queue streams unseen."""
    from eventbus.demo.topology import Names
    from tests.taputil import tap_running

    names = Names(wiretap.namespace)
    first = Demo(config(nats_server.url, wiretap.namespace))  # creates the streams, no orders
    await first.start()
    await first.stop()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = names.stream("NOTIFICATIONS")
    await js.publish(names.subject("notifications.email"), b'{"order_id": "left-over"}')
    demo = Demo(config(nats_server.url, wiretap.namespace, wait_for_tap=60.0))
    await demo.start()
    try:
        await asyncio.sleep(1.5)
        assert await _delivered(js, stream) == 0, "delivered to a service while no tap watched"
        async with tap_running(nats_server.url, database_url):
            # the tap watches every demo stream, the services start, the backlog is delivered
            await eventually(lambda: _delivered(js, stream), timeout=30, what="delivered")
    finally:
        await demo.stop()
        await nc.close()


async def _delivered(js, stream: str) -> int:
    """Messages the stream's consumers were given, all consumers together."""
    return sum(c.delivered.stream_seq for c in await js.consumers_info(stream))
