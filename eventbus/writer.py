"""The tap's writer: one bounded buffer, batched COPY, checkpoints in the same transaction.

Observers `await writer.put(item)`; when the buffer is full that call waits, which stops the
observer from asking NATS for more (backpressure instead of memory growth or loss). A batch is
committed as one transaction: for each stream, the checkpoint moves from the sequence just before
the batch's first item to its last one *only if* the stored checkpoint is still that sequence.
Otherwise another tap (or an earlier incarnation of this one) wrote those sequences: the batch's
items for that stream are dropped and its observer is told to resume from the stored checkpoint.
That guard is what makes the table exactly-once across crashes, restarts and tap hand-overs.

Observers hand over `Chunk`s: events already encoded as binary COPY rows, sent as they are.
Up to three batches are in flight at once, each on its own connection, so PostgreSQL works on
them while the tap reads and encodes the next. Each transaction COPYs its rows first and checks
its checkpoint guards only once the batch before it has ended (committed or rolled back), so the
guards still apply in batch order and see what the earlier batch committed. Digests go out in
batch order. When a write fails (PostgreSQL gone) or meets a moved checkpoint, the writer lets
what is in flight settle, then writes what is left one batch at a time, in order. Memory stays
bounded: the buffer (in events and in bytes) plus the batches in flight (each at most
`batch_size` events or a quarter of the buffer's bytes, give or take one chunk).

Idempotent in the database: a batch written after a failure (a lost connection, a moved
checkpoint, a batch that met rows already stored) goes through a staging table and
`INSERT ... ON CONFLICT DO NOTHING`, so rows another writer committed meanwhile never fail it;
the checkpoint guard then decides, as on the fast path. The fast path stays a plain COPY; a
unique violation there (two taps on one stream during a hand-over) sends that batch to the
staged path instead of killing the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import islice

import psycopg
from opentelemetry import trace

from eventbus import telemetry
from eventbus.aio import wait_event
from eventbus.partitions import Partitions
from eventbus.records import COPY_SIGNATURE, COPY_TRAILER, NEWEST, Chunk, Gap, Recent

log = logging.getLogger("flowscope.writer")
# One span per batch committed (never per event): its checkpoint queries are its children.
tracer = trace.get_tracer("flowscope.tap")

Item = Chunk | Gap
COLUMNS = (
    "stream_id, seq, ts, subject, size, headers, msg_id, trace_id, span_id, service, payload, "
    "truncated"
)
COPY_SQL = f"COPY flowscope_event ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
# The staged path: the same binary rows into a temporary table of the same columns, then only
# the rows not stored yet into the event table. Rows vanish at commit or rollback.
STAGE_SQL = (
    f"CREATE TEMP TABLE IF NOT EXISTS flowscope_stage ON COMMIT DELETE ROWS AS "
    f"SELECT {COLUMNS} FROM flowscope_event WITH NO DATA"
)
STAGE_COPY_SQL = f"COPY flowscope_stage ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
STAGE_INSERT_SQL = (
    f"INSERT INTO flowscope_event ({COLUMNS}) SELECT {COLUMNS} FROM flowscope_stage "
    f"ON CONFLICT DO NOTHING"
)
# Errors that mean "this connection or server is gone or busy": retry the batch later.
RETRY = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass
class Committed:
    """What one committed batch wrote: the tap announces it as a digest."""

    count: int  # events
    gaps: list[Gap]
    last_seq: dict[int, int] = field(default_factory=dict)
    counts: Counter[int] = field(default_factory=Counter)  # events per stream id
    subjects: Counter[str] = field(default_factory=Counter)  # events per subject
    # (stream id, event) of the latest events, oldest first
    newest: list[tuple[int, Recent]] = field(default_factory=list)
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
        buffer_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 5_000,
        flush_interval: float = 0.25,
        linger: float = 0.01,
        on_commit: Callable[[Committed], Awaitable[None]] | None = None,
        on_conflict: Callable[[int], Awaitable[None]] | None = None,
        lanes: int = 3,
    ):
        self.database_url = database_url
        # The buffer: items in order, bounded in events and in bytes (a chunk is let in whole
        # when the buffer is empty, so one larger than the bound still passes).
        self.items: deque[Item] = deque()
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.held = 0  # events in the buffer
        self.held_bytes = 0
        self.arrived = asyncio.Event()  # set when an item is added
        self.room = asyncio.Event()  # set when items are taken
        self.batch_size = batch_size
        self.batch_bytes = max(1, buffer_bytes // 4)  # large payloads: a batch ends sooner
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
        self.last_commit: float | None = None  # time.time() of the last commit
        self.staged_batches = 0  # batches written through the staging table
        self.flights: deque[_Flight] = deque()
        self.retrying: list[list[Item]] = []  # batches waiting for a sequential, staged write
        self.progress = asyncio.Event()  # set whenever a batch lands (committed or not)
        self.resynced: set[int] = set()  # streams resynchronised while a failure is handled

    async def put(self, item: Item) -> None:
        """Buffer `item`, waiting for room first if need be (backpressure)."""
        while not self.offer(item):
            self.room.clear()
            await self.room.wait()

    def offer(self, item: Item) -> bool:
        """Buffer `item` if there is room (no coroutine: this runs once per chunk); False when
        the buffer is full, and the caller must `await put(item)`."""
        if self.held and (
            self.held + item.count > self.buffer_size
            or self.held_bytes + item.nbytes > self.buffer_bytes
        ):
            return False
        self.items.append(item)
        self.held += item.count
        self.held_bytes += item.nbytes
        self.arrived.set()
        return True

    def force(self, item: Item) -> None:
        """Buffer `item` even past the bounds (a stopped observer's last items: bounded by
        what one observer may hold pending)."""
        self.items.append(item)
        self.held += item.count
        self.held_bytes += item.nbytes
        self.arrived.set()

    def free(self) -> int:
        """Room in the buffer, in events."""
        return max(0, self.buffer_size - self.held)

    def holding(self) -> int:
        """Events taken from NATS and not committed yet: the buffer, the batches in flight
        and those waiting to be written again."""
        flying = sum(i.count for f in self.flights for i in f.batch)
        waiting = sum(i.count for b in self.retrying for i in b)
        return self.held + flying + waiting

    def down_for(self) -> float:
        """Seconds PostgreSQL has been refusing this writer's batches (0 while it takes them)."""
        return 0.0 if self.db_down_since is None else time.monotonic() - self.db_down_since

    def forget(self, stream_id: int) -> int:
        """Drop a stream's items from the buffer (its observer starts again from the stored
        checkpoint, or the stream went to another tap); returns how many events were dropped."""
        kept: deque[Item] = deque()
        dropped = 0
        for item in self.items:
            if item.stream_id == stream_id:
                dropped += item.count
                self.held -= item.count
                self.held_bytes -= item.nbytes
            else:
                kept.append(item)
        self.items = kept
        self.room.set()
        return dropped

    def holds(self, stream_id: int) -> bool:
        """Whether any item of the stream is buffered, in flight or waiting to be written."""
        return (
            any(i.stream_id == stream_id for i in self.items)
            or any(i.stream_id == stream_id for f in self.flights for i in f.batch)
            or any(i.stream_id == stream_id for b in self.retrying for i in b)
        )

    async def flush_stream(self, stream_id: int, timeout: float) -> bool:
        """Wait until everything held for the stream is committed (or dropped by a resync);
        False if that did not happen within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.holds(stream_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.db_down_since is not None:  # not while it cannot write
                return False
            self.progress.clear()
            await wait_event(self.progress, min(remaining, 0.1))
        return True

    def reset(self) -> None:
        """After the writer failed: forget everything held (the observers start again from
        the stored checkpoints, so nothing is lost)."""
        self.items.clear()
        self.held = self.held_bytes = 0
        self.flights.clear()
        self.retrying.clear()
        self.room.set()

    def _take(self) -> Item:
        item = self.items.popleft()
        self.held -= item.count
        self.held_bytes -= item.nbytes
        return item

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until `stop` is set and the buffer is empty."""
        flights = self.flights
        try:
            while not (stop.is_set() and not self.items):
                # Nothing to batch yet, or the oldest batch is done: land (and announce) it now.
                while flights and (flights[0].task.done() or not self.items):
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
            for lane in range(self.lanes):
                await self._drop(lane)

    async def _launch(self, batch: list[Item], after: asyncio.Event | None) -> _Flight | None:
        lane = self.next_lane
        self.next_lane = (lane + 1) % self.lanes
        try:
            conn = await self._prepare(lane, batch)
        except RETRY:
            await self._drop(lane)
            return None
        locked = asyncio.Event()
        task = asyncio.create_task(self._try_commit(conn, batch, after, locked))
        return _Flight(batch, task, locked, time.perf_counter())

    async def _land(self, flights: deque[_Flight], stop: asyncio.Event) -> None:
        """Wait for the oldest batch in flight and announce it; if it failed or met a moved
        checkpoint, let the rest settle too, then write what is left one batch at a time."""
        first = await self._settle(flights[0])
        flights.popleft()  # only now: until it has landed, its events count as held
        if first is None:
            return
        self.resynced.clear()
        retry = self.retrying
        retry.append(first)
        while flights:
            # Behind a batch that failed, a guard fails only because that batch is not in yet:
            # written again in order, after it, it passes (no resync, no observer restart).
            left = await self._settle(flights[0], behind_failure=True)
            flights.popleft()
            if left is not None:
                retry.append(left)
        if self.resynced:  # those streams' observers read again from the stored checkpoint
            retry[:] = [[i for i in b if i.stream_id not in self.resynced] for b in retry]
        if self.db_down_since is not None:
            for lane in range(self.lanes):
                await self._drop(lane)
        while retry:
            batch = retry[0]
            if batch:
                await self._write_until_done(batch, stop)
            retry.pop(0)
            self.progress.set()

    async def _settle(self, flight: _Flight, behind_failure: bool = False) -> list[Item] | None:
        """Wait for one batch in flight: None once committed and announced, else what of it
        is still to be written (all of it when PostgreSQL failed, or when it follows a batch
        that failed; the streams without a conflict when a checkpoint had moved)."""
        try:
            conflicts = await flight.task
            self._up()
        except RETRY as exc:
            self._down(exc, sum(i.count for i in flight.batch))
            return flight.batch
        except psycopg.IntegrityError as exc:
            # Rows of this batch are stored already: another tap wrote them during a hand-over,
            # or a batch re-read after a resync overlaps one committed meanwhile. The staged
            # path writes what is missing and lets the checkpoint guard decide.
            log.warning("batch meets rows already stored (%s): writing it staged", _first(exc))
            return flight.batch
        finally:
            self.progress.set()
        if conflicts:
            if behind_failure:
                return flight.batch
            await self._resync(conflicts)
            return [i for i in flight.batch if i.stream_id not in conflicts]
        await self._committed(flight.batch, time.perf_counter() - flight.started)
        return None

    async def _collect(self, stop: asyncio.Event) -> list[Item]:
        """The next batch: what the buffer holds, up to `batch_size` events, waiting up to
        `linger` after the first item for more."""
        if not self.items:
            self.arrived.clear()
            # asyncio.timeout rather than wait_for: no task per call (this waits once per burst).
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self.arrived.wait()
            except TimeoutError:
                return []
        batch: list[Item] = []
        events = nbytes = 0
        deadline = time.monotonic() + self.linger
        while True:
            while self.items and events < self.batch_size and nbytes < self.batch_bytes:
                item = self._take()
                batch.append(item)
                events += item.count
                nbytes += item.nbytes
            self.room.set()
            remaining = deadline - time.monotonic()
            full = events >= self.batch_size or nbytes >= self.batch_bytes
            if full or remaining <= 0 or stop.is_set():
                return batch
            self.arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.arrived.wait()
            except TimeoutError:
                return batch

    async def _connect(self, lane: int = 0) -> psycopg.AsyncConnection[object]:
        conn = self.conns[lane]
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.database_url, application_name="flowscope-tap-writer", connect_timeout=5
            )
            telemetry.instrument_connection(conn)
            self.conns[lane] = conn
        return conn

    async def _prepare(self, lane: int, batch: list[Item]) -> psycopg.AsyncConnection[object]:
        """The lane's connection, with the day partitions the batch's events go to."""
        conn = await self._connect(lane)
        days = set()
        for item in batch:
            if isinstance(item, Chunk) and item.count:
                days |= item.days()
        await self.partitions.ensure(conn, days)
        return conn

    async def _drop(self, lane: int) -> None:
        conn, self.conns[lane] = self.conns[lane], None
        if conn is not None:
            await conn.close()

    def _down(self, exc: Exception, holding: int) -> None:
        if self.db_down_since is None:
            self.db_down_since = time.monotonic()
            log.error(
                "PostgreSQL unavailable (%s): holding %d events and pausing NATS reads "
                "until it is back",
                _first(exc),
                holding + self.held,
            )

    async def _resync(self, conflicts: set[int]) -> None:
        self.resynced |= conflicts
        for stream_id in conflicts:
            log.warning(
                "stream %d: checkpoint moved under us (another tap?): resynchronising", stream_id
            )
            if self.on_conflict:
                await self.on_conflict(stream_id)

    def _up(self) -> None:
        """A transaction ended (committed, or rolled back on a guard): PostgreSQL answers."""
        if self.db_down_since is not None:
            log.warning(
                "PostgreSQL is back after %.1fs: writing resumed",
                time.monotonic() - self.db_down_since,
            )
            self.db_down_since = None

    async def _committed(self, batch: list[Item], seconds: float) -> None:
        self._up()
        committed = summarize(batch)
        committed.seconds = seconds
        self.written += committed.count
        self.last_commit = time.time()
        if self.on_commit:
            await self.on_commit(committed)

    async def _write_until_done(self, batch: list[Item], stop: asyncio.Event) -> None:
        """Write one batch on its own (nothing else in flight), staged, retrying until
        PostgreSQL takes it."""
        delay = 0.2
        while True:
            try:
                await self._write(batch)
                return
            except RETRY as exc:
                self._down(exc, sum(i.count for i in batch))
                await self._drop(0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, batch: list[Item]) -> None:
        conn = await self._prepare(0, batch)
        t0 = time.perf_counter()
        self.staged_batches += 1
        while batch:
            conflicts = await self._try_commit(conn, batch, staged=True)
            self._up()
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
        staged: bool = False,
    ) -> set[int]:
        """Commit the batch, or roll it back and return the streams whose guard failed. With
        `after`, the guards wait until the batch before this one has ended (committed or not);
        `done` is set when this one has. `staged`: rows already stored are skipped instead of
        failing the COPY."""
        ranges: dict[int, list[int]] = {}  # stream -> [first seq, last seq, events]
        unsequenced: Counter[int] = Counter()
        for item in batch:
            if isinstance(item, Chunk):
                if item.first_seq is None or item.last_seq is None:
                    unsequenced[item.stream_id] += item.count
                    continue
                first, last, n = item.first_seq, item.last_seq, item.count
            else:
                first, last, n = item.first_seq, item.last_seq, 0
            span = ranges.get(item.stream_id)
            if span is None:
                ranges[item.stream_id] = [first, last, n]
            else:
                span[1] = last
                span[2] += n
        conflicts: set[int] = set()
        events = sum(i.count for i in batch if isinstance(i, Chunk))
        try:
            with tracer.start_as_current_span("tap commit") as commit:
                commit.set_attribute("flowscope.batch.events", events)
                commit.set_attribute("flowscope.batch.streams", len(ranges) + len(unsequenced))
                commit.set_attribute("flowscope.batch.staged", staged)
                async with conn.transaction(), conn.cursor() as cur:
                    if staged:
                        await cur.execute(STAGE_SQL)
                    # The rows are already in COPY's binary format: sent as they are.
                    async with cur.copy(STAGE_COPY_SQL if staged else COPY_SQL) as copy:
                        await copy.write(COPY_SIGNATURE)
                        for i in batch:
                            if isinstance(i, Chunk) and i.rows:
                                await copy.write(i.rows)
                        await copy.write(COPY_TRAILER)
                    if staged:
                        await cur.execute(STAGE_INSERT_SQL)
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
                        commit.set_attribute("flowscope.batch.conflicts", len(conflicts))
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


def _first(exc: BaseException) -> str:
    """The first line of an error's text (PostgreSQL's own say more below it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def summarize(batch: list[Item]) -> Committed:
    gaps: list[Gap] = []
    last: dict[int, int] = {}
    counts: Counter[int] = Counter()
    subjects: Counter[str] = Counter()
    for i in batch:  # once per chunk
        if isinstance(i, Chunk):
            counts[i.stream_id] += i.count
            for subject, n in i.subjects.items():
                if isinstance(subject, bytes):
                    subject = subject.decode("utf-8", "replace")
                subjects[subject] += n
            seq = i.last_seq
            if seq is None:
                continue
        else:
            gaps.append(i)
            seq = i.last_seq
        if seq > last.get(i.stream_id, 0):
            last[i.stream_id] = seq
        else:
            last.setdefault(i.stream_id, 0)
    latest = (
        (i.stream_id, recent)
        for i in reversed(batch)
        if isinstance(i, Chunk)
        for recent in reversed(i.recent)
    )
    newest = list(islice(latest, NEWEST * 4))
    newest.reverse()
    return Committed(counts.total(), gaps, last, counts, subjects, newest)
