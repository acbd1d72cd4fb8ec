"""The tap under faults: kill -9, messages lost while it was down, NATS restart, PostgreSQL
outage, several taps with failover, retention. Real nats-server, PostgreSQL and processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import nats
import psycopg
import pytest
from nats.js.api import StreamConfig

from eventbus.embedded import EmbeddedPostgres
from eventbus.partitions import Partitions, partition_name
from tests.taputil import (
    ROOT,
    checkpoint,
    eventually,
    gaps,
    query,
    recorded_seqs,
    tap_process,
    tap_running,
)


async def publish_many(js, subject: str, count: int, window: int = 500) -> None:
    """Publish `count` small messages, `window` acks in flight at a time."""
    sent = 0
    while sent < count:
        n = min(window, count - sent)
        futures = [js.publish(subject, f"event {sent + i}".encode()) for i in range(n)]
        await asyncio.gather(*futures)
        sent += n


async def checkpoint_at_least(database_url: str, stream: str, n: int) -> bool:
    return await checkpoint(database_url, stream) >= n


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


async def test_kill_9_at_any_moment_resumes_with_no_gap_and_no_duplicate(
    nats_server, database_url, unique, tmp_path
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, total = f"KILL_{unique}", 40_000
    await js.add_stream(name=stream, subjects=[f"kill.{unique}"])
    publisher = asyncio.create_task(publish_many(js, f"kill.{unique}", total))
    log = tmp_path / "tap.log"
    killed_at: list[int] = []  # the checkpoint when each kill landed on a live tap
    # Kill the tap while it is writing, at three different depths of the stream.
    for threshold in (3_000, 12_000, 25_000):
        proc = tap_process(nats_server.url, database_url, log)
        try:
            await eventually(
                partial(checkpoint_at_least, database_url, stream, threshold),
                timeout=60,
                what=f"checkpoint {threshold}",
            )
            assert proc.poll() is None, f"the tap exited by itself: {log.read_text()[-2000:]}"
            killed_at.append(await checkpoint(database_url, stream))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    await publisher
    before = log.read_text().count(" connected to ")
    proc = tap_process(nats_server.url, database_url, log)
    try:
        # this last tap must really start (the killed ones may have recorded everything): a
        # SIGTERM while Python and Django still load would end it before its handler is set
        async def started() -> bool:  # "connected" is logged once the handlers are set
            return bool(log.read_text().count(" connected to ") > before)

        await eventually(started, timeout=60, what="the last tap started")
        await eventually(
            lambda: checkpoint_at_least(database_url, stream, total), timeout=90, what="all"
        )
        seqs = await recorded_seqs(database_url, stream)
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    await nc.close()
    # three kills of a running tap, each deeper into the stream than the one before
    assert len(killed_at) == 3 and killed_at == sorted(killed_at), killed_at
    assert all(at >= t for at, t in zip(killed_at, (3_000, 12_000, 25_000), strict=True))
    assert len(seqs) == total, f"{total - len(seqs)} missing or duplicated"
    assert seqs == list(range(1, total + 1))
    assert await gaps(database_url, stream) == []


@pytest.mark.parametrize("retention", ["limits", "interest"])
async def test_messages_that_left_while_the_tap_was_down_are_an_explicit_gap(
    nats_server, database_url, unique, retention
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"GAP_{unique}", f"gap.{unique}"
    if retention == "limits":
        await js.add_stream(StreamConfig(name=stream, subjects=[subject], max_msgs=100))
    else:
        await js.add_stream(name=stream, subjects=[subject], retention="interest")
        app = await js.pull_subscribe(subject, durable="app")
    await publish_many(js, subject, 50)
    async with tap_running(nats_server.url, database_url):
        await eventually(lambda: checkpoint_at_least(database_url, stream, 50), what="first 50")
    # The tap is down: 300 more messages; the stream loses some of them before it comes back.
    await publish_many(js, subject, 300)
    if retention == "limits":
        expected_gap, kept = (51, 250), list(range(251, 351))
    else:  # the application consumes and acks 1..250; 251..350 stay, unacked
        for _ in range(5):
            for msg in await app.fetch(50, timeout=5):
                assert msg.metadata.sequence.stream <= 250
                await msg.ack_sync()
        expected_gap, kept = (51, 250), list(range(251, 351))
        await eventually(
            lambda: _first_seq_is(js, stream, 251), what="interest stream dropped acked messages"
        )
    async with tap_running(nats_server.url, database_url):
        await eventually(lambda: checkpoint_at_least(database_url, stream, 350), what="resume")
    await nc.close()
    assert await gaps(database_url, stream) == [expected_gap]
    assert await recorded_seqs(database_url, stream) == list(range(1, 51)) + kept


async def _first_seq_is(js, stream: str, seq: int) -> bool:
    info = await js.stream_info(stream)
    return bool(info.state.first_seq == seq)


async def test_it_survives_a_nats_server_restart(nats_server, database_url, unique, caplog):
    caplog.set_level(logging.INFO)
    stream, subject = f"RESTART_{unique}", f"restart.{unique}"
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(name=stream, subjects=[subject])
    await publish_many(nc.jetstream(), subject, 500)
    await nc.close()
    async with tap_running(nats_server.url, database_url):
        await eventually(lambda: checkpoint_at_least(database_url, stream, 500), what="before")
        nats_server.stop(kill=True)  # the harshest restart: no goodbye to clients
        await asyncio.sleep(1)
        nats_server.start()
        nc = await nats.connect(nats_server.url)
        await publish_many(nc.jetstream(), subject, 500)
        await nc.close()
        await eventually(
            lambda: checkpoint_at_least(database_url, stream, 1000), timeout=45, what="after"
        )
    assert await recorded_seqs(database_url, stream) == list(range(1, 1001))
    assert await gaps(database_url, stream) == []
    text = caplog.text
    assert "NATS connection lost" in text and "NATS reconnected" in text


async def test_it_survives_a_postgresql_outage(nats_server, unique, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    try:
        url = pg.url()
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
            cwd=ROOT,
            env=dict(os.environ, DATABASE_URL=url),
            capture_output=True,
        )
        assert migrate.returncode == 0, migrate.stderr.decode()
        stream, subject = f"PGDOWN_{unique}", f"pgdown.{unique}"
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        await publish_many(js, subject, 500)
        async with tap_running(nats_server.url, url):
            await eventually(lambda: checkpoint_at_least(url, stream, 500), what="before")
            pg.stop()
            await publish_many(js, subject, 500)  # arrives while the database is down
            await eventually(
                lambda: _logged(caplog, "PostgreSQL unavailable"), what="an outage log line"
            )
            await asyncio.sleep(1)
            pg.start()
            await eventually(
                lambda: checkpoint_at_least(url, stream, 1000), timeout=60, what="after"
            )
            await eventually(lambda: _logged(caplog, "PostgreSQL reachable again"), what="back")
        await nc.close()
        assert await recorded_seqs(url, stream) == list(range(1, 1001))
        assert await gaps(url, stream) == []
    finally:
        pg.stop()


async def _logged(caplog, text: str) -> bool:
    return text in caplog.text


async def _tap_streams(database_url: str) -> dict[str, set[str]]:
    rows = await query(database_url, "SELECT id, streams FROM flowscope_tap")
    return {tap_id: set(streams) for tap_id, streams in rows}


async def test_two_taps_split_the_streams_and_one_takes_over_when_the_other_dies(
    nats_server, database_url, unique, tmp_path
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    names = [f"SPLIT_{unique}_{i}" for i in range(6)]
    for i, name in enumerate(names):
        await js.add_stream(name=name, subjects=[f"split.{unique}.{i}"])
        await publish_many(js, f"split.{unique}.{i}", 100)
    a = tap_process(nats_server.url, database_url, tmp_path / "a.log")
    b = tap_process(nats_server.url, database_url, tmp_path / "b.log")
    try:

        async def split_evenly():
            owned = await _tap_streams(database_url)
            mine = [s & set(names) for s in owned.values()]
            return len(mine) == 2 and all(len(s) == 3 for s in mine) and owned

        owned = await eventually(split_evenly, timeout=30, what="an even split")
        first, second = (set(s) & set(names) for s in owned.values())
        assert first.isdisjoint(second) and first | second == set(names)
        for name in names:
            await eventually(
                partial(checkpoint_at_least, database_url, name, 100), what=f"{name} recorded"
            )
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.monotonic()
        for i in range(len(names)):
            await publish_many(js, f"split.{unique}.{i}", 100)

        async def b_owns_all():
            owned = await _tap_streams(database_url)
            return any(s >= set(names) for s in owned.values())

        await eventually(b_owns_all, timeout=30, what="failover")
        takeover = time.monotonic() - killed
        for name in names:
            await eventually(
                partial(checkpoint_at_least, database_url, name, 200), what=f"{name} after"
            )
            assert await recorded_seqs(database_url, name) == list(range(1, 201))
        print(f"takeover after kill -9: {takeover:.1f}s")
    finally:
        for p in (a, b):
            if p.poll() is None:
                stop_process(p)
    await nc.close()


async def test_expired_event_partitions_are_dropped_whole(database_url):
    now = datetime.now(UTC)
    old_day, new_day = (now - timedelta(days=10)).date(), now.date()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        partitions = Partitions()
        await partitions.ensure(conn, [old_day, new_day])
        cur = await conn.execute(
            "INSERT INTO flowscope_stream (name, created, retention, subjects, config, "
            "observed_by, observation_note, discovered_at, updated_at, messages, bytes, "
            "first_seq, last_seq, consumer_count) VALUES ('RET', now(), 'limits', '[]', "
            "'{}', 'consumer', '', now(), now(), 0, 0, 0, 0, 0) RETURNING id"
        )
        row = await cur.fetchone()
        assert row is not None
        stream_id = row[0]
        for seq, ts in ((1, now - timedelta(days=10)), (2, now)):
            await conn.execute(
                "INSERT INTO flowscope_event (stream_id, seq, ts, subject, size, payload, "
                "truncated, recorded_at) VALUES (%s, %s, %s, 's', 0, '', false, now())",
                (stream_id, seq, ts),
            )
        dropped = await partitions.drop_expired(conn, timedelta(days=7), now)
        assert dropped == [partition_name(old_day)]
        tables = await query(
            database_url,
            "SELECT relname FROM pg_class WHERE relname = ANY(%s)",
            [partition_name(old_day), partition_name(new_day)],
        )
        assert [t[0] for t in tables] == [partition_name(new_day)]
        assert await query(database_url, "SELECT seq FROM flowscope_event") == [(2,)]
