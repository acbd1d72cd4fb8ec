"""Replaying dead letters (issue #15): the publisher and the job worker.

A replay is a job in PostgreSQL (flowscope_replayjob) with one item per dead letter
(flowscope_replayitem), written by the web app (dashboard/replays.py). Its items are fixed when
it is created: the dead letter, the destination subject, and the `Nats-Msg-Id` the copy carries,
`flowscope-replay:<dead letter id>:<attempt>` (attempt = how many times that dead letter was
published by earlier replays), so a double click or a retried request publishes the same id
and the stream's duplicate window keeps one copy.

Who runs a job: `ReplayWorker`, a supervised task of every tap (`python manage.py tap`, which
`make run` and docker-compose start). It claims a job with `FOR UPDATE SKIP LOCKED` and a lease
that it renews after every batch, so two workers never run one job; a worker that dies stops
renewing, and when the lease runs out another one claims the job and goes on from the items not
yet recorded. An item published but not recorded when the worker died is published again with
the same `Nats-Msg-Id`: the server answers "duplicate" and the stream keeps one copy. A single
replay from the web is a job of one item that the web process claims itself when it creates it
and runs at once (`run_job`); if that process dies, the lease runs out and a worker finishes it.

Each copy: the original's payload (the dead letter's stored copy, or the stream's message by
sequence when only a truncated preview was stored), its headers less those that would make the
server reject or misroute it (every `Nats-*` header: expected-stream/sequence checks, rollups,
batches, TTLs, the old message id, RePublish's additions), plus `Nats-Msg-Id`,
`Flowscope-Replay-Of: <stream>:<seq>`, `Flowscope-Replayed-By: <user>` and a `traceparent`
continuing the original's trace (a new span whose parent is the original's). The publish
acknowledgement's stream and sequence, or the error, is the item's result; a dead letter whose
copy is stored becomes `replayed`, one whose copy failed stays `new`. In move mode the original
is then deleted from the stream where it is still stored (checked to be the same message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from psycopg.types.json import Jsonb

from eventbus import metrics
from eventbus.aio import wait_event
from eventbus.deadletters import deadletters_changed_digest, digest_subject
from eventbus.records import header, parse_traceparent
from eventbus.telemetry import messaging_attributes

log = logging.getLogger("flowscope.replay")

REPLAY_OF = "Flowscope-Replay-Of"
REPLAYED_BY = "Flowscope-Replayed-By"
MSG_ID = "Nats-Msg-Id"
LEASE = 15.0  # seconds a claim holds without renewal
ACK_WAIT = 5.0  # seconds to wait for a publish acknowledgement
MAX_BATCH = 2000  # items a batch, unthrottled: one read, one burst of publishes, one write
TICK = 0.25  # a throttled job records its progress (and sees a cancel) this often
# Failures of the connection, not of one message: the job stops here and is resumed.
TRANSIENT = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.TooManyStalledMsgsError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("flowscope.replay")


def msg_id(dead_letter_id: int, attempt: int) -> str:
    return f"flowscope-replay:{dead_letter_id}:{attempt}"


def dropped(name: str) -> bool:
    """Headers a copy must not carry: the server's control headers (all `Nats-*`), and the
    replay and trace headers that the copy gets anew."""
    lowered = name.lower()
    return lowered.startswith("nats-") or lowered in (
        REPLAY_OF.lower(),
        REPLAYED_BY.lower(),
        "traceparent",
    )


def _recording() -> bool:
    """Whether an OpenTelemetry SDK is set up (its spans are recorded and exported); without
    one the API's spans are no-ops, and the copy's span id is made here, about 20 times as
    fast (a bulk replay makes one per message)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def child_traceparent(parent: str | None, subject: str, message_id: str) -> tuple[str | None, Any]:
    """A traceparent for the copy: a new producer span whose parent is the original's span
    (None when the original carried no valid traceparent), and the span to end once the copy
    is acknowledged (None without an SDK: then only the id is made, and the copy still joins
    the original's journey)."""
    parsed = parse_traceparent(parent)
    if parsed is None or parent is None:
        return None, None
    flags = parent.strip()[-2:].lower()
    if flags not in ("00", "01"):
        flags = "01"
    if not _recording():
        return f"00-{parsed[0]}-{secrets.token_hex(8)}-{flags}", None
    ctx = _propagator.extract({"traceparent": parent.strip().lower()})
    span = _tracer.start_span(
        f"publish {subject}",  # as eventbus/telemetry.py's producer spans
        context=ctx,
        kind=SpanKind.PRODUCER,
        attributes=messaging_attributes(subject, "publish", message_id),
    )
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    made = parse_traceparent(carrier.get("traceparent"))
    if made is not None and made[1] != parsed[1]:
        return carrier["traceparent"], span
    return f"00-{parsed[0]}-{secrets.token_hex(8)}-{flags}", span


def copy_headers(
    original: dict[str, Any] | None,
    *,
    stream: str,
    seq: int,
    user: str,
    message_id: str,
    traceparent: str | None,
) -> dict[str, str]:
    """The copy's headers (pure: unit-tested)."""
    out: dict[str, str] = {}
    for name, value in (original or {}).items():
        if not dropped(name):
            out[name] = value[0] if isinstance(value, list) and value else str(value)
    out[MSG_ID] = message_id
    out[REPLAY_OF] = f"{stream}:{seq}"
    out[REPLAYED_BY] = user or "flowscope"
    if traceparent:
        out["traceparent"] = traceparent
    return out


@dataclass
class Item:
    id: int
    dead_letter: int
    msg_id: str
    subject: str
    stream: str
    seq: int
    headers: dict[str, Any] | None
    payload: bytes
    truncated: bool
    source: str
    died_at: datetime
    position: int
    consumer: str
    # the result
    state: str = "pending"
    result_stream: str = ""
    result_seq: int | None = None
    duplicate: bool = False
    error: str = ""
    deleted: bool | None = None
    span: Any = None


@dataclass
class Job:
    id: int
    username: str
    mode: str
    rate: float | None
    total: int
    published: int = 0
    failed: int = 0
    cancelled: bool = False


@dataclass
class Progress:
    """What a job run did, for the caller and the tests."""

    published: int = 0
    failed: int = 0
    batches: int = 0
    lost_lease: bool = False
    finished: bool = False
    errors: list[str] = field(default_factory=list)


def _error_text(exc: BaseException, subject: str) -> str:
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return f"no stream captures the subject {subject!r}: nothing was stored"
    if isinstance(exc, nats.js.errors.APIError):
        return f"the server refused it: {exc.description or exc}"
    if isinstance(exc, TimeoutError):
        return (
            f"no acknowledgement within {ACK_WAIT:g} s: it may be stored; a retry sends the "
            "same Nats-Msg-Id, so the stream keeps one copy"
        )
    return f"{type(exc).__name__}: {exc}"


async def _acks(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Each publish's acknowledgement, or its error (TimeoutError: none within ACK_WAIT).
    asyncio.wait on the futures themselves: no task a message."""
    if futures:
        await asyncio.wait(futures, timeout=ACK_WAIT)
    out: list[Any] = []
    for f in futures:
        if not f.done():
            f.cancel()
            out.append(TimeoutError())
        elif f.cancelled():
            out.append(TimeoutError())
        else:
            out.append(f.exception() or f.result())
    return out


class Runner:
    """Runs claimed jobs: one database connection (autocommit off, a transaction a batch)
    and one NATS connection."""

    def __init__(
        self,
        db: psycopg.AsyncConnection[Any],
        nc: Client,
        worker: str,
        prefix: str = "flowscope",
        db_record: psycopg.AsyncConnection[Any] | None = None,
    ):
        self.db = db
        # With a connection of its own, each batch's results are written while the next batch
        # is sent (a bulk replay goes about twice as fast); without, one after the other.
        self.db_record = db_record or db
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.worker = worker
        self.prefix = prefix

    # -- claiming -------------------------------------------------------------------------
    async def claim(self, job_id: int | None = None) -> Job | None:
        """The oldest job nobody holds (or the given one), now held by this worker."""
        where = "state IN ('pending', 'running') AND (lease_until IS NULL OR lease_until < now())"
        params: list[Any] = []
        if job_id is not None:
            where += " AND id = %s"
            params.append(job_id)
        async with self.db.transaction():
            cur = await self.db.execute(
                f"SELECT id FROM flowscope_replayjob WHERE {where} "
                "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                params,
            )
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await self.db.execute(
                """
                UPDATE flowscope_replayjob SET state = 'running',
                    resumed = resumed + (worker <> '' AND worker <> %s)::int,
                    worker = %s, lease_until = now() + %s * interval '1 second',
                    started_at = COALESCE(started_at, now())
                WHERE id = %s
                RETURNING id, username, mode, rate, total, published, failed, cancel_requested
                """,
                (self.worker, self.worker, LEASE, row[0]),
            )
            got = await cur.fetchone()
        assert got is not None
        metrics.REPLAY_JOBS.labels(state="claimed").inc()
        job = Job(int(got[0]), str(got[1]), str(got[2]), got[3], int(got[4]), int(got[5]),
                  int(got[6]), bool(got[7]))  # fmt: skip
        log.info("replay job %d: claimed by %s (%d of %d done)", job.id, self.worker,
                 job.published + job.failed, job.total)  # fmt: skip
        return job

    # -- running --------------------------------------------------------------------------
    async def run_job(self, job: Job, stop: asyncio.Event | None = None) -> Progress:
        """Publish the job's pending items at its rate, recording each batch, until none is
        left, it is cancelled, `stop` is set, or another worker holds it."""
        progress = Progress()
        batch = MAX_BATCH if not job.rate else max(1, min(MAX_BATCH, int(job.rate * TICK)))
        started = time.monotonic()
        sent = 0

        async def pace() -> None:  # the job's rate, over the whole run
            nonlocal sent
            if job.rate:
                wait = started + sent / job.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            sent += 1

        # Batch k is recorded (on the second connection) while batch k+1 is read and sent: at
        # most one batch is unrecorded; reads go by position, so they never wait for a record.
        recording: asyncio.Task[None] | None = None
        after = 0
        try:
            while True:
                if stop is not None and stop.is_set():
                    await _done(recording)
                    await self._release(job)
                    break
                if recording is None or self.db_record is self.db:  # (else the record does)
                    await self._renew(job)  # a worker whose lease ran out sends nothing more
                if job.cancelled:
                    await _done(recording)
                    await self._cancel_rest(job)
                    progress.finished = True
                    break
                items = await self._pending(job.id, batch, after)
                if not items:
                    await _done(recording)
                    await self._finish(job)
                    progress.finished = True
                    break
                after = items[-1].position
                await self._publish(job, items, pace)
                if job.mode == "move":
                    await self._delete_originals(items)
                await _done(recording)
                recording = asyncio.ensure_future(self._record(job, items))
                if self.db_record is self.db:
                    await _done(recording)
                progress.batches += 1
                for it in items:
                    if it.state == "published":
                        progress.published += 1
                    else:
                        progress.failed += 1
                        if len(progress.errors) < 20:
                            progress.errors.append(it.error)
        finally:
            if recording is not None and not recording.done():
                recording.cancel()
                with contextlib.suppress(BaseException):
                    await recording
        return progress

    async def _pending(self, job_id: int, limit: int, after: int = 0) -> list[Item]:
        """The next items not yet recorded, after position `after` (the batch in flight)."""
        cur = await self.db.execute(
            """
            SELECT i.id, d.id, i.msg_id, i.subject, d.stream_name, d.seq, d.headers, d.payload,
                   d.truncated, d.payload_source, d.died_at, i.position, d.consumer
            FROM flowscope_replayitem i JOIN flowscope_deadletter d ON d.id = i.dead_letter_id
            WHERE i.job_id = %s AND i.state = 'pending' AND i.position > %s
            ORDER BY i.position LIMIT %s
            """,
            (job_id, after, limit),
        )
        rows = await cur.fetchall()
        await self.db.commit()
        return [
            Item(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), r[6],
                 bytes(r[7]), bool(r[8]), str(r[9]), r[10], int(r[11]), str(r[12]))
            for r in rows
        ]  # fmt: skip

    async def _payload(self, item: Item) -> bytes | None:
        """The whole payload, or None with item.error saying why there is none."""
        if item.source == "gone":
            item.error = "the payload is gone: neither the stream nor the tap held it"
            return None
        if not item.truncated:
            return item.payload
        raw = await self._stored(item)
        if raw is not None:
            return bytes(raw.data or b"")
        item.error = (
            f"only the first {len(item.payload)} bytes were recorded and the stream "
            f"{item.stream} no longer holds the message"
        )
        return None

    async def _stored(self, item: Item) -> Any:
        """The original as its stream still holds it (the same message: not a newer one at the
        same sequence after the stream was re-created), else None."""
        try:
            raw = await self.js.get_msg(item.stream, item.seq)
        except (nats.js.errors.NotFoundError, nats.js.errors.APIError, nats.errors.TimeoutError):
            return None
        if raw.time is not None and raw.time > item.died_at:
            return None
        return raw

    async def _publish(
        self, job: Job, items: Sequence[Item], pace: Callable[[], Awaitable[None]]
    ) -> None:
        futures: list[tuple[Item, asyncio.Future[Any]]] = []
        paced = job.rate is not None
        for item in items:
            if paced:
                await pace()
            payload = item.payload if not item.truncated and item.source != "gone" else None
            if payload is None:
                payload = await self._payload(item)
            if payload is None:
                item.state = "failed"
                continue
            parent = header(item.headers, "traceparent")
            traceparent, item.span = child_traceparent(parent, item.subject, item.msg_id)
            headers = copy_headers(item.headers, stream=item.stream, seq=item.seq,
                                   user=job.username, message_id=item.msg_id,
                                   traceparent=traceparent)  # fmt: skip
            try:
                # no wait_stall: with one, nats-py waits in a task of its own, which yields to
                # the loop and sends each message in a write of its own (12 times as slow)
                future = await self.js.publish_async(item.subject, payload, headers=headers)
            except TRANSIENT:
                self._end_spans(items)
                raise
            except (nats.errors.Error, ValueError) as exc:  # a subject the client refuses
                item.state, item.error = "failed", _error_text(exc, item.subject)
                continue
            futures.append((item, future))
        results = await _acks([f for _, f in futures])
        for (item, _), result in zip(futures, results, strict=True):
            if isinstance(result, BaseException):
                if not self.nc.is_connected:  # the connection went: nothing is known
                    self._end_spans(items)
                    raise nats.errors.ConnectionReconnectingError()
                item.state, item.error = "failed", _error_text(result, item.subject)
            else:
                item.state = "published"
                item.result_stream, item.result_seq = result.stream, result.seq
                item.duplicate = bool(result.duplicate)
        self._end_spans(items)

    @staticmethod
    def _end_spans(items: Sequence[Item]) -> None:
        for item in items:
            if item.span is not None:
                if item.state == "failed":
                    item.span.set_status(trace.Status(trace.StatusCode.ERROR, item.error[:200]))
                item.span.end()
                item.span = None

    async def _delete_originals(self, items: Sequence[Item]) -> None:
        """Move mode: the original leaves its stream once its copy is stored."""
        for item in items:
            if item.state != "published":
                continue
            if await self._stored(item) is None:
                item.deleted = False  # no longer stored there (acked away, purged, expired)
                continue
            try:
                reply = await self.nc.request(
                    f"$JS.API.STREAM.MSG.DELETE.{item.stream}",
                    json.dumps({"seq": item.seq, "no_erase": True}).encode(),
                    timeout=ACK_WAIT,
                )
                body = json.loads(reply.data)
            except (nats.errors.Error, ValueError) as exc:
                item.deleted = False
                item.error = f"copied, but the original was not deleted: {exc!r}"
                continue
            item.deleted = bool(body.get("success"))
            if not item.deleted:
                error = body.get("error", {}).get("description", body)
                item.error = f"copied, but the original was not deleted: {error}"

    async def _renew(self, job: Job) -> None:
        """Extend the lease and see a cancel; _LostLease when another worker holds the job."""
        async with self.db.transaction():
            cur = await self.db.execute(
                "UPDATE flowscope_replayjob SET lease_until = now() + %s * interval '1 second' "
                "WHERE id = %s AND worker = %s AND state = 'running' RETURNING cancel_requested",
                (LEASE, job.id, self.worker),
            )
            row = await cur.fetchone()
        if row is None:
            raise _LostLease
        job.cancelled = bool(row[0])

    async def _record(self, job: Job, items: Sequence[Item]) -> None:
        """One transaction: the items' results, their dead letters' status, the job's counts
        and lease; _LostLease (and nothing written) when another worker holds the job now."""
        published = [it for it in items if it.state == "published"]
        failed = len(items) - len(published)
        db = self.db_record
        async with db.transaction():
            cur = await db.execute(
                """
                UPDATE flowscope_replayjob SET published = published + %s, failed = failed + %s,
                    lease_until = now() + %s * interval '1 second'
                WHERE id = %s AND worker = %s AND state = 'running'
                RETURNING cancel_requested, published, failed
                """,
                (len(published), failed, LEASE, job.id, self.worker),
            )
            row = await cur.fetchone()
            if row is None:
                raise _LostLease
            job.cancelled, job.published, job.failed = bool(row[0]), int(row[1]), int(row[2])
            await db.execute(
                """
                UPDATE flowscope_replayitem AS i SET state = u.state, result_stream = u.rs,
                    result_seq = u.seq, duplicate = u.dup, error = u.err,
                    deleted_original = u.del, ended_at = now()
                FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bool[],
                            %b::text[], %b::bool[]) AS u(id, state, rs, seq, dup, err, del)
                WHERE i.id = u.id
                """,
                (
                    [it.id for it in items],
                    [it.state for it in items],
                    [it.result_stream for it in items],
                    [it.result_seq for it in items],
                    [it.duplicate for it in items],
                    [it.error for it in items],
                    [it.deleted for it in items],
                ),
            )
            if published:  # (the replay's details are its item's: no note is written here)
                await db.execute(
                    "UPDATE flowscope_deadletter SET status = 'replayed' "
                    "WHERE id = ANY(%b::bigint[])",
                    ([it.dead_letter for it in published],),
                )
        for it in items:
            result = "failed" if it.state != "published" else "published"
            if it.duplicate:
                result = "duplicate"  # the stream had it already: no second copy
            metrics.REPLAYS_PUBLISHED.labels(result=result).inc()
        await self._announce(job, items)

    async def _finish(self, job: Job, state: str = "done") -> None:
        async with self.db.transaction():
            cur = await self.db.execute(
                """
                UPDATE flowscope_replayjob SET state = %s, finished_at = now(), lease_until = NULL
                WHERE id = %s AND worker = %s AND state = 'running'
                RETURNING user_id, username, total, published, failed, mode, subject, rate
                """,
                (state, job.id, self.worker),
            )
            row = await cur.fetchone()
            if row is None:
                return
            user_id, username, total, published, failed, mode, subject, rate = row
            detail = {"job": job.id, "total": total, "published": published, "failed": failed,
                      "mode": mode, "subject": subject or None, "rate": rate}  # fmt: skip
            result = "failed" if failed else "ok"
            error = f"{failed} of {total} failed" if failed else ""
            if state == "cancelled":
                error = f"cancelled after {published + failed} of {total}"
            await self.db.execute(
                "INSERT INTO flowscope_audit (ts, user_id, username, address, action, target, "
                "detail, result, error) VALUES (now(), %s, %s, NULL, %s, %s, %s, %s, %s)",
                (user_id, username, f"replay.{state}", f"replay job {job.id}", Jsonb(detail),
                 result, error),
            )  # fmt: skip
        metrics.REPLAY_JOBS.labels(state=state).inc()
        log.info("replay job %d %s: %d published, %d failed of %d", job.id, state, published,
                 failed, total)  # fmt: skip
        await self._announce(job, [])

    async def load(self, job_id: int) -> Job:
        """A job this worker already holds (the web claims a single replay as it creates it)."""
        cur = await self.db.execute(
            "SELECT id, username, mode, rate, total, published, failed, cancel_requested "
            "FROM flowscope_replayjob WHERE id = %s AND worker = %s",
            (job_id, self.worker),
        )
        r = await cur.fetchone()
        await self.db.commit()
        if r is None:
            raise LookupError(f"replay job {job_id} is not held by {self.worker}")
        return Job(int(r[0]), str(r[1]), str(r[2]), r[3], int(r[4]), int(r[5]), int(r[6]),
                   bool(r[7]))  # fmt: skip

    async def _release(self, job: Job) -> None:
        """Stopping mid-job: another worker may take it over at once."""
        async with self.db.transaction():
            await self.db.execute(
                "UPDATE flowscope_replayjob SET lease_until = now() "
                "WHERE id = %s AND worker = %s AND state = 'running'",
                (job.id, self.worker),
            )
        log.info("replay job %d: released by %s (stopping)", job.id, self.worker)

    async def _cancel_rest(self, job: Job) -> None:
        async with self.db.transaction():
            await self.db.execute(
                "UPDATE flowscope_replayitem SET state = 'cancelled', ended_at = now() "
                "WHERE job_id = %s AND state = 'pending'",
                (job.id,),
            )
        await self._finish(job, "cancelled")

    async def _announce(self, job: Job, items: Sequence[Item]) -> None:
        """`<prefix>.digest.replays`: the job's counts and the dead letters whose status
        changed, for the web processes to push (the job's page, the dead-letter pages)."""
        if not self.nc.is_connected:
            return
        body = {
            "jobs": {str(job.id): {"published": job.published, "failed": job.failed,
                                   "total": job.total}},
            "dead_letters": [it.dead_letter for it in items if it.state == "published"][:1000],
            "streams": sorted({it.stream for it in items}),
        }  # fmt: skip
        changed: Counter[tuple[str, str, str]] = Counter(
            (it.stream, it.consumer, "replayed") for it in items if it.state == "published"
        )
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(f"{self.prefix}.digest.replays", json.dumps(body).encode())
            if changed:  # dead-letter lists, counts, stream and consumer pages
                digest = deadletters_changed_digest(changed)
                await self.nc.publish(digest_subject(self.prefix), digest)


class _LostLease(Exception):
    pass


async def _done(task: asyncio.Future[None] | None) -> None:
    if task is not None:
        await task


async def run_claimed(runner: Runner, job: Job, stop: asyncio.Event | None = None) -> Progress:
    try:
        return await runner.run_job(job, stop)
    except _LostLease:
        log.warning("replay job %d: its lease ran out and another worker took it", job.id)
        return Progress(lost_lease=True)


def worker_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ReplayWorker:
    """The tap's supervised task: claim a job, run it, look again (at once when the web says
    a job was created, on `<prefix>.replay.wake`; else every `poll` seconds)."""

    def __init__(
        self,
        nc: Client,
        database_url: str,
        stop: asyncio.Event,
        prefix: str = "flowscope",
        poll: float = 1.0,
    ):
        self.nc = nc
        self.database_url = database_url
        self.stop = stop
        self.prefix = prefix
        self.poll = poll
        self.name = worker_name("tap")
        self.jobs_run = 0

    async def run(self) -> None:
        wake = asyncio.Event()

        async def woken(msg: Any) -> None:
            wake.set()

        sub = await self.nc.subscribe(f"{self.prefix}.replay.wake", cb=woken)
        try:
            connect = psycopg.AsyncConnection.connect
            async with (
                await connect(self.database_url, application_name="flowscope-replay",
                              connect_timeout=5) as db,
                await connect(self.database_url, application_name="flowscope-replay-results",
                              connect_timeout=5) as results,
            ):  # fmt: skip
                runner = Runner(db, self.nc, self.name, self.prefix, db_record=results)
                while not self.stop.is_set():
                    wake.clear()
                    job = await runner.claim()
                    if job is None:
                        await self._idle(wake)
                        continue
                    await run_claimed(runner, job, self.stop)
                    self.jobs_run += 1
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _idle(self, wake: asyncio.Event) -> None:
        await wait_event(wake, self.poll)  # the tap's stop is seen within `poll` seconds
