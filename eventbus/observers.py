"""One observer per stream: how the tap reads a stream without disturbing its applications.

- limits and interest streams: an ephemeral pull consumer, ack none, memory storage, a short
  inactive threshold, starting at the checkpoint + 1. Ack none means the server counts each
  message as acknowledged once delivered, so an interest stream is not held back while the tap
  keeps up, and if the tap dies its consumer vanishes after `inactive_threshold`. We ask for
  messages only when the writer has room (pull requests bounded in count and bytes), so nats-py's
  subscription queue can never overflow and drop silently, and we check sequence continuity
  ourselves: a jump is a gap, recorded as such.
- work-queue streams admit no second consumer: the tap subscribes to the stream's subjects
  (core NATS) and records what is published, without sequences; or, once an admin turned on
  RePublish for the stream, it reads the republished copies, which carry the stream sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from eventbus import wire
from eventbus.aio import wait_event
from eventbus.records import (
    REPUBLISH_SEQUENCE,
    REPUBLISH_TIMESTAMP,
    Chunk,
    EventRecord,
    Gap,
    ack_position,
    build_record,
    header,
    ns_to_pg_micros,
    parse_ack_subject,
    parse_nats_time,
    pg_micros,
    plain_subject,
)
from eventbus.scan import scan
from eventbus.writer import Item, Writer

log = logging.getLogger("flowscope.observer")

CONSUMER_PREFIX = "flowscope_tap"
GAP_REASON = "left the stream before the tap read it"
REPLICAS_MUST_MATCH = 10134  # JSConsumerReplicasShouldMatchStream
NS = 1_000_000_000


class ConsumerLost(RuntimeError):
    """The tap's consumer went away on the server (deleted, a leader change, a restart)."""


# How an observer's connection or consumer ends in normal operation (a restart, a failover).
EXPECTED_FAILURES = (NatsError, TimeoutError, ConnectionError, wire.WireError, ConsumerLost)


@dataclass
class ObserverSettings:
    preview_bytes: int = 64 * 1024
    service_header: str = "Flowscope-Service"
    batch: int = 1000  # messages per pull request
    inflight: int = 3  # pull requests outstanding at once
    expires: float = 5.0  # seconds a pull request waits on an idle stream
    heartbeat: float = 1.0  # the server's idle heartbeat while a request waits
    inactive_threshold: float = 15.0  # a dead tap's consumer vanishes after this
    max_request_bytes: int = 8 * 1024 * 1024
    reader: str = "wire"  # how consumers' deliveries are read: "wire" (eventbus.wire) or "nats-py"
    # A subject subscription cannot push back on publishers: past these, nats-py drops messages
    # (counted as dropped, logged and shown on the stream page).
    subject_pending_msgs: int = 65_536
    subject_pending_bytes: int = 64 * 1024 * 1024


class Observer:
    """Common part: a stream, where to resume, where records go."""

    mode = "none"

    def __init__(
        self,
        nc: Client,
        writer: Writer,
        stream: str,
        stream_id: int,
        next_seq: int,
        settings: ObserverSettings,
    ):
        self.nc = nc
        self.writer = writer
        self.stream = stream
        self.stream_id = stream_id
        self.next_seq = next_seq
        self.settings = settings
        self.task: asyncio.Task[None] | None = None
        self.received = 0
        self.ready = asyncio.Event()  # set once the observer receives what the stream gets
        self.halt = asyncio.Event()  # besides cancel(): nats-py's requests can lose a cancel
        self.pending: deque[Item] = deque()  # taken from NATS, not yet into the full buffer

    def start(self) -> None:
        self.halt.clear()
        self.task = asyncio.create_task(self._run_forever(), name=f"observer:{self.stream}")

    async def stop(self) -> None:
        self.halt.set()
        if self.task:
            self.task.cancel()
            # asyncio.wait, not `await task`: a cancellation of the *caller* must still
            # propagate (suppressing CancelledError here once let a stopping tap go on).
            await asyncio.wait([self.task])
            if not self.task.cancelled():
                self.task.exception()  # retrieved: it was logged where it happened
        await self._cleanup()

    async def _cleanup(self) -> None:
        return None

    async def resync(self, checkpoint: int) -> None:
        """Resume from `checkpoint + 1` (the writer found the stored checkpoint elsewhere)."""
        await self.stop()
        self.next_seq = checkpoint + 1
        self.pending.clear()  # from before the checkpoint someone else moved
        self.writer.forget(self.stream_id)  # the same: read again from the checkpoint on
        self.start()

    def hand_over_pending(self) -> None:
        """Once stopped for good (the stream goes to another tap): what was read and is still
        waiting for room goes to the writer anyway, so the new owner finds it committed."""
        while self.pending:
            self.writer.force(self.pending.popleft())

    async def _run_forever(self) -> None:
        delay = 0.5
        while not self.halt.is_set():
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The server or the connection going away is expected, and said in one line;
                # anything else is a bug, logged with its traceback.
                log.warning(
                    "stream %s: observer failed (%r); retrying in %.1fs", self.stream, exc, delay,
                    exc_info=not isinstance(exc, EXPECTED_FAILURES),
                )  # fmt: skip
                await self._cleanup()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        raise NotImplementedError

    def _take(
        self,
        seq: int | None,
        ts: int,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> None:
        """One message (`ts` in `pg_micros`): check continuity, encode it and hand it to the
        writer, synchronously; what the buffer has no room for waits in `pending`, in order,
        for `_drain_pending()`. (The lean reader does the same a socket read at a time.)"""
        if seq is not None:
            if seq < self.next_seq:
                return  # already recorded (a re-delivery after we recreated the consumer)
            if seq > self.next_seq:
                self._offer(Gap(self.stream_id, self.next_seq, seq - 1, GAP_REASON))
            self.next_seq = seq + 1
        chunk = Chunk(self.stream_id, seq)
        chunk.add_record(self._build(seq, ts, subject, data, headers))
        self._hand_over(chunk)

    def _hand_over(self, chunk: Chunk) -> None:
        chunk.close()
        self.received += chunk.count
        self._offer(chunk)

    def _build(
        self, seq: int | None, ts: int, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> EventRecord:
        return build_record(
            stream_id=self.stream_id, seq=seq, ts=ts, subject=subject, data=data,
            headers=headers, preview_bytes=self.settings.preview_bytes,
            service_header=self.settings.service_header,
        )  # fmt: skip

    def pending_events(self) -> int:
        return sum(item.count for item in self.pending)

    def _offer(self, item: Item) -> None:
        if self.pending or not self.writer.offer(item):
            self.pending.append(item)

    async def _drain_pending(self) -> None:
        """Wait until the writer took every pending item (backpressure)."""
        while self.pending:
            await self.writer.put(self.pending[0])
            self.pending.popleft()

    async def _record(self, seq: int | None, ts: int, subject: str, msg: Msg) -> None:
        self._take(seq, ts, subject, msg.data, msg.headers)
        if self.pending:
            await self._drain_pending()


class ConsumerObserver(Observer):
    """Ephemeral ack-none pull consumer with pipelined, credit-bounded pull requests."""

    mode = "consumer"
    generation = 0
    # One replica, in memory: cheap, and enough for a consumer recreated from the checkpoint
    # whenever it is lost. An interest or work-queue stream with replicas refuses a consumer
    # with another count (err_code 10134); there 0 takes the stream's own count.
    replicas = 1

    def __init__(self, *args: Any, tap_id: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tap_id = tap_id
        self.consumer = ""
        self.sub: Subscription | None = None
        self.requests: deque[list[float]] = deque()  # [remaining, deadline] per pull request
        self.last_activity = time.monotonic()
        self.wake = asyncio.Event()
        self.failed: str | None = None

    async def _create_consumer(self) -> None:
        error = await self._request_consumer()
        if error and error.get("err_code") == REPLICAS_MUST_MATCH and self.replicas:
            log.info("stream %s: its consumers must have its replicas: so has the tap's",
                     self.stream)  # fmt: skip
            self.replicas = 0
            error = await self._request_consumer()
        if error:
            raise ConsumerLost(f"consumer create failed: {error}")

    async def _request_consumer(self) -> dict[str, Any] | None:
        """Ask for a new consumer from `next_seq`; the server's error, if it refused."""
        ConsumerObserver.generation += 1
        self.consumer = f"{CONSUMER_PREFIX}_{self.tap_id}_{ConsumerObserver.generation}"
        s = self.settings
        config = {
            "name": self.consumer,
            "ack_policy": "none",
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": max(1, self.next_seq),
            "replay_policy": "instant",
            "inactive_threshold": int(s.inactive_threshold * NS),
            "mem_storage": True,
            "num_replicas": self.replicas,
            "max_waiting": 16,
            "description": "Flowscope tap: read-only observer (ack none, removed when idle)",
        }
        subject = f"$JS.API.CONSUMER.CREATE.{self.stream}.{self.consumer}"
        payload = json.dumps({"stream_name": self.stream, "config": config, "action": "create"})
        reply = await self.nc.request(subject, payload.encode(), timeout=5)
        error: dict[str, Any] | None = json.loads(reply.data).get("error")
        return error

    async def _cleanup(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
        if self.consumer and self.nc.is_connected:
            # Best effort, briefly: on a dead node it cannot answer, and the server removes an
            # idle tap consumer by itself after `inactive_threshold` anyway.
            with contextlib.suppress(Exception):
                await self.nc.request(
                    f"$JS.API.CONSUMER.DELETE.{self.stream}.{self.consumer}", b"", timeout=0.5
                )
        self.consumer = ""
        self.requests.clear()

    async def _open(self) -> str:
        """Subscribe to an inbox for the consumer's deliveries; returns the inbox."""
        inbox = self.nc.new_inbox()
        # Pull requests bound what can arrive, so the subscription's own limits never apply.
        self.sub = await self.nc.subscribe(
            inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0
        )
        return inbox

    async def _send_pull(self, subject: str, payload: bytes, inbox: str) -> None:
        await self.nc.publish(subject, payload, reply=inbox)

    async def _relieve(self) -> None:
        """Between pull requests: what a subclass must do (the wire reader drains `pending`)."""

    async def _run(self) -> None:
        self.failed = None
        await self._create_consumer()
        inbox = await self._open()
        self.ready.set()
        self.last_activity = time.monotonic()
        s = self.settings
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        while not self.halt.is_set():
            if self.failed:
                raise ConsumerLost(self.failed)
            await self._relieve()
            now = time.monotonic()
            while self.requests and self.requests[0][1] < now:
                self.requests.popleft()  # expired without a status reply (e.g. lost on reconnect)
            if self.requests and now - self.last_activity > max(3 * s.heartbeat, 3.0):
                raise ConsumerLost("no heartbeat from the server: consumer lost")
            outstanding = sum(int(r[0]) for r in self.requests)
            credit = self.writer.free() - outstanding - self.pending_events()
            # ask for a worthwhile amount: many small requests cost the server and us more
            worthwhile = min(s.batch, 500, max(1, self.writer.buffer_size // 4))
            if len(self.requests) < s.inflight and credit >= worthwhile:
                batch = min(s.batch, credit)
                request = {
                    "batch": batch,
                    "expires": int(s.expires * NS),
                    "idle_heartbeat": int(s.heartbeat * NS),
                    "max_bytes": max(s.max_request_bytes, 2 * self.nc.max_payload),
                }
                if not self.requests:
                    self.last_activity = now
                self.requests.append([batch, now + s.expires + 1.0])
                await self._send_pull(next_subject, json.dumps(request).encode(), inbox)
                continue
            self.wake.clear()
            await wait_event(self.wake, 0.5)

    def _request_done(self, count: int) -> None:
        """`count` messages of the oldest request arrived (the server serves them in order)."""
        while count > 0 and self.requests:
            take = min(count, int(self.requests[0][0]))
            self.requests[0][0] -= take
            count -= take
            if self.requests[0][0] <= 0:
                self.requests.popleft()
        self.wake.set()

    def _status(self, status: str, description: str) -> None:
        """A status message on the inbox: heartbeat, or the end of a pull request."""
        if status == "100":  # idle heartbeat: the consumer is alive
            return
        if status in ("408", "409"):
            description = description.lower()
            if status == "409" and ("deleted" in description or "leadership" in description):
                self.failed = f"consumer gone: {description}"
            if self.requests:
                self.requests.popleft()  # that request is over
            self.wake.set()
            return
        if status == "404" and self.requests:
            self.requests.popleft()
            self.wake.set()

    async def _on_msg(self, msg: Msg) -> None:
        self.last_activity = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            assert msg.headers is not None
            self._status(status, msg.headers.get("Description") or "")
            return
        meta = parse_ack_subject(msg.reply) if msg.reply else None
        if meta is None:
            return
        self._request_done(1)
        await self._record(meta.stream_seq, ns_to_pg_micros(meta.timestamp_ns), msg.subject, msg)


class WireConsumerObserver(ConsumerObserver):
    """The same consumer, its deliveries read by the lean connection (eventbus.wire): each chunk
    from the socket is parsed and recorded in one synchronous pass, with no per-message `Msg`,
    task or coroutine. When the buffer is full the socket stops being read until the writer took
    what is pending. Falls back to nats-py where the lean connection cannot go (TLS, nkeys)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.conn: wire.WireConnection | None = None
        self.fallback = False
        self.chunk: Chunk | None = None  # being filled from the current socket read
        self.arrived = 0  # deliveries of the current socket read, not yet `_request_done`
        self.scanned = 0  # events read by the scanner (the rest took `_take_frames`)
        name = self.settings.service_header
        self.service_header = name.encode() if name.isascii() else None  # None: headed -> Python

    async def _open(self) -> str:
        if self.fallback:
            return await super()._open()
        server = self.nc.connected_url  # the server nats-py is on now, credentials included
        if server is None:
            raise ConsumerLost("not connected to NATS")
        try:
            self.conn = await wire.connect(server.geturl(), self._on_frames, fast=self._fast)
        except wire.WireError as exc:  # TLS, nkeys, or credentials only nats-py holds
            log.info("stream %s: reading through nats-py (%s)", self.stream, exc)
            self.fallback = True
            return await super()._open()
        inbox = f"_INBOX.flowscope.{uuid.uuid4().hex}"
        self.conn.subscribe(inbox)
        await self.conn.flush()
        return inbox

    async def _send_pull(self, subject: str, payload: bytes, inbox: str) -> None:
        if self.conn is None:
            return await super()._send_pull(subject, payload, inbox)
        self.conn.publish(subject, payload, inbox)  # `_relieve()` just checked the connection

    async def _relieve(self) -> None:
        if self.conn is None:
            return
        if self.conn.closed:
            raise wire.WireError(f"reader connection lost: {self.conn.lost.result()!r}")
        if self.pending:
            await self._drain_pending()
            self.last_activity = time.monotonic()  # we were not reading: no heartbeat is due
            self.conn.resume()

    async def _cleanup(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.chunk, self.arrived = None, 0
        await super()._cleanup()

    def _fast(self, data: bytes, pos: int, frames: list[wire.Frame]) -> int:
        """The wire's fast reader: the run of deliveries eventbus.scan can read (the next
        sequences, plain subjects, no headers or common ones) straight into the open chunk,
        after the frames parsed before them."""
        if frames:
            self._take_frames(frames)
            frames.clear()
        chunk = self.chunk or Chunk(self.stream_id, self.next_seq)
        after, count, next_seq, day, newest = scan(
            data, pos, self.stream_id, self.next_seq, self.settings.preview_bytes, chunk.day,
            chunk.rows, chunk.subjects, chunk.day_numbers, self.service_header,
        )  # fmt: skip
        if count:
            chunk.count += count
            chunk.last_seq = next_seq - 1
            chunk.day = day
            chunk.recent += newest
            self.chunk = chunk
            self.next_seq = next_seq
            self.arrived += count
            self.scanned += count
        return after

    def _on_frames(self, frames: list[wire.Frame]) -> None:
        """The end of one socket read: what is left of it, then the open chunk to the writer."""
        self.last_activity = time.monotonic()
        try:
            if frames:
                self._take_frames(frames)
        finally:  # even when a frame failed: what was read before it is past `next_seq`
            if self.chunk is not None:
                self._hand_over(self.chunk)
                self.chunk = None
            if self.arrived:
                self._request_done(self.arrived)
                self.arrived = 0
            if self.pending and self.conn is not None:
                self.conn.pause()  # TCP pushes back; `_relieve()` resumes once the writer took them
                self.wake.set()

    def _take_frames(self, frames: list[wire.Frame]) -> None:
        """`_take`'s work for frames the fast reader left (headers, gaps, statuses, odd subjects
        and replies), into the open chunk (or more, split where a gap falls)."""
        next_seq = self.next_seq
        preview = self.settings.preview_bytes
        chunk = self.chunk
        service_header = self.settings.service_header
        try:
            for subject, reply, raw_headers, payload in frames:
                headers: dict[str, str] | None = None
                if raw_headers is not None:
                    status, description, headers = wire.parse_headers(raw_headers)
                    if status:
                        if self.arrived:
                            self._request_done(self.arrived)
                            self.arrived = 0
                        self._status(status, description)
                        continue
                position = ack_position(reply)
                if position is None:
                    continue
                self.arrived += 1
                seq, ts_ns = position
                if seq != next_seq:
                    if seq < next_seq:
                        continue  # already recorded (a re-delivery after we recreated the consumer)
                    if chunk is not None:
                        self._hand_over(chunk)
                        chunk = None
                    self._offer(Gap(self.stream_id, next_seq, seq - 1, GAP_REASON))
                    next_seq = seq
                if chunk is None:
                    chunk = Chunk(self.stream_id, seq)
                ts = ns_to_pg_micros(ts_ns)
                if not plain_subject(subject):
                    text = subject.decode("utf-8", "replace")
                    chunk.add_record(self._build(seq, ts, text, payload, headers or None))
                elif headers:
                    chunk.add_headed(seq, ts, subject, payload, preview, headers, service_header)
                else:
                    chunk.add_plain(seq, ts, subject, payload, preview)
                next_seq = seq + 1  # only once its row is in the chunk
        finally:  # what is in the chunk and `next_seq` agree, even if a frame failed
            self.chunk = chunk if chunk is not None and chunk.count else None
            self.next_seq = next_seq


def republish_pattern(dest: str) -> str:
    """The subscription subject for a RePublish destination (mapping functions -> `*`)."""
    tokens = []
    for token in dest.split("."):
        tokens.append(
            "*" if "{{" in token or (token.startswith("$") and token[1:].isdigit()) else token
        )
    return ".".join(tokens)


class SubjectObserver(Observer):
    """Core subscription on the stream's subjects (work-queue streams, by default)."""

    mode = "subject"

    def __init__(self, *args: Any, subjects: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.subjects = subjects
        self.subs: list[Subscription] = []
        self.dropped = 0  # messages nats-py dropped: the tap fell behind the publishers
        self.dropped_reported = 0  # of which the heartbeat has stored
        self.dropped_logged_at = 0.0

    def owns(self, sub: Subscription | None) -> bool:
        return sub is not None and any(sub is mine for mine in self.subs)

    def count_drop(self) -> None:
        """One message dropped by nats-py (slow consumer): counted, and logged at once and
        then at most every 5 seconds with the running count."""
        self.dropped += 1
        now = time.monotonic()
        if self.dropped == 1 or now - self.dropped_logged_at >= 5:
            self.dropped_logged_at = now
            log.error(
                "stream %s: %d messages dropped by the subject subscription (the tap cannot "
                "keep up with the publishers; they are not recorded)", self.stream, self.dropped,
            )  # fmt: skip

    async def _run(self) -> None:
        s = self.settings
        for subject in self.subjects:
            self.subs.append(
                await self.nc.subscribe(
                    subject,
                    cb=self._on_msg,
                    pending_msgs_limit=s.subject_pending_msgs,
                    pending_bytes_limit=s.subject_pending_bytes,
                )
            )
        await self.nc.flush()  # the server has the subscriptions: from now on nothing is missed
        self.ready.set()
        await self.halt.wait()  # until stopped

    async def _cleanup(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs = []

    async def _on_msg(self, msg: Msg) -> None:
        if msg.subject.startswith("$JS.") or msg.subject.startswith("_INBOX."):
            return
        await self._record(None, pg_micros(datetime.now(UTC)), msg.subject, msg)


class RepublishObserver(Observer):
    """Reads the copies the server republishes for the stream (ADR-28), sequence included."""

    mode = "republish"

    def __init__(self, *args: Any, dest: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dest = dest
        self.sub: Subscription | None = None

    async def _run(self) -> None:
        self.sub = await self.nc.subscribe(republish_pattern(self.dest), cb=self._on_msg)
        await self.nc.flush()
        self.ready.set()
        await self.halt.wait()  # until stopped

    async def _cleanup(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None

    async def _on_msg(self, msg: Msg) -> None:
        seq_text = header(msg.headers, REPUBLISH_SEQUENCE)
        if not seq_text or not seq_text.isdigit():
            return
        ts = parse_nats_time(header(msg.headers, REPUBLISH_TIMESTAMP)) or datetime.now(UTC)
        subject = header(msg.headers, "Nats-Subject") or msg.subject
        await self._record(int(seq_text), pg_micros(ts), subject, msg)


ObserverFactory = Callable[..., Observer]


def choose_observer(
    config: dict[str, Any],
) -> tuple[str, str]:
    """(mode, plain-language note) for a stream config, as the dashboard shows it."""
    retention = config.get("retention", "limits")
    republish = config.get("republish") or {}
    if republish.get("dest"):
        note = (
            "RePublish is on for this stream: the tap reads the republished copies, which carry "
            "the stream sequence and time, so gaps are detected. "
        )
        if republish.get("headers_only"):
            note += "The stream republishes headers only: payload previews are empty. "
        note += "Messages republished while the tap was down are recorded as gaps."
        return "republish", note
    if retention == "workqueue":
        return "subject", (
            "Work-queue streams admit no second consumer, so the tap subscribes to the stream's "
            "subjects instead. It sees every message as it is published, but without the stream "
            "sequence or stored time (receipt time is shown), it misses what was published while "
            "it was down, and it cannot tell a message the stream rejected (e.g. a duplicate "
            "Nats-Msg-Id) from one it stored. An admin can turn on RePublish for full fidelity "
            "(`python manage.py republish STREAM`)."
        )
    if retention == "interest":
        return "consumer", (
            "An ephemeral ack-none consumer reads every stored message from the checkpoint on. "
            "Ack none means delivery to the tap counts as acknowledged, so messages still leave "
            "the stream once the applications' consumers acked them. If the tap stops, its "
            "consumer disappears after 15 s; messages stored meanwhile may be gone when it "
            "returns and are recorded as gaps."
        )
    return "consumer", (
        "An ephemeral ack-none consumer reads every stored message from the checkpoint on, in "
        "sequence; messages that expire or are removed before the tap reads them are recorded "
        "as gaps."
    )


def is_tap_consumer(name: str) -> bool:
    return name.startswith(CONSUMER_PREFIX)
