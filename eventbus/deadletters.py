"""Dead-letter capture: every message a consumer gave up on becomes one row of flowscope_deadletter.

Where they come from:
- The server's max-deliveries and terminated advisories. They are core NATS messages, lost while
  nobody listens, so the tap keeps them in a stream of Flowscope's own (FLOWSCOPE_ADVISORIES by
  default: limits, file storage, 7 days), created or updated on start. One durable pull consumer
  on it is shared by every tap: the server hands each advisory to one tap, which acks it only
  after its row is committed. A tap that is down leaves them waiting in the stream; one that
  dies mid-way leaves them unacked, so they come again (ack wait) to whichever tap runs.
- Streams named in FLOWSCOPE_DLQ_STREAMS (names or fnmatch patterns): each message there is one
  dead letter, read by a durable consumer of the same kind (`flowscope_dlq`).

Exactly once per death, and the ack after the commit. A death is (stream, seq, consumer) within
one life of the stream and the consumer (`insert`): a redelivered advisory, or the server's own
repeat of it with a new time, finds the row and is acked again; the same seq dying in a stream or
consumer created again is another death, and another row.

The message itself: read from its stream by sequence (after max deliveries the server keeps
it), else the tap's stored copy (a terminated message leaves interest and work-queue streams),
else the row says the payload is gone. A message the tap has not recorded yet (it died within
moments of being published) is asked for again shortly before it is called gone.

Naks (issue #15.5): the server's MSG_NAKED advisories come through the same stream and consumer
(not the tap's event observers), one row of flowscope_nak each per (stream, seq, consumer,
delivery, time), written a batch at a time (one INSERT of arrays) and acked after the commit;
the dead letter's page lists them before its final event. Naks can be many (a consumer refusing in a
loop), so the stream is bounded (ADVISORY_MAX_PER_SUBJECT per subject, i.e. per kind, stream
and consumer; ADVISORY_MAX_BYTES in all; the oldest go first) and the tap's retention loop
deletes rows older than FLOWSCOPE_RETENTION (`expire_naks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from psycopg.types.json import Jsonb

from eventbus import metrics
from eventbus.aio import wait_event
from eventbus.records import clean_text, parse_nats_time
from eventbus.registry import JetStreamError, list_streams

log = logging.getLogger("flowscope.deadletters")

ADVISORY_STREAM = "FLOWSCOPE_ADVISORIES"
ADVISORY_SUBJECTS = (
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.>",
)
NAK_SUBJECTS = "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED."
NAK_TYPE = "io.nats.jetstream.advisory.v1.nak"
# The advisories' stream's bounds (the oldest go first): what the tap has read is kept only for
# a look with `nats stream view`, so these bite only while no tap reads, and then first on the
# subject that floods (one consumer naking in a loop), not on the others' dead letters.
ADVISORY_MAX_PER_SUBJECT = 100_000
ADVISORY_MAX_BYTES = 1 << 30
EXPIRE_BATCH = 10_000  # naks deleted per statement (short transactions, no long lock)
ADVISORY_CONSUMER = "flowscope_deadletters"
DLQ_CONSUMER = "flowscope_dlq"
REASONS = {
    "io.nats.jetstream.advisory.v1.max_deliver": "max_deliveries",
    "io.nats.jetstream.advisory.v1.terminated": "terminated",
}
BATCH = 100
# Failures that pass (NATS reconnecting, PostgreSQL restarting): waited out, not task failures.
TRANSIENT = (
    nats.errors.Error,
    JetStreamError,
    TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
# What RePublish adds to the copies the tap records (ADR-28).
REPUBLISH_HEADERS = frozenset(
    ("nats-stream", "nats-subject", "nats-sequence", "nats-time-stamp", "nats-last-sequence")
)


class BadAdvisory(ValueError):
    """An advisory that cannot name a dead letter (not JSON, an unknown type, fields missing)."""


@dataclass(frozen=True)
class Death:
    """Which message died, where, and why."""

    reason: str  # "max_deliveries", "terminated", "dlq_stream"
    stream: str
    seq: int
    consumer: str  # "" for a message of a dead-letter stream
    deliveries: int
    died_at: datetime
    terminate_reason: str = ""
    origin_stream: str = ""  # a DLQ message's origin, as its headers name it
    origin_seq: int | None = None


@dataclass(frozen=True)
class Original:
    """The dead message's content and where it was found."""

    subject: str
    headers: dict[str, str] | None
    payload: bytes
    truncated: bool
    source: str  # "stream", "recorded", "gone"


GONE = Original("", None, b"", False, "gone")


def _positive_int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadAdvisory(f"{key} is {value!r}, not a positive integer")
    return value


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise BadAdvisory(f"{key} is {value!r}, not a name")
    return value


def _object(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadAdvisory(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadAdvisory("not a JSON object")
    return body


def parse_advisory(data: bytes, now: datetime | None = None) -> Death:
    """A max-deliveries or terminated advisory's JSON, as the server sends it."""
    body = _object(data)
    reason = REASONS.get(str(body.get("type")))
    if reason is None:
        raise BadAdvisory(f"type {body.get('type')!r} is not a dead-letter advisory")
    deliveries = body.get("deliveries", 0)
    if isinstance(deliveries, bool) or not isinstance(deliveries, int) or deliveries < 0:
        deliveries = 0
    stamp = body.get("timestamp")
    died_at = parse_nats_time(stamp if isinstance(stamp, str) else None)
    return Death(
        reason=reason,
        stream=_name(body, "stream"),
        seq=_positive_int(body, "stream_seq"),
        consumer=_name(body, "consumer"),
        deliveries=deliveries,
        died_at=died_at or now or datetime.now(UTC),
        terminate_reason=clean_text(str(body.get("reason") or "")),
    )


@dataclass(frozen=True)
class NakReport:
    """Delivery number `deliveries` of `stream`:`seq` was nak'ed by `consumer` at `at`."""

    stream: str
    seq: int
    consumer: str
    deliveries: int
    at: datetime


def parse_nak(data: bytes, now: datetime | None = None) -> NakReport:
    """A MSG_NAKED advisory's JSON, as the server sends it (io.nats.jetstream.advisory.v1.nak);
    `now` stands for a missing or unreadable timestamp."""
    body = _object(data)
    if body.get("type") != NAK_TYPE:
        raise BadAdvisory(f"type {body.get('type')!r} is not a nak advisory")
    stamp = body.get("timestamp")
    at = parse_nats_time(stamp if isinstance(stamp, str) else None)
    return NakReport(
        stream=_name(body, "stream"),
        seq=_positive_int(body, "stream_seq"),
        consumer=_name(body, "consumer"),
        deliveries=_positive_int(body, "deliveries"),  # part of the key: required
        at=at or now or datetime.now(UTC),
    )


def _stored_at(msg: Msg) -> datetime | None:
    """When the advisory stream stored `msg` (None for a message not from a stream)."""
    try:
        return msg.metadata.timestamp
    except Exception:  # nats-py raises NotJSMessageError for a core message
        return None


def _header(headers: dict[str, str] | None, name: str) -> str:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return ""


def dlq_letter(
    stream: str, seq: int, subject: str, headers: dict[str, str] | None, data: bytes, ts: datetime
) -> tuple[Death, Original]:
    """A message of a dead-letter stream: itself the dead letter, plus the origin its headers
    name (`Nats-Stream`, `Nats-Sequence`, `Nats-Subject` of a republished copy)."""
    origin_seq = _header(headers, "Nats-Sequence")
    death = Death(
        reason="dlq_stream",
        stream=stream,
        seq=seq,
        consumer="",
        deliveries=0,
        died_at=ts,
        origin_stream=_header(headers, "Nats-Stream")[:255],
        origin_seq=int(origin_seq) if origin_seq.isdigit() else None,
    )
    original_subject = _header(headers, "Nats-Subject") or subject
    return death, Original(original_subject, headers, data, False, "stream")


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def digest_subject(prefix: str = "flowscope") -> str:
    """Where both digests below go (core NATS)."""
    return f"{prefix}.digest.deadletters"


# The body of `<prefix>.digest.deadletters` (JSON, one object):
#   {"kind": "deadletters",
#    "counts":  [{"stream": S, "consumer": C, "reason": R, "count": N}, ...],
#    "changed": [{"stream": S, "consumer": C, "status": T, "count": N}, ...],
#    "total": N}
# `counts`: dead letters just written (status new), sent by the capture (deadletters_digest);
# `changed`: dead letters whose status just changed to T (replayed, discarded), sent by whoever
# changed it, after the commit (deadletters_changed_digest); a body has one or the other.
# `consumer` is "" for a dead-letter stream's message. The web processes re-render what shows
# them (dashboard/live/hub.py dirty_topics): every /dead-letters/ list, the overview, the
# topology, and the pages of the streams and consumers named; they read the figures from the
# database, so a digest says where to look, not what to show (a lost one is made good by the
# pages' periodic refresh).
def deadletters_digest(counts: Counter[tuple[str, str, str]]) -> bytes:
    """How many dead letters were just written, per (stream, consumer, reason)."""
    body = {
        "kind": "deadletters",
        "counts": [
            {"stream": s, "consumer": c, "reason": r, "count": n}
            for (s, c, r), n in sorted(counts.items())
        ],
        "total": sum(counts.values()),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def deadletters_changed_digest(changes: Counter[tuple[str, str, str]]) -> bytes:
    """How many dead letters just changed status, per (stream, consumer, new status): what a
    replay or a discard publishes on `digest_subject(prefix)` once its change is committed."""
    body = {
        "kind": "deadletters",
        "changed": [
            {"stream": s, "consumer": c, "status": t, "count": n}
            for (s, c, t), n in sorted(changes.items())
        ],
        "total": sum(changes.values()),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _clean_headers(headers: dict[str, Any] | None) -> dict[str, str] | None:
    if not headers:
        return None
    return {clean_text(str(k), 256): clean_text(str(v)) for k, v in headers.items()}


async def ensure_advisory_stream(js: JetStreamContext, name: str) -> None:
    """The advisories' stream, as Flowscope wants it (created, or its config put back)."""
    config = StreamConfig(
        name=name,
        description="Flowscope: consumer advisories naming dead letters and naks (read by the tap)",
        subjects=list(ADVISORY_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600,
        max_msgs_per_subject=ADVISORY_MAX_PER_SUBJECT,
        max_bytes=ADVISORY_MAX_BYTES,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists with another config (10058)
        await js.update_stream(config)


async def durable(
    js: JetStreamContext, stream: str, name: str
) -> JetStreamContext.PullSubscription:
    """The shared durable pull consumer `name` on `stream` (created if missing), bound."""
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=-1,
            max_ack_pending=1000,
        ),
    )
    return await js.pull_subscribe_bind(name, stream=stream)


class DeadLetterCapture:
    """A task of the tap (supervised): reads the advisories and the DLQ streams until `stop`."""

    def __init__(
        self,
        nc: Client,
        database_url: str,
        stop: asyncio.Event,
        *,
        advisory_stream: str = ADVISORY_STREAM,
        dlq_streams: tuple[str, ...] = (),
        subject_prefix: str = "flowscope",
        recent: float = 30.0,
        discover_interval: float = 5.0,
    ):
        self.nc = nc
        self.database_url = database_url
        self.stop = stop
        self.advisory_stream = advisory_stream
        self.dlq_streams = dlq_streams
        self.subject_prefix = subject_prefix
        self.recent = timedelta(seconds=recent)  # how long a message may still be recorded
        self.discover_interval = discover_interval
        self.written = 0
        self.naks_written = 0
        self.bad = 0

    async def run(self) -> None:
        """The advisories, until `stop`; NATS or PostgreSQL away is waited out here (what is
        not acked stays in the stream), not counted as a failure of the task."""
        await self._retrying("advisories", self._advisory_session)

    async def run_dlq(self) -> None:
        """The dead-letter streams (FLOWSCOPE_DLQ_STREAMS), until `stop`."""
        await self._retrying("dead-letter streams", self._dlq_streams)

    async def _retrying(self, what: str, session: Callable[[], Awaitable[None]]) -> None:
        while not self.stop.is_set():
            try:
                await session()
            except TRANSIENT as exc:
                if self.stop.is_set():
                    return
                log.warning("dead letters: %s paused (%r): retrying in 2 s", what, exc)
                await wait_event(self.stop, 2.0)

    async def _advisory_session(self) -> None:
        js = self.nc.jetstream()
        await ensure_advisory_stream(js, self.advisory_stream)
        sub = await durable(js, self.advisory_stream, ADVISORY_CONSUMER)
        log.info("dead letters: reading advisories from stream %s", self.advisory_stream)
        try:
            async with await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name="flowscope-tap-deadletters",
                connect_timeout=5,
            ) as db:  # fmt: skip
                await self._advisories(db, js, sub)
        finally:
            await _unsubscribe(sub)

    async def _advisories(
        self, db: psycopg.AsyncConnection[Any], js: JetStreamContext, sub: Any
    ) -> None:
        while not self.stop.is_set():
            msgs = await _fetch(sub, BATCH, 1.0)
            naks = [m for m in msgs if m.subject.startswith(NAK_SUBJECTS)]
            deaths = [m for m in msgs if not m.subject.startswith(NAK_SUBJECTS)]
            try:
                await self._capture_naks(db, naks)
            except BaseException:  # what this tap holds goes back at once, not after ack wait
                await _nak(msgs)
                raise
            counts: Counter[tuple[str, str, str]] = Counter()
            for n, msg in enumerate(deaths):
                try:
                    await self._capture(db, js, msg, counts)
                except BaseException:
                    await _nak(deaths[n:])
                    raise
            await self._announce(counts)

    async def _capture_naks(self, db: psycopg.AsyncConnection[Any], msgs: list[Msg]) -> None:
        """A batch's nak advisories: one INSERT, then each acked (after the commit)."""
        reports: list[NakReport] = []
        parsed: list[Msg] = []
        for msg in msgs:
            try:
                report = parse_nak(msg.data, _stored_at(msg))
            except BadAdvisory as exc:
                await self._ignore(msg, exc)  # acked
                continue
            parsed.append(msg)
            # The capture's own naks (an advisory to read again) are not an application's.
            if report.stream != self.advisory_stream:
                reports.append(report)
        if reports:
            self.naks_written += await insert_naks(db, reports)
        for msg in parsed:
            await msg.ack()

    async def _ignore(self, msg: Msg, exc: BadAdvisory) -> None:
        self.bad += 1
        metrics.DEADLETTER_ADVISORIES_IGNORED.inc()
        log.warning("dead letters: advisory on %s ignored (%s): %r", msg.subject, exc,
                    msg.data[:200])  # fmt: skip
        await msg.ack()  # it will never parse: do not have it delivered again

    async def _capture(
        self,
        db: psycopg.AsyncConnection[Any],
        js: JetStreamContext,
        msg: Msg,
        counts: Counter[tuple[str, str, str]],
    ) -> None:
        death = await self._parse(msg)
        if death is None:
            return
        original = await self._original(db, js, death)
        if original is None:  # the tap may still record it: ask again soon
            await msg.nak(delay=1)
            return
        if await insert(db, death, original):
            counts[death.stream, death.consumer, death.reason] += 1
        await msg.ack()  # after the commit (autocommit): a lost ack only repeats

    async def _parse(self, msg: Msg) -> Death | None:
        try:  # (an advisory without a time: the time it was stored, the same on redelivery)
            return parse_advisory(msg.data, _stored_at(msg))
        except BadAdvisory as exc:
            await self._ignore(msg, exc)
            return None

    async def _original(
        self, db: psycopg.AsyncConnection[Any], js: JetStreamContext, death: Death
    ) -> Original | None:
        try:
            raw = await js.get_msg(death.stream, death.seq)
        except nats.js.errors.NotFoundError:  # the message, or its stream, is gone
            raw = None
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
            log.warning("dead letters: %s:%d cannot be read now (%r)", death.stream, death.seq,
                        exc)  # fmt: skip
            return None
        # The same sequence in a newer incarnation of the stream is another message.
        if raw is not None and (raw.time is None or raw.time <= death.died_at):
            return Original(
                clean_text(raw.subject or ""),
                _clean_headers(raw.headers),
                raw.data or b"",
                False,
                "stream",
            )
        return await recorded(db, death, datetime.now(UTC) - self.recent)

    async def _announce(self, counts: Counter[tuple[str, str, str]]) -> None:
        if not counts:
            return
        self.written += sum(counts.values())
        for (stream, _consumer, reason), n in counts.items():
            metrics.DEADLETTERS_CAPTURED.labels(stream, reason).inc(n)
        if self.nc.is_connected:
            try:
                await self.nc.publish(
                    digest_subject(self.subject_prefix), deadletters_digest(counts)
                )
                metrics.DIGESTS_PUBLISHED.labels("deadletters").inc()
            except nats.errors.Error as exc:
                log.warning("dead letters: digest not sent (%r)", exc)

    async def _dlq_streams(self) -> None:
        """Every stream matching FLOWSCOPE_DLQ_STREAMS, each message one dead letter."""
        js = self.nc.jetstream()
        subs: dict[str, Any] = {}
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, application_name="flowscope-tap-deadletters",
            connect_timeout=5,
        ) as db:  # fmt: skip
            try:
                next_look = 0.0
                while not self.stop.is_set():
                    loop_time = asyncio.get_running_loop().time()
                    if loop_time >= next_look:
                        next_look = loop_time + self.discover_interval
                        await self._bind_dlq(js, subs)
                    if not subs:
                        await wait_event(self.stop, 0.5)
                    for name, sub in list(subs.items()):
                        try:
                            await self._dlq_batch(db, name, sub)
                        except nats.errors.Error as exc:  # deleted meanwhile: looked up again
                            log.warning("dead letters: DLQ stream %s: %r", name, exc)
                            await _unsubscribe(subs.pop(name))
            finally:
                for sub in subs.values():
                    await _unsubscribe(sub)

    async def _bind_dlq(self, js: JetStreamContext, subs: dict[str, Any]) -> None:
        listing = await list_streams(self.nc)
        for s in listing.streams:
            if s.name in subs or s.name == self.advisory_stream:
                continue
            if matches(s.name, self.dlq_streams):
                subs[s.name] = await durable(js, s.name, DLQ_CONSUMER)
                log.info("dead letters: stream %s is a dead-letter stream", s.name)

    async def _dlq_batch(self, db: psycopg.AsyncConnection[Any], name: str, sub: Any) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        msgs = await _fetch(sub, BATCH, 0.5)
        for n, msg in enumerate(msgs):
            meta = msg.metadata
            death, original = dlq_letter(
                name,
                meta.sequence.stream,
                clean_text(msg.subject),
                _clean_headers(msg.headers),
                msg.data,
                meta.timestamp,
            )
            try:
                if await insert(db, death, original):
                    counts[death.stream, death.consumer, death.reason] += 1
            except BaseException:
                await _nak(msgs[n:])
                raise
            await msg.ack()  # after the commit
        await self._announce(counts)


async def _fetch(sub: Any, batch: int, timeout: float) -> list[Msg]:
    try:
        msgs: list[Msg] = await sub.fetch(batch, timeout=timeout)
        return msgs
    except TimeoutError:  # nats-py raises asyncio's or its own (a subclass)
        return []


async def _nak(msgs: list[Msg]) -> None:
    for msg in msgs:
        with contextlib.suppress(Exception):  # NATS away: the ack wait brings them back
            await msg.nak()


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(nats.errors.Error):
        await sub.unsubscribe()


async def incarnation(
    db: psycopg.AsyncConnection[Any], name: str, died_at: datetime
) -> tuple[int, str, int] | None:
    """(stream_id, observed_by, checkpoint) of the stream's incarnation the message died in."""
    cur = await db.execute(
        "SELECT s.id, s.observed_by, COALESCE(c.last_seq, 0) FROM flowscope_stream s "
        "LEFT JOIN flowscope_checkpoint c ON c.stream_id = s.id "
        "WHERE s.name = %s AND s.created <= %s ORDER BY s.created DESC LIMIT 1",
        (name, died_at),
    )
    row = await cur.fetchone()
    return (int(row[0]), str(row[1]), int(row[2])) if row else None


async def recorded(
    db: psycopg.AsyncConnection[Any], death: Death, recent_since: datetime
) -> Original | None:
    """The tap's stored copy; GONE when there is none; None when the tap may still record it
    (it reads the stream by sequence, has not reached this one, and the death is recent)."""
    found = await incarnation(db, death.stream, death.died_at)
    if found is None:
        return GONE if death.died_at < recent_since else None
    stream_id, observed_by, last_seq = found
    cur = await db.execute(
        "SELECT subject, headers, payload, truncated FROM flowscope_event "
        "WHERE stream_id = %s AND seq = %s LIMIT 1",
        (stream_id, death.seq),
    )
    row = await cur.fetchone()
    if row is not None:
        headers = row[1]
        if observed_by == "republish" and headers:  # the server's additions, not the original's
            headers = {k: v for k, v in headers.items() if k.lower() not in REPUBLISH_HEADERS}
        return Original(str(row[0]), headers or None, bytes(row[2]), bool(row[3]), "recorded")
    sequenced = observed_by in ("consumer", "republish")
    if sequenced and last_seq < death.seq and death.died_at >= recent_since:
        return None
    return GONE


async def life_start(
    db: psycopg.AsyncConnection[Any], death: Death, stream_id: int | None
) -> datetime | None:
    """When the life the message died in began: the later of its stream incarnation's and its
    consumer's creation (as the server gave them); None when the tap has not seen the stream."""
    if stream_id is None:
        return None
    cur = await db.execute(
        "SELECT GREATEST(s.created, c.created) FROM flowscope_stream s "
        "LEFT JOIN flowscope_consumer c ON c.stream_id = s.id AND c.name = %s "
        "AND c.created <= %s WHERE s.id = %s",
        (death.consumer, death.died_at, stream_id),
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def insert(db: psycopg.AsyncConnection[Any], death: Death, original: Original) -> bool:
    """One dead letter, unless this death is already there; True when this call wrote it.

    One death: (stream, seq, consumer) within one life of the stream and the consumer. The server
    may send a message's max-deliveries advisory again (after a restart or a leader change, with
    a new time): a row of the same seq and consumer since the life began is that death. A stream
    or consumer created again is a new life: its seq dying again is another row. Taps racing on
    one death take turns (a transaction-scoped advisory lock on the key)."""
    found = await incarnation(db, death.stream, death.died_at)
    stream_id = found[0] if found else None
    since = await life_start(db, death, stream_id)
    async with db.transaction():
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"flowscope.deadletter/{death.stream}/{death.seq}/{death.consumer}",),
        )
        cur = await db.execute(
            """
            INSERT INTO flowscope_deadletter (stream_id, stream_name, seq, consumer, reason,
                terminate_reason, deliveries, subject, headers, payload, truncated,
                payload_source, origin_stream, origin_seq, died_at, captured_at, status,
                status_note)
            SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 'new', ''
            WHERE NOT EXISTS (
                SELECT 1 FROM flowscope_deadletter WHERE stream_name = %s AND seq = %s
                AND consumer = %s AND died_at >= COALESCE(%s, '-infinity'::timestamptz))
            ON CONFLICT (stream_name, seq, consumer, died_at) DO NOTHING
            RETURNING id
            """,
            (stream_id, death.stream, death.seq, death.consumer, death.reason,
             death.terminate_reason, death.deliveries, original.subject,
             Jsonb(original.headers) if original.headers else None, original.payload,
             original.truncated, original.source, death.origin_stream, death.origin_seq,
             death.died_at, death.stream, death.seq, death.consumer, since),
        )  # fmt: skip
        return await cur.fetchone() is not None


async def insert_naks(db: psycopg.AsyncConnection[Any], naks: list[NakReport]) -> int:
    """A batch of naks in one statement, those already there (a redelivered advisory) skipped;
    how many this call wrote."""
    cur = await db.execute(
        """
        INSERT INTO flowscope_nak (stream_name, seq, consumer, deliveries, ts)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::int[], %s::timestamptz[])
        ON CONFLICT (stream_name, seq, consumer, deliveries, ts) DO NOTHING
        """,
        ([n.stream for n in naks], [n.seq for n in naks], [n.consumer for n in naks],
         [n.deliveries for n in naks], [n.at for n in naks]),
    )  # fmt: skip
    return max(cur.rowcount, 0)


async def expire_naks(db: psycopg.AsyncConnection[Any], before: datetime) -> int:
    """Deletes the naks reported before `before`, EXPIRE_BATCH rows a statement (`db` in
    autocommit: each its own short transaction); how many went."""
    gone = 0
    while True:
        cur = await db.execute(
            "DELETE FROM flowscope_nak WHERE id IN "
            "(SELECT id FROM flowscope_nak WHERE ts < %s LIMIT %s)",
            (before, EXPIRE_BATCH),
        )
        gone += max(cur.rowcount, 0)
        if cur.rowcount < EXPIRE_BATCH:
            return gone
