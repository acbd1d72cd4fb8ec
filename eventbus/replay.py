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

from eventbus.aio import wait_event
from eventbus.records import header, parse_traceparent

log = logging.getLogger("flowscope.replay")

REPLAY_OF = "Flowscope-Replay-Of"
REPLAYED_BY = "Flowscope-Replayed-By"
MSG_ID = "Nats-Msg-Id"
LEASE = 15.0  # seconds a claim holds without renewal
ACK_WAIT = 5.0  # seconds to wait for a publish acknowledgement
MAX_BATCH = 500
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


def child_traceparent(parent: str | None, subject: str, message_id: str) -> tuple[str | None, Any]:
    """A traceparent for the copy: a new producer span whose parent is the original's span
    (None when the original carried no valid traceparent), and the span to end once the copy
    is acknowledged. Without an OpenTelemetry SDK the API's span is not recording and keeps
    the parent's id, so a span id is made here: the copy still joins the journey."""
    parsed = parse_traceparent(parent)
    if parsed is None or parent is None:
        return None, None
    ctx = _propagator.extract({"traceparent": parent.strip().lower()})
    span = _tracer.start_span(
        f"{subject} publish",
        context=ctx,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
            "messaging.message.id": message_id,
        },
    )
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    made = parse_traceparent(carrier.get("traceparent"))
    if made is not None and made[1] != parsed[1]:
        return carrier["traceparent"], span
    flags = parent.strip()[-2:] if len(parent.strip()) >= 2 else "01"
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


async def _acked(future: asyncio.Future[Any]) -> Any:
    async with asyncio.timeout(ACK_WAIT):
        return await future


class Runner:
    """Runs claimed jobs: one database connection (autocommit off, a transaction a batch)
    and one NATS connection."""

    def __init__(
        self, db: psycopg.AsyncConnection[Any], nc: Client, worker: str, prefix: str = "flowscope"
    ):
        self.db = db
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

        while True:
            if stop is not None and stop.is_set():
                await self._release(job)
                break
            await self._renew(job)  # before sending: a worker whose lease ran out sends nothing
            if job.cancelled:
                await self._cancel_rest(job)
                progress.finished = True
                break
            items = await self._pending(job.id, batch)
            if not items:
                await self._finish(job)
                progress.finished = True
                break
            await self._publish(job, items, pace)
            if job.mode == "move":
                await self._delete_originals(items)
            await self._record(job, items)
            progress.batches += 1
            for it in items:
                if it.state == "published":
                    progress.published += 1
                else:
                    progress.failed += 1
                    if len(progress.errors) < 20:
                        progress.errors.append(it.error)
            await self._announce(job, items)
        return progress

    async def _pending(self, job_id: int, limit: int) -> list[Item]:
        cur = await self.db.execute(
            """
            SELECT i.id, d.id, i.msg_id, i.subject, d.stream_name, d.seq, d.headers, d.payload,
                   d.truncated, d.payload_source, d.died_at
            FROM flowscope_replayitem i JOIN flowscope_deadletter d ON d.id = i.dead_letter_id
            WHERE i.job_id = %s AND i.state = 'pending' ORDER BY i.position LIMIT %s
            """,
            (job_id, limit),
        )
        rows = await cur.fetchall()
        await self.db.commit()
        return [Item(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), r[6],
                     bytes(r[7]), bool(r[8]), str(r[9]), r[10]) for r in rows]  # fmt: skip

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
        for item in items:
            await pace()
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
                future = await self.js.publish_async(
                    item.subject, payload, headers=headers, wait_stall=ACK_WAIT
                )
            except TRANSIENT:
                self._end_spans(items)
                raise
            except (nats.errors.Error, ValueError) as exc:  # a subject the client refuses
                item.state, item.error = "failed", _error_text(exc, item.subject)
                continue
            futures.append((item, future))
        results = await asyncio.gather(*(_acked(f) for _, f in futures), return_exceptions=True)
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
        async with self.db.transaction():
            cur = await self.db.execute(
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
            await self.db.execute(
                """
                UPDATE flowscope_replayitem AS i SET state = u.state, result_stream = u.rs,
                    result_seq = u.seq, duplicate = u.dup, error = u.err,
                    deleted_original = u.del, ended_at = now()
                FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bool[],
                            %s::text[], %s::bool[]) AS u(id, state, rs, seq, dup, err, del)
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
            if published:
                await self.db.execute(
                    """
                    UPDATE flowscope_deadletter d SET status = 'replayed',
                        status_note = 'replayed by ' || %s || ' (replay job ' || %s || ') to '
                                      || u.rs || ' sequence ' || u.seq
                    FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS u(id, rs, seq)
                    WHERE d.id = u.id
                    """,
                    (
                        job.username or "flowscope",
                        job.id,
                        [it.dead_letter for it in published],
                        [it.result_stream for it in published],
                        [it.result_seq for it in published],
                    ),
                )

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
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(f"{self.prefix}.digest.replays", json.dumps(body).encode())


class _LostLease(Exception):
    pass


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
            async with await psycopg.AsyncConnection.connect(
                self.database_url, application_name="flowscope-replay", connect_timeout=5
            ) as db:
                runner = Runner(db, self.nc, self.name, self.prefix)
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
