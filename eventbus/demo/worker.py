"""Runs one durable pull consumer: bounded concurrency, processed-message record, retries.

The loop asks the server only for as many messages as it has free slots (backpressure: a slow
handler slows the pulls, nothing piles up in memory). Each message:
1. if the processed record (KV key `<consumer>.<Nats-Msg-Id>`) exists, it was done before and
   this is a redelivery: ack, do nothing;
2. the handler returns the events to publish (each with a Nats-Msg-Id derived from its cause,
   so a retry after a crash publishes nothing twice), or raises Retry (nak with delay) or
   Poison (terminated with a reason); any other error is retried like Retry until max_deliver;
3. publish the effects, write the processed record, ack (and wait for the server's answer).
On stop the loop stops pulling, lets the messages it holds finish, then returns. "Holds"
includes messages the server sends after a fetch returned: nats-py's fetch leaves its pull
request open on the server until it expires (FETCH_TIMEOUT), and what that request delivers waits
in the subscription's queue for the next fetch. Those would sit unacknowledged until ack_wait if
the worker just left, so it keeps taking them until the last request has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry.trace import Span

from eventbus.aio import wait_event
from eventbus.demo.topology import ConsumerSpec, Names
from eventbus.demo.tracing import Tracing

log = logging.getLogger("flowscope.demo")
KEY_UNSAFE = re.compile(r"[^-/_=.a-zA-Z0-9]")
FETCH_TIMEOUT = 1.0  # seconds a pull request lives on the server


class Retry(Exception):
    """A transient failure: try again after `delay` seconds."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.delay = delay


class Poison(Exception):
    """The message can never be handled: terminate it (it becomes a dead letter)."""


@dataclass
class Incoming:
    subject: str  # without the namespace
    data: bytes
    headers: dict[str, str]
    num_delivered: int
    stream_seq: int

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Poison(f"malformed JSON: {exc}") from exc
        if not isinstance(value, dict) or not isinstance(value.get("order_id"), str):
            raise Poison("not an order event: no order_id")
        return value


@dataclass
class Effect:
    subject: str  # without the namespace
    data: dict[str, Any] | bytes
    msg_id: str


Handler = Callable[[Incoming], Awaitable[list[Effect]]]


@dataclass
class Stats:
    processed: int = 0
    duplicates: int = 0
    retried: int = 0
    terminated: int = 0
    errors: int = 0  # the handler raised something unexpected (retried, counted in `retried`)
    failed: int = 0  # an ack or a publish failed (NATS): left to redelivery
    max_concurrent: int = 0
    acked: list[str] = field(default_factory=list)  # Nats-Msg-Ids whose work is done and acked


class Publisher:
    """Publishes effects with the service header, a Nats-Msg-Id and the trace context."""

    def __init__(
        self, js: JetStreamContext, names: Names, tracing: Tracing, service: str, header: str
    ):
        self.js, self.names, self.tracing = js, names, tracing
        self.service, self.header = service, header

    async def publish(self, effect: Effect, parent: Span | None) -> None:
        subject = self.names.subject(effect.subject)
        data = effect.data if isinstance(effect.data, bytes) else json.dumps(effect.data).encode()
        headers = {"Nats-Msg-Id": effect.msg_id, self.header: self.service}
        with self.tracing.producing(subject, headers, parent, len(data)):
            await self.js.publish(subject, data, headers=headers)


class Worker:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        names: Names,
        spec: ConsumerSpec,
        handler: Handler,
        kv: KeyValue,
        publisher: Publisher,
        concurrency: int = 8,
        retry_delay: float = 2.0,
    ):
        self.nc, self.js, self.names, self.spec = nc, js, names, spec
        self.handler, self.kv, self.publisher = handler, kv, publisher
        self.concurrency = concurrency
        self.retry_delay = retry_delay
        self.stats = Stats()
        self.inflight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        stream = self.names.stream(self.spec.stream)
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream)
        last_pull = time.monotonic()
        while not stop.is_set():
            free = self.concurrency - len(self.inflight)
            if free <= 0:  # every slot busy: wait for one, pull nothing meanwhile
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            last_pull = time.monotonic()
            try:
                msgs = await self._fetch(sub, free)
            except TimeoutError:  # nats-py raises its own TimeoutError and, at times, the builtin
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                break
            except Exception as exc:  # whatever it was, a consumer that stops pulling is worse
                log.warning("%s: fetch failed (%r), retrying", self.spec.durable, exc)
                await wait_event(stop, 1.0)
                continue
            self._start(msgs)
        await self._late_deliveries(sub, last_pull + FETCH_TIMEOUT)
        if self.inflight:  # graceful: what was delivered to us is finished and acked
            await asyncio.wait(self.inflight)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _fetch(self, sub: JetStreamContext.PullSubscription, n: int) -> list[Msg]:
        return await sub.fetch(n, timeout=FETCH_TIMEOUT)

    def _start(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            task = asyncio.create_task(self._handle(msg))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        self.stats.max_concurrent = max(self.stats.max_concurrent, len(self.inflight))

    async def _late_deliveries(self, sub: JetStreamContext.PullSubscription, until: float) -> None:
        """Handle what the last pull request still delivers, until it has expired."""
        queue = sub._sub  # nats-py keeps these in the subscription; no public way to reach them
        while (left := until - time.monotonic()) > 0 or sub.pending_msgs:
            try:
                msg = await queue.next_msg(timeout=max(left, 0.001))
            except nats.errors.TimeoutError:
                if left <= 0:
                    return
                continue
            except nats.errors.Error:  # the connection is gone: redelivery takes over
                return
            if msg.headers and msg.headers.get("Status"):  # 404/408: the request ended
                continue
            self._start([msg])

    async def _ack(self, msg: Msg) -> None:
        await msg.ack_sync()  # wait for the server: "acked" means the server knows

    def _key(self, msg: Msg) -> str:
        headers = msg.headers or {}
        msg_id = headers.get("Nats-Msg-Id") or f"seq-{msg.metadata.sequence.stream}"
        return KEY_UNSAFE.sub("_", f"{self.spec.durable}.{msg_id}")

    async def _seen(self, key: str) -> bool:
        try:
            await self.kv.get(key)
        except KeyNotFoundError:
            return False
        return True

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        incoming = Incoming(
            subject=self.names.local(msg.subject),
            data=msg.data,
            headers=dict(msg.headers or {}),
            num_delivered=meta.num_delivered,
            stream_seq=meta.sequence.stream,
        )
        try:
            with self.publisher.tracing.consuming(msg.subject, msg.headers) as span:
                await self._process(msg, incoming, span)
        except nats.errors.Error as exc:  # the ack or a publish failed: redelivery handles it
            self.stats.failed += 1
            log.warning("%s: %s (the message will be redelivered)", self.spec.durable, exc)

    async def _process(self, msg: Msg, incoming: Incoming, span: Span) -> None:
        key = self._key(msg)
        if await self._seen(key):
            self.stats.duplicates += 1
            await self._ack(msg)
            return
        try:
            effects = await self.handler(incoming)
        except Poison as exc:
            self.stats.terminated += 1
            log.warning("%s: poison message %s terminated: %s", self.spec.durable, key, exc)
            # `+TERM <reason>`: the server puts the reason into its terminated advisory
            await self.nc.publish(msg.reply, b"+TERM " + str(exc).encode()[:512])
            return
        except Retry as exc:
            self.stats.retried += 1
            log.info("%s: %s, retry %d", self.spec.durable, exc, incoming.num_delivered)
            await msg.nak(delay=exc.delay if exc.delay is not None else self.retry_delay)
            return
        except Exception as exc:
            self.stats.retried += 1
            self.stats.errors += 1
            log.exception("%s: handler failed on %s: %s", self.spec.durable, key, exc)
            await msg.nak(delay=self.retry_delay)
            return
        for effect in effects:
            await self.publisher.publish(effect, span)
        await self.kv.put(key, b"done")
        await self._ack(msg)
        self.stats.processed += 1
        self.stats.acked.append(incoming.headers.get("Nats-Msg-Id", key))
