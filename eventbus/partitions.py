"""Daily partitions of flowscope_event: created on demand, dropped whole when they expire."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("flowscope.partitions")
PARENT = "flowscope_event"
_NAME = re.compile(r"^flowscope_event_p(\d{8})$")
_LOCK_KEY = 0x0F10_5C0E  # serialises partition DDL between taps


def partition_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def parse_retention(value: str) -> timedelta:
    """'7d', '12h', '30m', '45s' or plain seconds -> timedelta."""
    v = value.strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if v and v[-1] in units:
        return timedelta(seconds=float(v[:-1]) * units[v[-1]])
    return timedelta(seconds=float(v))


class Partitions:
    """Remembers which days already have a partition, so the hot path asks nothing."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, conn: psycopg.AsyncConnection[Any], days: Iterable[date]) -> None:
        missing = sorted(set(days) - self.known)
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for day in missing:
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                end = start + timedelta(days=1)
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                    ).format(
                        sql.Identifier(partition_name(day)),
                        sql.Identifier(PARENT),
                        sql.Literal(start),
                        sql.Literal(end),
                    )
                )
        self.known.update(missing)

    async def drop_expired(
        self, conn: psycopg.AsyncConnection[Any], retention: timedelta, now: datetime
    ) -> list[str]:
        """Drop every partition whose whole day is older than `retention`. Returns their names."""
        cutoff = now - retention
        dropped = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur = await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
                (PARENT,),
            )
            for (name,) in await cur.fetchall():
                m = _NAME.match(name)
                if not m:
                    continue
                day = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)
                if day + timedelta(days=1) <= cutoff:
                    await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    self.known.discard(day.date())
                    dropped.append(name)
        if dropped:
            log.info("retention: dropped %d expired event partitions: %s", len(dropped), dropped)
        return dropped
