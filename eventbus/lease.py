"""Several taps split the streams: one owner per stream, taken over when a tap dies.

Ownership is a PostgreSQL session-level advisory lock per stream name, held on a connection
that lives as long as the tap. A tap that dies (even by kill -9) loses its connection and with
it every lock at once, so the others pick its streams up at their next rebalance (every
`interval` seconds). Live taps are counted from pg_stat_activity (the lock connections carry the
application name `flowscope-tap-lease`), which also drops a dead tap at once, so each tap aims
at ceil(streams / taps) streams and gives back what it holds beyond that.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import zlib
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("flowscope.lease")
LOCK_CLASS = 0x0F10  # first key of the two-int advisory lock: "Flowscope stream"
APP_NAME = "flowscope-tap-lease"


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

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.owned.clear()  # a new session holds no locks
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name=APP_NAME, connect_timeout=5
            )
            await self.conn.execute(
                "INSERT INTO flowscope_tap (id, hostname, pid, started_at, heartbeat_at, streams) "
                "VALUES (%s, %s, %s, now(), now(), '[]') ON CONFLICT (id) DO NOTHING",
                (self.tap_id, socket.gethostname(), os.getpid()),
            )
        return self.conn

    async def rebalance(self, streams: Iterable[str]) -> set[str]:
        """Take and give back streams; returns the names this tap owns now.
        Raises psycopg errors when the database is unreachable (then nothing is owned)."""
        names = sorted(set(streams))
        try:
            conn = await self._connect()
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database()",
                (APP_NAME,),
            )
            row = await cur.fetchone()
            taps = int(row[0]) if row else 1
            target = share(len(names), taps)
            for name in sorted(self.owned - set(names)):  # the stream is gone
                await self._unlock(conn, name)
            for name in names:
                if len(self.owned) >= target:
                    break
                if name in self.owned:
                    continue
                cur = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, stream_key(name))
                )
                got = await cur.fetchone()
                if got and got[0]:
                    self.owned.add(name)
            while len(self.owned) > target:
                await self._unlock(conn, max(self.owned))
            await conn.execute(
                "UPDATE flowscope_tap SET heartbeat_at = now(), streams = %s WHERE id = %s",
                (Jsonb(sorted(self.owned)), self.tap_id),
            )
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.owned.clear()
            if self.conn is not None:
                await self.conn.close()
            self.conn = None
            raise
        return set(self.owned)

    async def _unlock(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, stream_key(name)))
        self.owned.discard(name)

    async def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                await self.conn.execute("DELETE FROM flowscope_tap WHERE id = %s", (self.tap_id,))
            await self.conn.close()
        self.owned.clear()
