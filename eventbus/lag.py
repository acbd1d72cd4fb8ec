"""Consumer lag: every consumer of every stream a tap owns, sampled every few seconds.

Each round reads STREAM.INFO and every page of CONSUMER.LIST per stream, then in one
transaction refreshes the latest state (flowscope_stream's state columns, flowscope_consumer)
and appends the time series (flowscope_stream_sample, flowscope_consumer_sample). The tap's own
consumers are left out: they are not the applications'. Old samples are downsampled to one a
minute by `downsample`, which the tap's retention loop calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from nats.aio.client import Client
from psycopg.types.json import Jsonb

from eventbus.aio import wait_event
from eventbus.observers import is_tap_consumer
from eventbus.records import parse_nats_time
from eventbus.registry import JetStreamError, js_api

log = logging.getLogger("flowscope.lag")

COUNTERS = (
    "num_pending",
    "num_ack_pending",
    "num_redelivered",
    "num_waiting",
    "delivered_stream_seq",
    "ack_floor_stream_seq",
    "ack_floor_consumer_seq",
)


@dataclass(frozen=True)
class ConsumerState:
    name: str
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    delivered_stream_seq: int
    ack_floor_stream_seq: int
    ack_floor_consumer_seq: int
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    created: datetime | None = field(default=None, compare=False, hash=False)

    @property
    def lag(self) -> int:
        """What people mean by lag: not yet delivered plus delivered but not acked."""
        return self.num_pending + self.num_ack_pending

    def counters(self) -> tuple[int, ...]:
        return tuple(getattr(self, c) for c in COUNTERS)


@dataclass
class StreamState:
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: list[ConsumerState]

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)  # the applications' consumers: the tap's are left out


@dataclass
class LagSample:
    """One round, as announced on `<prefix>.digest.lag`: per stream its state, the consumers
    whose numbers changed since the previous round, and the ones that disappeared."""

    ts: str
    streams: dict[str, dict[str, Any]]


def consumer_state(info: dict[str, Any]) -> ConsumerState:
    """A CONSUMER.INFO / CONSUMER.LIST entry -> ConsumerState."""
    return ConsumerState(
        name=str(info["name"]),
        num_pending=int(info.get("num_pending", 0)),
        num_ack_pending=int(info.get("num_ack_pending", 0)),
        num_redelivered=int(info.get("num_redelivered", 0)),
        num_waiting=int(info.get("num_waiting", 0)),
        delivered_stream_seq=int((info.get("delivered") or {}).get("stream_seq", 0)),
        ack_floor_stream_seq=int((info.get("ack_floor") or {}).get("stream_seq", 0)),
        ack_floor_consumer_seq=int((info.get("ack_floor") or {}).get("consumer_seq", 0)),
        config=dict(info.get("config") or {}),
        created=parse_nats_time(info.get("created")),
    )


def diff(
    previous: dict[str, tuple[int, ...]], now: list[ConsumerState]
) -> tuple[list[ConsumerState], list[str]]:
    """(consumers whose counters changed or are new, names that are gone)."""
    changed = [c for c in now if previous.get(c.name) != c.counters()]
    names = {c.name for c in now}
    return changed, sorted(set(previous) - names)


def sample_entry(
    state: StreamState, changed: list[ConsumerState], removed: list[str]
) -> dict[str, Any]:
    return {
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "consumer_count": state.consumer_count,
        "consumers": {
            c.name: {"lag": c.lag, **{k: getattr(c, k) for k in COUNTERS}} for c in changed
        },
        "removed": removed,
    }


async def list_consumers(nc: Client, stream: str) -> list[ConsumerState]:
    """Every consumer of `stream`, paging through CONSUMER.LIST (256 a page), tap's excluded."""
    found: list[ConsumerState] = []
    offset = 0
    while True:
        resp = await js_api(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": offset})
        page = resp.get("consumers") or []
        found.extend(consumer_state(c) for c in page if not is_tap_consumer(c.get("name", "")))
        offset += len(page)
        if not page or offset >= int(resp.get("total", 0)):
            return found


async def read_stream(nc: Client, stream: str) -> StreamState:
    info = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}")
    st = info.get("state") or {}
    return StreamState(
        name=stream,
        messages=int(st.get("messages", 0)),
        bytes=int(st.get("bytes", 0)),
        first_seq=int(st.get("first_seq", 0)),
        last_seq=int(st.get("last_seq", 0)),
        consumers=await list_consumers(nc, stream),
    )


async def write_round(
    conn: psycopg.AsyncConnection[Any], states: list[StreamState], ts: datetime
) -> dict[str, int]:
    """Store one round in one transaction; returns stream name -> stream id of what was stored
    (streams the tap has not registered yet are skipped)."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT DISTINCT ON (name) name, id FROM flowscope_stream "
            "WHERE deleted_at IS NULL AND name = ANY(%s) ORDER BY name, created DESC",
            ([s.name for s in states],),
        )
        ids: dict[str, int] = {name: sid for name, sid in await cur.fetchall()}
        stored = [s for s in states if s.name in ids]
        async with conn.cursor() as c:
            await c.executemany(
                "UPDATE flowscope_stream SET messages = %s, bytes = %s, first_seq = %s, "
                "last_seq = %s, consumer_count = %s, state_at = %s WHERE id = %s",
                [(s.messages, s.bytes, s.first_seq, s.last_seq, s.consumer_count, ts, ids[s.name])
                 for s in stored],
            )  # fmt: skip
            await c.executemany(
                "INSERT INTO flowscope_stream_sample (ts, stream_id, messages, bytes, first_seq, "
                "last_seq, consumer_count, downsampled) VALUES (%s, %s, %s, %s, %s, %s, %s, false)",
                [(ts, ids[s.name], s.messages, s.bytes, s.first_seq, s.last_seq, s.consumer_count)
                 for s in stored],
            )  # fmt: skip
            consumers = [(ids[s.name], c) for s in stored for c in s.consumers]
            await c.executemany(
                "INSERT INTO flowscope_consumer (stream_id, name, config, created, last_seen, "
                "deleted_at, num_pending, num_ack_pending, num_redelivered, num_waiting, "
                "delivered_stream_seq, ack_floor_stream_seq, ack_floor_consumer_seq) "
                "VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (stream_id, name) DO UPDATE SET config = EXCLUDED.config, "
                "created = EXCLUDED.created, last_seen = EXCLUDED.last_seen, deleted_at = NULL, "
                "num_pending = EXCLUDED.num_pending, num_ack_pending = EXCLUDED.num_ack_pending, "
                "num_redelivered = EXCLUDED.num_redelivered, num_waiting = EXCLUDED.num_waiting, "
                "delivered_stream_seq = EXCLUDED.delivered_stream_seq, "
                "ack_floor_stream_seq = EXCLUDED.ack_floor_stream_seq, "
                "ack_floor_consumer_seq = EXCLUDED.ack_floor_consumer_seq",
                [(sid, c.name, Jsonb(c.config), c.created, ts, *c.counters())
                 for sid, c in consumers],
            )  # fmt: skip
            await c.executemany(
                "UPDATE flowscope_consumer SET deleted_at = %s WHERE stream_id = %s "
                "AND deleted_at IS NULL AND NOT (name = ANY(%s))",
                [(ts, ids[s.name], [c.name for c in s.consumers]) for s in stored],
            )
            await c.executemany(
                "INSERT INTO flowscope_consumer_sample (ts, stream_id, consumer, num_pending, "
                "num_ack_pending, num_redelivered, num_waiting, delivered_stream_seq, "
                "ack_floor_stream_seq, ack_floor_consumer_seq, downsampled) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false)",
                [(ts, sid, c.name, *c.counters()) for sid, c in consumers],
            )
    return {s.name: ids[s.name] for s in stored}


class Sampler:
    def __init__(
        self,
        nc: Client,
        database_url: str,
        on_sample: Callable[[LagSample], Awaitable[None]] | None = None,
    ):
        self.nc = nc
        self.database_url = database_url
        self.on_sample = on_sample
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.previous: dict[str, dict[str, tuple[int, ...]]] = {}  # stream -> consumer -> counters
        self.db_ok = True
        self.nats_ok = True

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url,
                autocommit=True,
                application_name="flowscope-tap",
                connect_timeout=5,
            )
        return self.conn

    async def read(self, streams: Iterable[str]) -> list[StreamState]:
        states = []
        for name in sorted(streams):
            try:
                states.append(await read_stream(self.nc, name))
            except JetStreamError as exc:  # deleted since it was listed: the tap will notice
                log.debug("lag sampler: %s", exc)
        return states

    async def round(self, streams: Iterable[str]) -> LagSample | None:
        if not self.nc.is_connected:
            if self.nats_ok:
                log.warning("lag sampler: NATS not connected, skipping rounds until it is back")
            self.nats_ok = False
            return None
        self.nats_ok = True
        states = await self.read(streams)
        ts = datetime.now(UTC)
        try:
            stored = await write_round(await self._db(), states, ts)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self.db_ok:
                log.warning("lag sampler: PostgreSQL unavailable (%s), retrying", exc)
            self.db_ok = False
            if self.conn is not None:
                await self.conn.close()
                self.conn = None
            return None
        if not self.db_ok:
            log.warning("lag sampler: PostgreSQL reachable again")
        self.db_ok = True
        sample = LagSample(ts=ts.isoformat(), streams={})
        for state in states:
            if state.name not in stored:
                continue
            changed, removed = diff(self.previous.get(state.name, {}), state.consumers)
            self.previous[state.name] = {c.name: c.counters() for c in state.consumers}
            sample.streams[state.name] = sample_entry(state, changed, removed)
        for gone in set(self.previous) - {s.name for s in states}:
            del self.previous[gone]
        if self.on_sample is not None:
            await self.on_sample(sample)
        return sample

    async def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            await self.conn.close()


async def run_sampler(
    nc: Client,
    database_url: str,
    interval: float,
    stop: asyncio.Event,
    on_sample: Callable[[LagSample], Awaitable[None]] | None = None,
    streams: Callable[[], Iterable[str]] = lambda: (),
) -> None:
    """Sample every `interval` seconds (from each round's start, so slow rounds do not drift)
    until `stop` is set."""
    sampler = Sampler(nc, database_url, on_sample)
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await sampler.round(list(streams()))
            except Exception as exc:  # a NATS timeout mid-round, say: the next round retries
                log.warning("lag sampler: round failed (%r)", exc)
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # the round took longer than the interval: skip, don't burst
                next_at = now + interval
            if await wait_event(stop, next_at - now):
                break
    finally:
        await sampler.close()


async def downsample(
    conn: psycopg.AsyncConnection[Any],
    raw_for: timedelta,
    keep_for: timedelta,
    now: datetime | None = None,
) -> None:
    """Samples older than `raw_for`: one per series and minute (the minute's last) is kept and
    marked downsampled. Samples older than `keep_for` are deleted. Idempotent."""
    now = now or datetime.now(UTC)
    raw_before, keep_before = now - raw_for, now - keep_for
    for table, series in (
        ("flowscope_consumer_sample", "stream_id, consumer"),
        ("flowscope_stream_sample", "stream_id"),
    ):
        async with conn.transaction():
            await conn.execute(
                f"DELETE FROM {table} WHERE ts < %s",
                (keep_before,),
            )
            await conn.execute(
                f"DELETE FROM {table} t USING (SELECT id, row_number() OVER ("
                f"PARTITION BY {series}, date_trunc('minute', ts) ORDER BY ts DESC, id DESC) AS rn "
                f"FROM {table} WHERE ts < %s) r WHERE t.id = r.id AND r.rn > 1",
                (raw_before,),
            )
            await conn.execute(
                f"UPDATE {table} SET downsampled = true WHERE ts < %s AND NOT downsampled",
                (raw_before,),
            )
