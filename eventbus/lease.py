"""Several taps split the streams: one owner per stream, taken over when a tap dies.

Ownership is a PostgreSQL session-level advisory lock per stream name, held on a connection
that lives as long as the tap. A tap that dies (even by kill -9) loses its connection and with
it every lock at once, so the others pick its streams up at their next rebalance (every
`interval` seconds). Live taps are counted from pg_stat_activity (the lock connections carry the
application name `flowscope-tap-lease`), which also drops a dead tap at once, so each tap aims
at ceil(streams / taps) streams and gives back what it holds beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("flowscope.lease")
LOCK_CLASS = 0x0F10  # first key of the two-int advisory lock: "Flowscope stream"
APP_NAME = "flowscope-tap-lease"


Release = Callable[[str], Awaitable[None]]


def stream_key(name: str) -> int:
    """A stable signed 32-bit key for a stream name."""
    return zlib.crc32(name.encode()) - (1 << 31)


def share(total: int, taps: int) -> int:
    return math.ceil(total / max(taps, 1))


class Lease:
    def __init__(self, database_url: str, tap_id: str):
        self.database_url = database_url
        self.tap_id = tap_id
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.owned: set[str] = set()
        self.lock = asyncio.Lock()  # discovery and the heartbeat share the connection
        self.published: list[str] | None = None  # the streams last written to our tap row
        self.aside = False  # standing aside: not counted by the other taps (see `_stand`)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.owned.clear()  # a new session holds no locks
            self.published = None
            self.aside = False
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name=APP_NAME, connect_timeout=5
            )
            await self.conn.execute(
                "INSERT INTO flowscope_tap (id, hostname, pid, started_at, heartbeat_at, streams) "
                "VALUES (%s, %s, %s, now(), now(), '[]') ON CONFLICT (id) DO NOTHING",
                (self.tap_id, socket.gethostname(), os.getpid()),
            )
        return self.conn

    async def _lost(self) -> None:
        """The lease connection failed: every lock went with it."""
        self.owned.clear()
        if self.conn is not None:
            await self.conn.close()
        self.conn = None

    async def rebalance(
        self, streams: Iterable[str], before_release: Release | None = None
    ) -> set[str]:
        """Take and give back streams; returns the names this tap owns now. `before_release`
        is awaited for each stream just before its lock is given back (while it is still
        ours). Raises psycopg errors when the database is unreachable (then nothing is owned)."""
        names = sorted(set(streams))
        async with self.lock:
            try:
                conn = await self._connect()
                await self._stand(conn, aside=False)
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND datname = current_database()",
                    (APP_NAME,),
                )
                row = await cur.fetchone()
                taps = int(row[0]) if row else 1
                target = share(len(names), taps)
                for name in sorted(self.owned - set(names)):  # the stream is gone
                    await self._unlock(conn, name, before_release)
                wanted = [name for name in names if name not in self.owned]
                while wanted and len(self.owned) < target:
                    # as many as it may still take, in one round trip (a burst of new streams)
                    room = target - len(self.owned)
                    take, wanted = wanted[:room], wanted[room:]
                    cur = await conn.execute(
                        "SELECT pg_try_advisory_lock(%s, k) FROM unnest(%s::int[]) "
                        "WITH ORDINALITY AS t(k, i) ORDER BY i",
                        (LOCK_CLASS, [stream_key(name) for name in take]),
                    )
                    got = await cur.fetchall()
                    self.owned.update(n for n, (ok,) in zip(take, got, strict=True) if ok)
                while len(self.owned) > target:
                    await self._unlock(conn, max(self.owned), before_release)
                await self._publish(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._lost()
                raise
            return set(self.owned)

    async def release_all(self, before_release: Release | None = None) -> None:
        """Give back every stream and stand aside: the tap cannot write what it reads. Until
        `rebalance` is called again, the other taps do not count it when they share out."""
        async with self.lock:
            if self.conn is None or self.conn.closed:
                self.owned.clear()
                return
            try:
                for name in sorted(self.owned):
                    await self._unlock(self.conn, name, before_release)
                await self._publish(self.conn)
                await self._stand(self.conn, aside=True)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._lost()
                raise

    async def _stand(self, conn: psycopg.AsyncConnection[Any], aside: bool) -> None:
        """Taps are counted by their lease connections' application name: a tap standing aside
        renames its own, so the others share the streams out without it at once."""
        if aside != self.aside:
            name = APP_NAME + "-aside" if aside else APP_NAME
            await conn.execute("SELECT set_config('application_name', %s, false)", (name,))
            self.aside = aside

    async def _publish(self, conn: psycopg.AsyncConnection[Any]) -> None:
        owned = sorted(self.owned)
        if owned != self.published:
            await conn.execute(
                "UPDATE flowscope_tap SET streams = %s WHERE id = %s", (Jsonb(owned), self.tap_id)
            )
            self.published = owned

    async def heartbeat(self, status: dict[str, Any], dropped: dict[int, int]) -> bool:
        """Write the tap's row: it is alive, and what it has done (see eventbus/heartbeat.py);
        add messages dropped since the last beat to their streams' checkpoints. On the lease
        connection: a tap whose locks are gone stops heartbeating too."""
        async with self.lock:
            if self.conn is None or self.conn.closed:
                return False  # discovery reconnects (and takes the locks again) first
            try:
                conn = self.conn
                for stream_id, n in dropped.items():
                    await conn.execute(
                        "UPDATE flowscope_checkpoint SET dropped = dropped + %s "
                        "WHERE stream_id = %s",
                        (n, stream_id),
                    )
                await conn.execute(
                    "DELETE FROM flowscope_tap WHERE heartbeat_at < now() - interval '10 minutes'"
                )
                await conn.execute(
                    "UPDATE flowscope_tap SET heartbeat_at = now(), last_commit_at = %s, "
                    "held_events = %s, written = %s, events_per_second = %s, "
                    "writer_state = %s, restarts = %s, last_error = %s WHERE id = %s",
                    (status["last_commit_at"], status["held_events"], status["written"],
                     status["events_per_second"], status["writer_state"], status["restarts"],
                     status["last_error"], self.tap_id),
                )  # fmt: skip
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._lost()
                raise
            return True

    async def _unlock(
        self, conn: psycopg.AsyncConnection[Any], name: str, before_release: Release | None
    ) -> None:
        if before_release is not None:
            await before_release(name)
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, stream_key(name)))
        self.owned.discard(name)

    async def close(self) -> None:
        async with self.lock:
            if self.conn is not None and not self.conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await self.conn.execute(
                        "DELETE FROM flowscope_tap WHERE id = %s", (self.tap_id,)
                    )
                await self.conn.close()
            self.owned.clear()
