"""Helpers for tap tests: run a tap in-process or as a real process, poll the database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg

from eventbus.observers import ObserverSettings
from eventbus.tap import Tap, TapConfig

ROOT = Path(__file__).resolve().parent.parent


def config(nats_url: str, database_url: str, **overrides: Any) -> TapConfig:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "lag_interval": 0.5,
        "rebalance_interval": 0.3,
        "observer": ObserverSettings(inactive_threshold=5.0),
    }
    base.update(overrides)
    return TapConfig(**base)


@asynccontextmanager
async def tap_running(nats_url: str, database_url: str, **overrides: Any) -> AsyncIterator[Tap]:
    stop = asyncio.Event()
    tap = Tap(config(nats_url, database_url, **overrides), stop)
    task = asyncio.create_task(tap.run())
    try:
        yield tap
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        # A closed connection's server process ends a moment after the client closes it:
        # allowed 3 s, so only a connection the tap really left open fails the test.
        deadline = time.monotonic() + 3
        while True:
            left = await query(
                database_url,
                "SELECT application_name, state, left(query, 120) FROM pg_stat_activity "
                "WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name LIKE 'flowscope%%'",
            )
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert not left, f"the tap left connections open: {left}"


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


async def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def stream_events(database_url: str, stream: str) -> list[tuple[Any, ...]]:
    """(seq, subject, size, payload, truncated, msg_id, trace_id, span_id, service, headers)
    of the live incarnation of `stream`, in sequence order."""
    return await query(
        database_url,
        "SELECT e.seq, e.subject, e.size, e.payload, e.truncated, e.msg_id, e.trace_id, "
        "e.span_id, e.service, e.headers FROM flowscope_event e JOIN flowscope_stream s "
        "ON s.id = e.stream_id WHERE s.name = %s AND s.deleted_at IS NULL ORDER BY e.seq, e.id",
        stream,
    )


async def recorded_seqs(database_url: str, stream: str) -> list[int]:
    rows = await query(
        database_url,
        "SELECT e.seq FROM flowscope_event e JOIN flowscope_stream s ON s.id = e.stream_id "
        "WHERE s.name = %s AND s.deleted_at IS NULL ORDER BY e.seq",
        stream,
    )
    return [r[0] for r in rows]


async def gaps(database_url: str, stream: str) -> list[tuple[int, int]]:
    rows = await query(
        database_url,
        "SELECT g.first_seq, g.last_seq FROM flowscope_gap g JOIN flowscope_stream s "
        "ON s.id = g.stream_id WHERE s.name = %s AND s.deleted_at IS NULL ORDER BY g.first_seq",
        stream,
    )
    return [(r[0], r[1]) for r in rows]


async def checkpoint(database_url: str, stream: str) -> int:
    rows = await query(
        database_url,
        "SELECT c.last_seq FROM flowscope_checkpoint c JOIN flowscope_stream s "
        "ON s.id = c.stream_id WHERE s.name = %s AND s.deleted_at IS NULL",
        stream,
    )
    return rows[0][0] if rows else -1


def tap_process(nats_url: str, database_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`python manage.py tap` as a real process (so it can be killed with SIGKILL)."""
    env = dict(os.environ, NATS_URL=nats_url, DATABASE_URL=database_url,
               FLOWSCOPE_LAG_INTERVAL="1")  # fmt: skip
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "manage.py", "tap"], cwd=ROOT, env=env, stdout=log, stderr=log
    )


async def fill(js: Any, subject: str, count: int, window: int = 2000, start: int = 0) -> None:
    """Publish `count` small messages with acks, `window` in flight at a time."""
    sent = 0
    while sent < count:
        n = min(window, count - sent)
        await asyncio.gather(
            *(js.publish(subject, f"event {start + sent + i}".encode()) for i in range(n))
        )
        sent += n


async def filled_stream(url: str, name: str, total: int) -> tuple[Any, Any, str]:
    """A new limits stream `name` on subject `name.lower()`, holding `total` events:
    (the connection, its JetStream context, the subject)."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    subject = name.lower()
    await js.add_stream(name=name, subjects=[subject])
    await fill(js, subject, total)
    return nc, js, subject


def in_thread(coro: Any) -> None:
    """Run a coroutine to completion in a thread of its own, outside the caller's event loop
    (Playwright's sync API and Django's test client run sync code in the test's thread)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
