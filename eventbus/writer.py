"""The tap's writer: one bounded buffer, batched COPY, checkpoints in the same transaction.

Observers `await writer.put(item)`; when the buffer is full that call waits, which stops the
observer from asking NATS for more (backpressure instead of memory growth or loss). A batch is
committed as one transaction: for each stream, the checkpoint moves from the sequence just before
the batch's first item to its last one *only if* the stored checkpoint is still that sequence.
Otherwise another tap (or an earlier incarnation of this one) wrote those sequences: the batch's
items for that stream are dropped and its observer is told to resume from the stored checkpoint.
That guard is what makes the table exactly-once across crashes, restarts and tap hand-overs.

Up to three batches are in flight at once, each on its own connection, so PostgreSQL works on
them while the tap reads and formats the next. Each transaction COPYs its rows first and checks
its checkpoint guards only once the batch before it has ended (committed or rolled back), so the
guards still apply in batch order and see what the earlier batch committed. Digests go out in
batch order. When a write fails (PostgreSQL gone) or meets a moved checkpoint, the writer lets
what is in flight settle, then writes what is left one batch at a time, in order. Memory stays
bounded: the buffer plus the batches in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb
from psycopg.types.string import BytesBinaryDumper

from eventbus.partitions import Partitions
from eventbus.records import EventRecord, Gap

log = logging.getLogger("flowscope.writer")

Item = EventRecord | Gap
COPY_SQL = (
    "COPY flowscope_event (stream_id, seq, ts, subject, size, headers, msg_id, trace_id, "
    "span_id, service, payload, truncated) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = [
    "int8", "int8", "timestamptz", "text", "int4", "jsonb", "text", "varchar", "varchar",
    "text", "bytea", "bool",
]  # fmt: skip


@dataclass
class Committed:
    """What one committed batch wrote: the tap announces it as a digest."""

    events: list[EventRecord]
    gaps: list[Gap]
    last_seq: dict[int, int] = field(default_factory=dict)
    counts: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


@dataclass
class _Flight:
    """A batch being written on one of the writer's connections."""

    batch: list[Item]
    task: asyncio.Task[set[int]]
    locked: asyncio.Event  # set when its transaction has ended: the next batch's guards may go
    started: float


class Writer:
    def __init__(
        self,
        database_url: str,
        *,
        buffer_size: int = 20_000,
        batch_size: int = 5_000,
        flush_interval: float = 0.25,
        linger: float = 0.02,
        on_commit: Callable[[Committed], Awaitable[None]] | None = None,
        on_conflict: Callable[[int], Awaitable[None]] | None = None,
        lanes: int = 3,
    ):
        self.database_url = database_url
        self.queue: asyncio.Queue[Item] = asyncio.Queue(buffer_size)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        # How long a batch waits for more events after its first: short, so a quiet stream's
        # events are written within milliseconds; under load the buffer already holds a full
        # batch (group commit), so it costs nothing there.
        self.linger = min(linger, flush_interval)
        self.on_commit = on_commit
        self.on_conflict = on_conflict
        self.partitions = Partitions()
        self.lanes = max(1, lanes)
        self.conns: list[psycopg.AsyncConnection[object] | None] = [None] * self.lanes
        self.next_lane = 0
        self.db_down_since: float | None = None
        self.written = 0

    async def put(self, item: Item) -> None:
        if self.queue.full():  # backpressure: wait until the writer has taken a batch
            await self.queue.put(item)
        else:  # the common case, without `Queue.put`'s extra coroutine (once per message)
            self.queue.put_nowait(item)

    def offer(self, item: Item) -> bool:
        """Buffer `item` if there is room (no coroutine: this runs once per event); False when
        the buffer is full, and the caller must `await put(item)`."""
        if self.queue.full():
            return False
        self.queue.put_nowait(item)
        return True

    def free(self) -> int:
        return self.queue.maxsize - self.queue.qsize()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until `stop` is set and the buffer is empty."""
        flights: deque[_Flight] = deque()
        try:
            while not (stop.is_set() and self.queue.empty()):
                # Nothing to batch yet, or the oldest batch is done: land (and announce) it now.
                while flights and (flights[0].task.done() or self.queue.empty()):
                    await self._land(flights, stop)
                batch = await self._collect(stop)  # while the batches in flight are written
                if not batch:
                    continue
                while len(flights) >= self.lanes:
                    await self._land(flights, stop)
                flight = await self._launch(batch, flights[-1].locked if flights else None)
                if flight is None:  # could not even start it: PostgreSQL is away
                    while flights:
                        await self._land(flights, stop)
                    await self._write_until_done(batch, stop)
                else:
                    flights.append(flight)
            while flights:
                await self._land(flights, stop)
        finally:
            for task in [f.task for f in flights]:
                task.cancel()
            for conn in self.conns:
                if conn is not None:
                    await conn.close()

    async def _launch(self, batch: list[Item], after: asyncio.Event | None) -> _Flight | None:
        lane = self.next_lane
        self.next_lane = (lane + 1) % self.lanes
        try:
            conn = await self._prepare(lane, batch)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self._drop(lane)
            return None
        locked = asyncio.Event()
        task = asyncio.create_task(self._try_commit(conn, batch, after, locked))
        return _Flight(batch, task, locked, time.perf_counter())

    async def _land(self, flights: deque[_Flight], stop: asyncio.Event) -> None:
        """Wait for the oldest batch in flight and announce it; if it failed or met a moved
        checkpoint, let the rest settle too, then write what is left one batch at a time."""
        first = await self._settle(flights.popleft())
        if first is None:
            return
        retry = [first]
        while flights:
            left = await self._settle(flights.popleft())
            if left is not None:
                retry.append(left)
        if self.db_down_since is not None:
            for lane in range(self.lanes):
                await self._drop(lane)
        for batch in retry:
            if batch:
                await self._write_until_done(batch, stop)

    async def _settle(self, flight: _Flight) -> list[Item] | None:
        """Wait for one batch in flight: None once committed and announced, else what of it
        is still to be written (all of it when PostgreSQL failed, the streams without a
        conflict when a checkpoint had moved)."""
        try:
            conflicts = await flight.task
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._down(exc, len(flight.batch))
            return flight.batch
        if conflicts:
            await self._resync(conflicts)
            return [i for i in flight.batch if i.stream_id not in conflicts]
        await self._committed(flight.batch, time.perf_counter() - flight.started)
        return None

    async def _collect(self, stop: asyncio.Event) -> list[Item]:
        # asyncio.timeout rather than wait_for: no task per call (this waits once per burst).
        try:
            async with asyncio.timeout(self.flush_interval):
                first = await self.queue.get()
        except TimeoutError:
            return []
        batch = [first]
        deadline = time.monotonic() + self.linger
        queue, size = self.queue, self.batch_size
        while len(batch) < size:
            take = min(size - len(batch), queue.qsize())
            if take:
                batch.extend([queue.get_nowait() for _ in range(take)])
            remaining = deadline - time.monotonic()
            if len(batch) >= size or remaining <= 0 or stop.is_set():
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await queue.get())
            except TimeoutError:
                break
        return batch

    async def _connect(self, lane: int = 0) -> psycopg.AsyncConnection[object]:
        conn = self.conns[lane]
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.database_url, application_name="flowscope-tap-writer", connect_timeout=5
            )
            # COPY's set_types() picks dumpers by type oid, and for bytea that is psycopg's
            # pure-Python DB-API `Binary` dumper; register the plain (C) bytes dumper by oid
            # instead: same bytes on the wire, about a tenth of the writer's time per row.
            conn.adapters.register_dumper(None, BytesBinaryDumper)
            self.conns[lane] = conn
        return conn

    async def _prepare(self, lane: int, batch: list[Item]) -> psycopg.AsyncConnection[object]:
        """The lane's connection, with the day partitions the batch's events go to."""
        conn = await self._connect(lane)
        await self.partitions.ensure(
            conn, {i.ts.date() for i in batch if isinstance(i, EventRecord)}
        )
        return conn

    async def _drop(self, lane: int) -> None:
        conn, self.conns[lane] = self.conns[lane], None
        if conn is not None:
            await conn.close()

    def _down(self, exc: Exception, holding: int) -> None:
        if self.db_down_since is None:
            self.db_down_since = time.monotonic()
            text = str(exc).strip()
            log.error(
                "PostgreSQL unavailable (%s): holding %d events and pausing NATS reads "
                "until it is back",
                text.splitlines()[0] if text else type(exc).__name__,
                holding + self.queue.qsize(),
            )

    async def _resync(self, conflicts: set[int]) -> None:
        for stream_id in conflicts:
            log.warning(
                "stream %d: checkpoint moved under us (another tap?): resynchronising", stream_id
            )
            if self.on_conflict:
                await self.on_conflict(stream_id)

    async def _committed(self, batch: list[Item], seconds: float) -> None:
        if self.db_down_since is not None:
            log.warning(
                "PostgreSQL is back after %.1fs: writing resumed",
                time.monotonic() - self.db_down_since,
            )
            self.db_down_since = None
        committed = summarize(batch)
        committed.seconds = seconds
        self.written += len(committed.events)
        if self.on_commit:
            await self.on_commit(committed)

    async def _write_until_done(self, batch: list[Item], stop: asyncio.Event) -> None:
        """Write one batch on its own (nothing else in flight), retrying until PostgreSQL
        takes it."""
        delay = 0.2
        while True:
            try:
                await self._write(batch)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._down(exc, len(batch))
                await self._drop(0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, batch: list[Item]) -> None:
        conn = await self._prepare(0, batch)
        t0 = time.perf_counter()
        while batch:
            conflicts = await self._try_commit(conn, batch)
            if not conflicts:
                break
            await self._resync(conflicts)
            batch = [i for i in batch if i.stream_id not in conflicts]
        if batch:
            await self._committed(batch, time.perf_counter() - t0)

    async def _try_commit(
        self,
        conn: psycopg.AsyncConnection[object],
        batch: list[Item],
        after: asyncio.Event | None = None,
        done: asyncio.Event | None = None,
    ) -> set[int]:
        """Commit the batch, or roll it back and return the streams whose guard failed. With
        `after`, the guards wait until the batch before this one has ended (committed or not);
        `done` is set when this one has."""
        ranges: dict[int, list[int]] = {}  # stream -> [first seq, last seq, events]
        unsequenced: Counter[int] = Counter()
        for item in batch:  # once per event: kept inline
            if isinstance(item, EventRecord):
                seq = item.seq
                if seq is None:
                    unsequenced[item.stream_id] += 1
                    continue
                first, last, n = seq, seq, 1
            else:
                first, last, n = item.first_seq, item.last_seq, 0
            span = ranges.get(item.stream_id)
            if span is None:
                ranges[item.stream_id] = [first, last, n]
            else:
                span[1] = last
                span[2] += n
        conflicts: set[int] = set()
        try:
            async with conn.transaction(), conn.cursor() as cur:
                async with cur.copy(COPY_SQL) as copy:
                    copy.set_types(COPY_TYPES)
                    write_row = copy.write_row
                    for i in batch:
                        if isinstance(i, EventRecord):
                            await write_row(
                                (i.stream_id, i.seq, i.ts, i.subject, i.size,
                                 Jsonb(i.headers) if i.headers else None, i.msg_id,
                                 i.trace_id, i.span_id, i.service, i.payload, i.truncated)
                            )  # fmt: skip
                gaps = [i for i in batch if isinstance(i, Gap)]
                if gaps:
                    await cur.executemany(
                        "INSERT INTO flowscope_gap (stream_id, first_seq, last_seq, reason, "
                        "detected_at) VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING",
                        [(g.stream_id, g.first_seq, g.last_seq, g.reason) for g in gaps],
                    )
                if after is not None:
                    await after.wait()  # the guards in batch order
                for stream_id, (first, last, n) in ranges.items():
                    await cur.execute(
                        "UPDATE flowscope_checkpoint SET last_seq = %s, "
                        "recorded = recorded + %s, updated_at = now() "
                        "WHERE stream_id = %s AND last_seq = %s",
                        (last, n, stream_id, first - 1),
                    )
                    if cur.rowcount != 1:
                        conflicts.add(stream_id)
                if conflicts:
                    raise psycopg.Rollback()  # leaves the `transaction()` block, rolled back
                for stream_id, n in unsequenced.items():
                    await cur.execute(
                        "UPDATE flowscope_checkpoint SET recorded = recorded + %s, "
                        "updated_at = now() WHERE stream_id = %s",
                        (n, stream_id),
                    )
        finally:
            if done is not None:
                done.set()
        return conflicts


def summarize(batch: list[Item]) -> Committed:
    events: list[EventRecord] = []
    gaps: list[Gap] = []
    last: dict[int, int] = {}
    counts: Counter[int] = Counter()
    for i in batch:  # one pass: this runs once per event
        if isinstance(i, EventRecord):
            events.append(i)
            counts[i.stream_id] += 1
            seq = i.seq
            if seq is None:
                continue
        else:
            gaps.append(i)
            seq = i.last_seq
        if seq > last.get(i.stream_id, 0):
            last[i.stream_id] = seq
        else:
            last.setdefault(i.stream_id, 0)
    return Committed(events=events, gaps=gaps, last_seq=last, counts=counts)
