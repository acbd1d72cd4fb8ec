"""The browser's websocket (`/ws/live/?topics=...`): the pushes of the topics its page shows.

Only a logged-in user gets one (anonymous: refused before the handshake completes, so the
browser sees a 403), and only from an allowed origin (asgi.py). On connect the socket joins its
topics' groups and gets each topic's current HTML at once, so a page that reconnects after a
web restart re-syncs by itself. Pushes are coalesced per socket: the latest HTML per topic wins
and at most one message goes out every `FLOWSCOPE_LIVE_INTERVAL` seconds (the hub's tick: a
topic is rendered at most that often), however fast events arrive.

A message carries only the roots (a page's live partials, by id) whose HTML differs from what
this socket last sent of them: a counter that moved swaps its section, not the whole page.

Flow control: a page's script (static/js/live.js) says `flow ack` once open, then `ack` after
it has swapped each message in. Such a socket never has more than one message unacknowledged:
what changes meanwhile waits here, coalesced (latest state wins), and a page slower than the
pushes gets fewer, fresher messages instead of a growing queue of stale ones. (A socket that
never says `flow ack`, e.g. a script's, is sent every interval as before.) A page whose ack
does not come within `ACK_TIMEOUT` is sent the latest state all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from opentelemetry import trace

from dashboard import roles
from dashboard.live.hub import Parts, group_name, hub, tracer
from dashboard.live.topics import parse_topics

log = logging.getLogger("flowscope.live")
# A socket's messages follow the hub's renders (one per tick); this socket-side bound, a little
# under the tick so that its own timing never delays a render that is due, holds for pages that
# watch several topics.
SLACK = 0.9
ACK_TIMEOUT = 5.0  # seconds a page may take to acknowledge a message

clients = 0  # open sockets in this process (for /metrics)


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        with tracer.start_as_current_span("websocket connect", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("url.path", self.scope.get("path", ""))
            await self._connect(span)

    async def _connect(self, span: trace.Span) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(roles.can)(user, "browse"):
            span.set_attribute("flowscope.live.refused", "not allowed")
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        query = self.scope.get("query_string", b"").decode("latin-1")
        self.topics = parse_topics(query)
        span.set_attribute("flowscope.live.topics", sorted(self.topics))
        if not self.topics:
            span.set_attribute("flowscope.live.refused", "no topics")
            await self.close()
            return
        global clients
        self.latest: dict[str, Parts] = {}  # topic -> its newest rendering, not sent yet
        self.shown: dict[tuple[str, str], str] = {}  # (topic, root id) -> HTML sent
        self.pending = asyncio.Event()
        self.acked = asyncio.Event()
        self.acking = False  # the page acknowledges each message
        self.unacked = 0
        self.sent = 0
        await self.accept()
        clients += 1
        self.live = hub()
        for topic in self.topics:
            await self.channel_layer.group_add(group_name(topic), self.channel_name)
            self.live.watch(topic)
        # (outside the connect's span: the socket's sends are not part of it)
        self.flusher = asyncio.create_task(
            self._flush(), name="live socket", context=contextvars.Context()
        )
        self.flusher.add_done_callback(self._flusher_done)
        for topic in self.topics:  # (re)sync: the state now, without waiting for a change
            parts = await self.live.render(topic, fresh_for=self.live.tick)
            if parts is not None:
                self.latest.setdefault(topic, parts)
                self.pending.set()

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        """A sender that died must not leave a page that looks live and is not: it is logged
        and the socket closed (code 1011), so the page reconnects by itself and re-syncs."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("live socket: its sender failed, closing it (the page reconnects)",
                  exc_info=task.exception())  # fmt: skip
        self.closing = asyncio.get_running_loop().create_task(self.close(code=1011))  # (kept)

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "flusher"):
            return  # refused before it was accepted
        global clients
        clients -= 1
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # (logged if it failed)
            await self.flusher
        for topic in self.topics:
            await self.channel_layer.group_discard(group_name(topic), self.channel_name)
            self.live.unwatch(topic)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Pages only listen, but acknowledge what they swapped in (flow control)."""
        if text_data == "ack":
            self.unacked = max(0, self.unacked - 1)
            self.acked.set()
        elif text_data == "flow ack":
            self.acking = True

    async def live_push(self, event: dict[str, Any]) -> None:
        """From the hub, through the topic's group: keep the latest, the flusher sends it."""
        self.latest[event["topic"]] = event["parts"]
        self.pending.set()

    def _changed(self, batch: dict[str, Parts]) -> str:
        """The roots of `batch` that differ from what this socket sent of them, as one message
        (roots without an id: always), and remember them as sent."""
        out = []
        for topic in sorted(batch):
            for root, html in batch[topic]:
                if root is not None:
                    before = self.shown.get((topic, root))
                    if before is html or before == html:
                        continue
                    self.shown[(topic, root)] = html
                out.append(html)
        return "".join(out)

    async def _flush(self) -> None:
        last = 0.0
        while True:
            await self.pending.wait()
            wait = last + SLACK * self.live.tick - time.monotonic()
            if wait > 0:  # at most one message per tick or so, counted from the last one
                await asyncio.sleep(wait)
            while self.acking and self.unacked:  # one message in flight at most
                self.acked.clear()
                try:
                    async with asyncio.timeout(ACK_TIMEOUT):
                        await self.acked.wait()
                except TimeoutError:
                    self.unacked = 0  # a page that lost count: go on, the latest state
            self.pending.clear()
            batch, self.latest = self.latest, {}
            message = self._changed(batch)
            if message:
                last = time.monotonic()
                self.unacked += 1
                await self.send(text_data=message)
                self.sent += 1
