"""The browser's websocket (`/ws/live/?topics=...`): the pushes of the topics its page shows.

Only a logged-in user gets one (anonymous: refused before the handshake completes, so the
browser sees a 403), and only from an allowed origin (asgi.py). On connect the socket joins its
topics' groups and gets each topic's current HTML at once, so a page that reconnects after a
web restart re-syncs by itself. Pushes are coalesced per socket: the latest HTML per topic wins
and at most one message goes out every `MIN_INTERVAL` seconds, however fast events arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from dashboard.live.hub import group_name, hub
from dashboard.live.topics import parse_topics

log = logging.getLogger("flowscope.live")
MIN_INTERVAL = 0.25  # seconds between two messages to one socket: at most 4 a second

clients = 0  # open sockets in this process (for /metrics)


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        query = self.scope.get("query_string", b"").decode("latin-1")
        self.topics = parse_topics(query)
        if not self.topics:
            await self.close()
            return
        global clients
        self.latest: dict[str, str] = {}
        self.pending = asyncio.Event()
        self.sent = 0
        await self.accept()
        clients += 1
        self.live = hub()
        for topic in self.topics:
            await self.channel_layer.group_add(group_name(topic), self.channel_name)
            self.live.watch(topic)
        self.flusher = asyncio.create_task(self._flush(), name="live socket")
        for topic in self.topics:  # (re)sync: the state now, without waiting for a change
            html = await self.live.render(topic, fresh_for=self.live.tick)
            if html is not None:
                self.latest.setdefault(topic, html)
                self.pending.set()

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "flusher"):
            return  # refused before it was accepted
        global clients
        clients -= 1
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flusher
        for topic in self.topics:
            await self.channel_layer.group_discard(group_name(topic), self.channel_name)
            self.live.unwatch(topic)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # pages only listen

    async def live_push(self, event: dict[str, Any]) -> None:
        """From the hub, through the topic's group: keep the latest, the flusher sends it."""
        self.latest[event["topic"]] = event["html"]
        self.pending.set()

    async def _flush(self) -> None:
        last = 0.0
        while True:
            await self.pending.wait()
            wait = last + MIN_INTERVAL - time.monotonic()
            if wait > 0:  # at most one message per MIN_INTERVAL, counted from the last one
                await asyncio.sleep(wait)
            self.pending.clear()
            batch, self.latest = self.latest, {}
            if batch:
                last = time.monotonic()
                await self.send(text_data="".join(batch[t] for t in sorted(batch)))
                self.sent += 1
