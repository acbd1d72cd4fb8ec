"""The tap against a real nats-server and PostgreSQL: what it records and what it leaves alone."""

from __future__ import annotations

import asyncio
import json

import nats
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from eventbus import scan
from eventbus.observers import ObserverSettings
from tests.taputil import (
    checkpoint,
    eventually,
    gaps,
    query,
    recorded_seqs,
    stream_events,
    tap_running,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("reader", ["wire", "nats-py"])
async def test_it_records_every_field_byte_exact(nats_server, database_url, unique, reader):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"REC_{unique}"
    await js.add_stream(name=stream, subjects=[f"rec.{unique}.>"])
    huge = bytes(range(256)) * 800  # 200 KiB: beyond the 64 KiB preview
    payloads = [
        b"\xff\xfe\x00not utf-8\x80",
        "<script>alert('x')</script> ünïcödé".encode(),
        huge,
        b"",
    ]
    # each payload twice, with headers and without, the last one on a subject that is not ASCII
    # (which the tap's scanner, eventbus/scan.py, leaves to its general path)
    for i, data in enumerate(payloads):
        await js.publish(
            f"rec.{unique}.{i}",
            data,
            headers={"Nats-Msg-Id": f"msg-{i}", "TraceParent": TRACEPARENT,
                     "Flowscope-Service": "orders", "X-Odd-Header": "value with spaces"},
        )  # fmt: skip
        await js.publish(f"rec.{unique}.{i}" + (".ü" if i == 3 else ""), data)
    settings = ObserverSettings(inactive_threshold=5.0, reader=reader)
    async with tap_running(nats_server.url, database_url, observer=settings) as tap:
        rows = await eventually(
            lambda: _with_len(stream_events(database_url, stream), 8), what="8 events"
        )
        kind = type(tap.observers[stream]).__name__
        scanned = getattr(tap.observers[stream], "scanned", None)
    await nc.close()
    assert kind == {"wire": "WireConsumerObserver", "nats-py": "ConsumerObserver"}[reader]
    # the C scanner reads all but the non-ASCII subject; the Python one only plain deliveries
    by_scanner = {"c": 7, "python": 3}[scan.IMPLEMENTATION]
    assert scanned == {"wire": by_scanner, "nats-py": None}[reader]
    assert len(rows) == 8
    for n, (
        seq,
        subject,
        size,
        payload,
        truncated,
        msg_id,
        trace,
        span,
        service,
        headers,
    ) in enumerate(rows):
        i, headed = n // 2, n % 2 == 0
        assert seq == n + 1
        assert subject == f"rec.{unique}.{i}" + ("" if headed or i != 3 else ".ü")
        assert size == len(payloads[i])
        assert bytes(payload) == payloads[i][: 64 * 1024]
        assert truncated == (len(payloads[i]) > 64 * 1024)
        if headed:
            assert msg_id == f"msg-{i}" and service == "orders"
            assert (trace, span) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
            assert headers["X-Odd-Header"] == "value with spaces"
        else:
            assert (msg_id, trace, span, service, headers) == (None,) * 5


async def _with_len(coro, n):
    rows = await coro
    return rows if len(rows) >= n else None


async def _observer_ready(tap, stream):
    observer = tap.observers.get(stream)
    return observer is not None and observer.ready.is_set()


async def _consume_all(js, stream, durable, n):
    """An application consumer: fetch and ack until it has `n` messages. Returns their seqs."""
    sub = await js.pull_subscribe_bind(durable, stream)
    seqs: list[int] = []
    while len(seqs) < n:
        try:
            msgs = await sub.fetch(min(100, n - len(seqs)), timeout=2)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            seqs.append(m.metadata.sequence.stream)
            await m.ack_sync()
    return seqs


async def _app_run(nats_url, stream, subject, retention, n, tap_ctx):
    """Create a stream with an application durable, publish n, let the app consume them.
    Returns (delivered stream seqs, consumer state, stream message count after acks)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject + ".>"], retention=retention))
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="app", ack_policy=AckPolicy.EXPLICIT, max_deliver=5)
    )
    async with tap_ctx() as tap:
        if tap is not None:  # a subject subscription misses what is published before it
            await eventually(lambda: _observer_ready(tap, stream), what="observer ready")
        for i in range(n):
            await js.publish(f"{subject}.{i % 5}", f"event {i}".encode())
        delivered = await _consume_all(js, stream, "app", n)
        await asyncio.sleep(0.5)  # any stray redelivery would show up in the state below
        info = await js.consumer_info(stream, "app")
        state = (info.num_pending, info.num_ack_pending, info.num_redelivered,
                 info.delivered.stream_seq, info.ack_floor.stream_seq)  # fmt: skip
        remaining = None
        for _ in range(50):  # interest / work-queue streams drop acked messages
            remaining = (await js.stream_info(stream)).state.messages
            if retention == RetentionPolicy.LIMITS or remaining == 0:
                break
            await asyncio.sleep(0.1)
        consumers = [c.name for c in await js.consumers_info(stream)]
    await nc.close()
    return delivered, state, remaining, consumers


@pytest.mark.parametrize(
    "retention", [RetentionPolicy.LIMITS, RetentionPolicy.INTEREST, RetentionPolicy.WORK_QUEUE]
)
async def test_applications_see_the_same_with_and_without_the_tap(
    nats_server, database_url, unique, retention
):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def no_tap():
        yield None

    def with_tap():
        return tap_running(nats_server.url, database_url)

    n = 300
    without = await _app_run(nats_server.url, f"A_{unique}", f"a{unique}", retention, n, no_tap)
    tapped = await _app_run(nats_server.url, f"B_{unique}", f"b{unique}", retention, n, with_tap)
    assert without[0] == tapped[0] == list(range(1, n + 1))  # same deliveries, in order
    assert without[1] == tapped[1] == (0, 0, 0, n, n)  # same ack state, no redelivery
    assert without[2] == tapped[2]  # interest / work-queue: acked messages left the stream
    assert "app" in tapped[3]
    if retention == RetentionPolicy.WORK_QUEUE:
        assert tapped[3] == ["app"]  # the tap made no consumer on a work-queue stream
    rows = await query(
        database_url,
        "SELECT count(*), count(e.seq), max(s.observed_by) FROM flowscope_event e "
        "JOIN flowscope_stream s ON s.id = e.stream_id WHERE s.name = %s",
        f"B_{unique}",
    )
    total, with_seq, mode = rows[0]
    assert total == n  # every event recorded
    if retention == RetentionPolicy.WORK_QUEUE:
        assert (with_seq, mode) == (0, "subject")
    else:
        assert (with_seq, mode) == (n, "consumer")


async def test_it_discovers_streams_created_updated_and_deleted_while_running(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = f"DISC_{unique}"

    async def live_row():
        return await query(
            database_url,
            "SELECT id, subjects FROM flowscope_stream WHERE name = %s AND deleted_at IS NULL",
            name,
        )

    async with tap_running(nats_server.url, database_url):
        await js.add_stream(name=name, subjects=[f"disc.{unique}.a"])
        await js.publish(f"disc.{unique}.a", b"one")
        await eventually(lambda: _with_len(recorded_seqs(database_url, name), 1))
        first_id = (await live_row())[0][0]
        await js.update_stream(
            StreamConfig(name=name, subjects=[f"disc.{unique}.a", f"disc.{unique}.b"])
        )
        await eventually(
            lambda: _subjects_are(live_row(), [f"disc.{unique}.a", f"disc.{unique}.b"]),
            what="updated subjects",
        )
        await js.delete_stream(name)
        await eventually(lambda: _is_empty(live_row()), what="stream marked deleted")
        # Same name again: a new incarnation whose sequences start at 1 again.
        await js.add_stream(name=name, subjects=[f"disc.{unique}.a"])
        await js.publish(f"disc.{unique}.a", b"again")
        await eventually(lambda: _with_len(recorded_seqs(database_url, name), 1))
        assert (await live_row())[0][0] != first_id
    await nc.close()
    rows = await query(
        database_url,
        "SELECT count(*) FILTER (WHERE deleted_at IS NOT NULL), count(*) FROM flowscope_stream "
        "WHERE name = %s",
        name,
    )
    assert rows[0] == (1, 2)


async def _subjects_are(coro, subjects):
    rows = await coro
    return rows and rows[0][1] == subjects


async def _is_empty(coro):
    return not await coro


async def test_it_announces_each_committed_batch(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"DIG_{unique}"
    await js.add_stream(name=stream, subjects=[f"dig.{unique}.>"])
    digests = []

    async def collect(msg):
        digests.append(json.loads(msg.data))

    sub = await nc.subscribe("flowscope.digest.events", cb=collect)
    async with tap_running(nats_server.url, database_url):
        for i in range(50):
            await js.publish(f"dig.{unique}.{i % 2}", b"x", headers={"Flowscope-Service": "svc"})

        async def total():
            return sum(d["streams"].get(stream, {}).get("count", 0) for d in digests) >= 50

        await eventually(total, what="digests for 50 events")
    await sub.unsubscribe()
    await nc.close()
    mine = [d for d in digests if stream in d["streams"]]
    assert sum(d["streams"][stream]["count"] for d in mine) == 50
    assert max(d["streams"][stream]["last_seq"] for d in mine) == 50
    subjects: dict[str, int] = {}
    for d in mine:
        for s, c in d["subjects"].items():
            subjects[s] = subjects.get(s, 0) + c
    assert subjects == {f"dig.{unique}.0": 25, f"dig.{unique}.1": 25}
    assert mine[-1]["newest"][0]["service"] == "svc"


async def test_it_reads_a_republishing_work_queue_stream_with_sequences(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"RP_{unique}"
    resp = await nc.request(
        f"$JS.API.STREAM.CREATE.{stream}",
        json.dumps({"name": stream, "subjects": [f"rp.{unique}.>"], "retention": "workqueue",
                    "storage": "file", "num_replicas": 1,
                    "republish": {"src": ">", "dest": f"flowscope.republish.{stream}.>"}}).encode(),
    )  # fmt: skip
    assert "error" not in json.loads(resp.data)
    async with tap_running(nats_server.url, database_url):
        await eventually(
            lambda: _row_mode(database_url, stream, "republish"), what="republish observation"
        )
        for i in range(20):
            await js.publish(f"rp.{unique}.{i}", f"job {i}".encode())
        rows = await eventually(lambda: _with_len(stream_events(database_url, stream), 20))
    await nc.close()
    assert [r[0] for r in rows] == list(range(1, 21))
    assert [r[1] for r in rows] == [f"rp.{unique}.{i}" for i in range(20)]  # original subjects
    assert bytes(rows[3][3]) == b"job 3"


async def _row_mode(database_url, stream, mode):
    rows = await query(
        database_url, "SELECT observed_by FROM flowscope_stream WHERE name = %s", stream
    )
    return rows and rows[0][0] == mode


async def test_a_slow_database_stops_reads_instead_of_growing_memory(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"BP_{unique}"
    await js.add_stream(name=stream, subjects=[f"bp.{unique}"])
    n = 5000
    buffer_size = 400
    async with tap_running(
        nats_server.url, database_url, buffer_size=buffer_size, batch_size=100
    ) as tap:
        await eventually(lambda: _row_mode(database_url, stream, "consumer"))
        blocker = await psycopg.AsyncConnection.connect(database_url)
        await blocker.execute("LOCK TABLE flowscope_checkpoint IN ACCESS EXCLUSIVE MODE")
        for i in range(n):
            await js.publish(f"bp.{unique}", str(i).encode())
        await asyncio.sleep(2)  # the writer is stuck behind the lock meanwhile
        observer = tap.observers[stream]
        # Bounded: the buffer, one batch in the writer's hands, and what was requested.
        assert tap.writer.held <= buffer_size
        assert observer.received <= buffer_size + 100 + 3 * 1000
        assert observer.received < n
        await blocker.rollback()
        await blocker.close()
        await eventually(lambda: _with_len(recorded_seqs(database_url, stream), n), timeout=60)
    await nc.close()
    assert await recorded_seqs(database_url, stream) == list(range(1, n + 1))
    assert await gaps(database_url, stream) == []
    assert await checkpoint(database_url, stream) == n
