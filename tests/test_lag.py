"""Consumer lag, sampled by the tap: real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig

from eventbus.lag import ConsumerState, LagSample, consumer_state, diff, downsample, run_sampler
from eventbus.registry import describe, js_api, upsert_stream
from tests.taputil import eventually, query, tap_running


def test_consumer_state_reads_consumer_info():
    info = {
        "name": "billing",
        "num_pending": 6,
        "num_ack_pending": 2,
        "num_redelivered": 1,
        "num_waiting": 3,
        "delivered": {"consumer_seq": 5, "stream_seq": 4},
        "ack_floor": {"consumer_seq": 3, "stream_seq": 2},
        "config": {"durable_name": "billing"},
        "created": "2026-11-25T10:00:00.123456789Z",
    }
    c = consumer_state(info)
    assert (c.name, c.lag, c.counters()) == ("billing", 8, (6, 2, 1, 3, 4, 2, 3))
    assert c.created == datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


def test_diff_reports_only_changed_new_and_removed_consumers():
    a = ConsumerState("a", 1, 0, 0, 0, 5, 5, 5)
    b = ConsumerState("b", 2, 0, 0, 0, 5, 5, 5)
    c = ConsumerState("c", 0, 0, 0, 0, 0, 0, 0)
    previous = {"a": a.counters(), "b": (9, 0, 0, 0, 5, 5, 5), "gone": (0,) * 7}
    changed, removed = diff(previous, [a, b, c])
    assert [x.name for x in changed] == ["b", "c"]
    assert removed == ["gone"]


async def _consumer_row(database_url: str, stream: str, name: str) -> tuple[Any, ...] | None:
    rows = await query(
        database_url,
        "SELECT c.num_pending, c.num_ack_pending, c.num_redelivered, c.num_waiting, "
        "c.delivered_stream_seq, c.ack_floor_stream_seq, c.deleted_at IS NOT NULL "
        "FROM flowscope_consumer c JOIN flowscope_stream s ON s.id = c.stream_id "
        "WHERE s.name = %s AND c.name = %s",
        stream,
        name,
    )
    return rows[0] if rows else None


async def _row_is(database_url: str, stream: str, name: str, expected: tuple[Any, ...]) -> bool:
    return await _consumer_row(database_url, stream, name) == expected


async def test_tap_samples_every_consumers_lag_and_the_stream_state(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"LAG_{unique}", f"lag.{unique}"
    await js.add_stream(name=stream, subjects=[subject])
    for _ in range(10):
        await js.publish(subject, b"x" * 100)
    app = await js.pull_subscribe(subject, durable="billing")
    async with tap_running(nats_server.url, database_url, lag_interval=0.3):
        # pending, ack pending, redelivered, waiting, delivered seq, ack floor seq, deleted
        await eventually(
            lambda: _row_is(database_url, stream, "billing", (10, 0, 0, 0, 0, 0, False)),
            what="10 pending",
        )
        msgs = await app.fetch(4, timeout=5)
        for m in msgs[:2]:
            await m.ack_sync()
        await eventually(
            lambda: _row_is(database_url, stream, "billing", (6, 2, 0, 0, 4, 2, False)),
            what="6 pending, 2 unacked",
        )
        state = await query(
            database_url,
            "SELECT messages, first_seq, last_seq, consumer_count, bytes > 1000, "
            "now() - state_at < interval '1 minute' FROM flowscope_stream WHERE name = %s",
            stream,
        )
        samples = await query(
            database_url,
            "SELECT count(*), max(num_pending), min(num_pending) FROM flowscope_consumer_sample "
            "WHERE consumer = 'billing'",
        )
        stream_samples = await query(
            database_url, "SELECT max(last_seq), max(consumer_count) FROM flowscope_stream_sample"
        )
        # the tap's own consumer is on the stream too, but it is not an application's
        tap_rows = await query(
            database_url, "SELECT name FROM flowscope_consumer WHERE name LIKE 'flowscope_tap%%'"
        )
        server = await js.stream_info(stream)
        await js.delete_consumer(stream, "billing")
        await eventually(
            lambda: _row_is(database_url, stream, "billing", (6, 2, 0, 0, 4, 2, True)),
            what="deleted consumer marked",
        )
    await nc.close()
    assert server.state.consumer_count == 2  # billing and the tap
    assert state == [(10, 1, 10, 1, True, True)]  # and when the server said so
    count, most, least = samples[0]
    assert count >= 2 and (most, least) == (10, 6)  # a time series, not just the latest
    assert stream_samples == [(10, 1)]
    assert tap_rows == []


async def test_a_filtered_consumers_ack_floor_is_kept_in_deliveries_too(
    nats_server, database_url, unique
):
    """The ack rate is the rise of the floor's consumer sequence: a consumer that sees one
    subject in four acks 5 messages while its floor's stream sequence passes 17."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"FILT_{unique}"
    await js.add_stream(name=stream, subjects=[f"filt.{unique}.*"])
    for _ in range(5):
        await js.publish(f"filt.{unique}.mine", b"x")
        for _ in range(3):
            await js.publish(f"filt.{unique}.other", b"y")
    app = await js.pull_subscribe(f"filt.{unique}.mine", durable="mine")
    for m in await app.fetch(5, timeout=5):
        await m.ack_sync()

    async def floors() -> list[tuple[Any, ...]]:
        return await query(
            database_url,
            "SELECT c.ack_floor_stream_seq, c.ack_floor_consumer_seq, c.num_pending "
            "FROM flowscope_consumer c JOIN flowscope_stream s ON s.id = c.stream_id "
            "WHERE s.name = %s AND c.name = 'mine'",
            stream,
        )

    async with tap_running(nats_server.url, database_url, lag_interval=0.3):
        await eventually(lambda: _equals(floors(), [(17, 5, 0)]), what="floor 17 / 5 deliveries")
        samples = await query(
            database_url,
            "SELECT DISTINCT ack_floor_consumer_seq FROM flowscope_consumer_sample "
            "WHERE consumer = 'mine'",
        )
    await nc.close()
    assert samples == [(5,)]


async def _equals(found: Awaitable[Any], expected: Any) -> bool:
    return bool(await found == expected)


async def test_all_consumers_are_sampled_beyond_one_page(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"MANY_{unique}"
    await js.add_stream(name=stream, subjects=[f"many.{unique}"])
    await asyncio.gather(
        *(
            js.add_consumer(
                stream, ConsumerConfig(durable_name=f"c{i:03d}", ack_policy=AckPolicy.EXPLICIT)
            )
            for i in range(300)
        )
    )
    await js.publish(f"many.{unique}", b"one")
    async with tap_running(nats_server.url, database_url, lag_interval=0.3):

        async def all_sampled() -> bool:
            rows = await query(
                database_url,
                "SELECT count(*) FROM flowscope_consumer WHERE num_pending = 1 "
                "AND deleted_at IS NULL",
            )
            return bool(rows[0][0] == 300)

        await eventually(all_sampled, what="300 consumers with 1 pending")
    await nc.close()


async def _register(nats_url: str, database_url: str, stream: str) -> None:
    nc = await nats.connect(nats_url)
    info = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}")
    await nc.close()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await upsert_stream(conn, describe(info))


async def test_sampler_announces_changes_and_survives_outages(
    nats_server, database_url, unique, caplog
):
    caplog.set_level(logging.INFO)
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    stream, subject = f"SAMP_{unique}", f"samp.{unique}"
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(stream, ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT))
    await _register(nats_server.url, database_url, stream)
    samples: list[LagSample] = []

    async def on_sample(s: LagSample) -> None:
        samples.append(s)

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_sampler(nc, database_url, 0.2, stop, on_sample=on_sample, streams=lambda: [stream])
    )
    await eventually(lambda: _has(samples, 3), what="3 rounds")
    first, quiet = samples[0].streams[stream], samples[2].streams[stream]
    assert first["consumers"] == {
        "w": {"lag": 0, "num_pending": 0, "num_ack_pending": 0, "num_redelivered": 0,
              "num_waiting": 0, "delivered_stream_seq": 0, "ack_floor_stream_seq": 0,
              "ack_floor_consumer_seq": 0}
    }  # fmt: skip
    assert quiet["consumers"] == {}  # nothing changed: nothing announced
    before = len(samples)
    await js.publish(subject, b"work")
    # A change is announced once, by the round that first sees it; the next round may follow it
    # within one poll of `eventually`, so look through every sample since the publish.
    changed = await eventually(
        lambda: _first_change(samples[before:], stream), what="a change announced"
    )
    assert changed["w"]["num_pending"] == 1 and changed["w"]["lag"] == 1

    # PostgreSQL drops the sampler's connection: it says so and samples again.
    await query(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'flowscope-tap' AND pid <> pg_backend_pid()",
    )
    await js.publish(subject, b"more work")
    await eventually(lambda: _row_is(database_url, stream, "w", (2, 0, 0, 0, 0, 0, False)))
    # NATS restarts under it: rounds are skipped, then resume.
    nats_server.restart()
    await eventually(lambda: _connected(nc), what="reconnected")
    await eventually(lambda: _publish(js, subject, b"after restart"), what="JetStream back")
    await eventually(lambda: _row_is(database_url, stream, "w", (3, 0, 0, 0, 0, 0, False)))
    stop.set()
    await asyncio.wait_for(task, 10)
    await nc.close()
    assert "lag sampler: PostgreSQL unavailable" in caplog.text
    assert "lag sampler: PostgreSQL reachable again" in caplog.text


async def _has(samples: list[LagSample], n: int) -> bool:
    return len(samples) >= n


async def _first_change(samples: list[LagSample], stream: str) -> dict[str, Any] | None:
    """The consumers of the first of `samples` that announced a change on `stream`, if any."""
    for s in samples:
        if consumers := s.streams.get(stream, {}).get("consumers"):
            return dict(consumers)
    return None


async def _publish(js: Any, subject: str, data: bytes) -> bool:
    """Publish, or False while JetStream is still recovering its streams after a restart."""
    try:
        # a msg id: a retry after a lost ack is stored once
        await js.publish(subject, data, timeout=1, headers={"Nats-Msg-Id": data.decode()})
    except nats.errors.Error:
        return False
    return True


async def _connected(nc: Any) -> bool:
    return bool(nc.is_connected)


async def test_downsample_keeps_one_sample_a_minute_and_drops_expired(database_url):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO flowscope_stream (name, created, retention, subjects, config, observed_by,"
            " observation_note, discovered_at, updated_at, messages, bytes, first_seq, last_seq, "
            "consumer_count) VALUES ('DS', now(), 'limits', '[]', '{}', 'consumer', '', now(), "
            "now(), 0, 0, 0, 0, 0) RETURNING id"
        )
        row = await cur.fetchone()
        assert row is not None
        sid = row[0]
        times = (
            [now - timedelta(days=2, seconds=s) for s in (1, 5, 10, 65, 70)]  # 2 minutes
            + [now - timedelta(days=9)]  # beyond keep_for
            + [now - timedelta(seconds=s) for s in (1, 2, 3)]  # recent: kept raw
        )
        for i, ts in enumerate(times):
            for consumer in ("a", "b"):
                await conn.execute(
                    "INSERT INTO flowscope_consumer_sample (ts, stream_id, consumer, num_pending, "
                    "num_ack_pending, num_redelivered, num_waiting, delivered_stream_seq, "
                    "ack_floor_stream_seq, downsampled) VALUES (%s, %s, %s, %s, 0, 0, 0, 0, 0, "
                    "false)",
                    (ts, sid, consumer, i),
                )
            await conn.execute(
                "INSERT INTO flowscope_stream_sample (ts, stream_id, messages, bytes, first_seq, "
                "last_seq, consumer_count, downsampled) VALUES (%s, %s, %s, 0, 0, 0, 0, false)",
                (ts, sid, i),
            )
        for _ in range(2):  # idempotent
            await downsample(conn, timedelta(days=1), timedelta(days=7), now=now)
    rows = await query(
        database_url,
        "SELECT consumer, num_pending, downsampled FROM flowscope_consumer_sample "
        "ORDER BY consumer, ts",
    )
    # two days ago: one row per minute, the minute's latest (i=3 at 11:58:55, i=0 at 11:59:59)
    expected = [(c, n, d) for c in ("a", "b") for n, d in ((3, True), (0, True), (6, False),
                                                          (7, False), (8, False))]  # fmt: skip
    assert sorted(rows) == sorted(expected)
    streams = await query(
        database_url, "SELECT messages, downsampled FROM flowscope_stream_sample ORDER BY ts"
    )
    assert streams == [(3, True), (0, True), (8, False), (7, False), (6, False)]
