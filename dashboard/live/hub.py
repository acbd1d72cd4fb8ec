"""The live hub: one per web process. It holds ONE NATS subscription to the tap's digests
(`<prefix>.digest.>`) and turns them into pushes for the browsers of this process.

A digest marks topics dirty (`overview`, `topology`, `stream:<name>`, `consumer:<stream>:<name>`).
Every `tick` seconds each dirty topic that a socket of this process watches is rendered ONCE
(a few indexed queries, whatever the number of sockets or events), split into its out-of-band
roots (`split_roots`) and sent to that topic's Channels group; each socket then coalesces what
it receives (latest state wins) to at most a few updates a second, and sends a browser only the
roots that differ from what that browser already shows (dashboard/live/consumer.py). Watched
topics are also refreshed every `refresh` seconds, so ages and a tap that stopped committing
(no digests at all) show on screen.
No database polling per client and no Redis: two web processes each hold their own
subscription and fan out to their own sockets through the in-memory channel layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from nats.aio.client import Client
from opentelemetry import trace

from dashboard.live.topics import base_topic, make_topic, renderer
from eventbus.natsconn import servers, shown

log = logging.getLogger("flowscope.live")
# Each render is a span (`live render <kind>`), its queries its children: a trace per render,
# not a root span per query; a socket's connect is one too (`websocket connect`, consumer.py).
tracer = trace.get_tracer("flowscope.live")

# A rendered topic is the concatenation of its partials' roots, each start tag marked
# `hx-swap-oob` (no root nests another). Attribute values are escaped (a `>` in one is `&gt;`),
# so a start tag ends at the first `>`.
_ROOT = re.compile(r'<[A-Za-z][\w-]*\s[^>]*?\bhx-swap-oob="[^"]*"[^>]*>')
_ID = re.compile(r'\sid="([^"]*)"')

Parts = list[tuple[str | None, str]]  # (root id, its HTML): a topic's rendering, split


def split_roots(html: str) -> Parts:
    """A topic's HTML as its out-of-band roots, each with its id (pure: unit-tested). Each part
    runs from one root's start tag to the next one's; what comes before the first root goes
    with it. Without roots, or when two roots share an id or one has none, the HTML is one
    part with no id (sent whole, every time)."""
    starts = [m.start() for m in _ROOT.finditer(html)]
    if not starts:
        return [(None, html)]
    starts[0] = 0
    parts: Parts = []
    for a, b in zip(starts, [*starts[1:], len(html)], strict=True):
        chunk = html[a:b]
        tag = _ROOT.search(chunk)
        found = _ID.search(tag.group()) if tag else None
        parts.append((found.group(1) if found else None, chunk))
    ids = [i for i, _ in parts]
    if None in ids or len(set(ids)) != len(ids):
        return [(None, html)]
    return parts


def group_name(topic: str) -> str:
    """Channels group names allow only ASCII letters, digits, `-_.` and under 100 characters;
    stream and consumer names allow more, so a topic's group is named by its hash."""
    return "live." + hashlib.sha256(topic.encode()).hexdigest()[:32]


def dirty_topics(subject: str, body: dict[str, Any]) -> set[str]:
    """The topics a digest changes (pure: unit-tested). Every dead-letter list (`deadletters:`
    topics, one per filter) is marked by the hub itself, as every tail is on events."""
    kind = subject.rsplit(".", 1)[-1]
    if kind == "replays":  # a replay job's progress (eventbus/replay.py)
        jobs = body.get("jobs") or {}
        found = (
            {f"replay:{j}" for j in jobs if str(j).isdigit()} if isinstance(jobs, dict) else set()
        )
        if _replayed(body):  # their dead letters are no longer waiting
            streams = body.get("streams")
            found |= {"overview", "topology"} | {
                make_topic("stream", s) for s in (streams if isinstance(streams, list) else [])
                if isinstance(s, str)
            }  # fmt: skip
        return found
    topics = {"overview", "topology"}
    if kind == "deadletters":
        return topics | _dead_letter_topics(body)
    streams = body.get("streams") or {}
    if not isinstance(streams, dict):
        return topics
    for name, entry in streams.items():
        topics.add(make_topic("stream", name))
        if kind == "lag" and isinstance(entry, dict):
            for consumer in entry.get("consumers") or {}:
                topics.add(make_topic("consumer", name, consumer))
            for consumer in entry.get("removed") or []:
                topics.add(make_topic("consumer", name, consumer))
    return topics


def _dead_letter_topics(body: dict[str, Any]) -> set[str]:
    """The stream and consumer pages a dead-letter digest names (eventbus/deadletters.py:
    `counts` written, `changed` status)."""
    topics: set[str] = set()
    for key in ("counts", "changed"):
        entries = body.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("stream"), str):
                continue
            topics.add(make_topic("stream", entry["stream"]))
            consumer = entry.get("consumer")
            if isinstance(consumer, str) and consumer:
                topics.add(make_topic("consumer", entry["stream"], consumer))
    return topics


def _replayed(body: dict[str, Any]) -> bool:
    """A replay digest that says dead letters changed status (eventbus/replay.py)."""
    return isinstance(body.get("dead_letters"), list) and bool(body["dead_letters"])


def fan_out(subject: str, body: dict[str, Any]) -> str | None:
    """The prefix of the topics, one per filter, that a digest may change whatever their filter
    (their renderers look): every tail on events, every dead-letter list on dead letters
    written, or changed by a replay or a discard (pure: unit-tested)."""
    kind = subject.rsplit(".", 1)[-1]
    if body.get("kind") == "events":
        return "tail:"
    if kind == "deadletters" or (kind == "replays" and _replayed(body)):
        return "deadletters:"
    return None


class LiveHub:
    def __init__(
        self,
        nats_url: str,
        prefix: str = "flowscope",
        tick: float = 0.25,
        refresh: float = 5.0,
        render: Callable[[str], str | None] = renderer,
    ):
        self.nats_url = nats_url
        self.prefix = prefix
        self.tick = tick
        self.refresh = refresh
        self.render_sync = render
        self.watched: Counter[str] = Counter()  # topic -> sockets of this process
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.nc: Client | None = None
        self.connected = False
        self.last_push = 0.0
        self.cache: dict[str, tuple[float, Parts | None]] = {}  # topic -> (when, parts)
        # figures for /metrics and the live benchmark
        self.digests = 0
        self.renders = 0
        self.render_seconds: dict[str, float] = {}  # topic kind -> seconds rendering
        self.render_counts: Counter[str] = Counter()  # topic kind -> renders
        self.pushes = 0

    # -- sockets --------------------------------------------------------------------------
    def watch(self, topic: str) -> None:
        self.watched[topic] += 1
        self.ensure_started()

    def unwatch(self, topic: str) -> None:
        self.watched[topic] -= 1
        if self.watched[topic] <= 0:
            del self.watched[topic]
            self.cache.pop(topic, None)

    async def render(self, topic: str, fresh_for: float = 0.0) -> Parts | None:
        """The topic's live HTML now, split into its roots. `fresh_for`: a rendering at most
        that old will do (a socket that (re)connects: after a web restart they all do at once,
        and share one). A root whose HTML is the same as in the last rendering is that very
        string, so a socket tells it unchanged by identity."""
        cached = self.cache.get(topic)
        if fresh_for and cached is not None and time.monotonic() - cached[0] <= fresh_for:
            return cached[1]
        self.renders += 1
        started = time.perf_counter()
        kind = topic.partition(":")[0]
        with tracer.start_as_current_span(
            f"live render {kind}", attributes={"flowscope.live.topic": topic}
        ):  # (sync_to_async runs the render in the span's context: its queries are children)
            html = await sync_to_async(self.render_sync, thread_sensitive=False)(topic)
        spent = time.perf_counter() - started
        self.render_seconds[kind] = self.render_seconds.get(kind, 0.0) + spent
        self.render_counts[kind] += 1
        parts = None if html is None else split_roots(html)
        if parts is not None and cached is not None and cached[1] is not None:
            before = dict(cached[1])
            parts = [(i, h if before.get(i) != h else before[i]) for i, h in parts]
        self.cache[topic] = (time.monotonic(), parts)
        return parts

    # -- the process' one subscription ----------------------------------------------------
    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            # a context of its own: started by a socket's connect, it would otherwise make every
            # render for the life of the process a child of that one connect's span
            self.task = asyncio.get_running_loop().create_task(
                self._supervise(), name="live hub", context=contextvars.Context()
            )

    async def _supervise(self) -> None:
        """Runs for the life of the process; a failure is logged with its traceback and the
        hub starts again (sockets keep their groups; they only miss pushes meanwhile)."""
        delay = 0.5
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live hub failed: restarting in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await self._close()

    async def _close(self) -> None:
        nc, self.nc = self.nc, None
        self.connected = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _run(self) -> None:
        async def disconnected() -> None:
            self.connected = False
            log.warning("live hub: NATS connection lost, reconnecting (pages stay as they are)")

        async def reconnected() -> None:
            self.connected = True
            self._mark(set(self.watched))  # re-sync: what changed while away

        self.nc = await nats.connect(
            servers(self.nats_url),
            name="flowscope-web",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
        self.connected = True
        await self.nc.subscribe(f"{self.prefix}.digest.>", cb=self._on_digest)
        log.info(
            "live hub: subscribed to %s.digest.> on %s", self.prefix, shown(self.nc.connected_url)
        )
        next_refresh = time.monotonic() + self.refresh
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                self._mark(set(self.watched))
                next_refresh = now + self.refresh
            if self.dirty:
                wait = self.last_push + self.tick - time.monotonic()
                if wait > 0:  # at most one render of a topic per tick, counted from the last
                    await asyncio.sleep(wait)
                self.last_push = time.monotonic()
                await self._push()  # a change after a quiet spell goes at once
                continue
            self.wake.clear()  # (no await since `dirty` was checked: no wake-up is lost)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self.wake.wait()

    async def _on_digest(self, msg: Any) -> None:
        self.digests += 1
        try:
            body = json.loads(msg.data)
        except ValueError:
            log.warning("live hub: a digest that is not JSON on %s", msg.subject)
            return
        if isinstance(body, dict):
            topics = dirty_topics(msg.subject, body)
            prefix = fan_out(msg.subject, body)
            if prefix:  # every tail may have new matches, every dead-letter list new rows
                topics |= {t for t in self.watched if t.startswith(prefix)}
            self._mark(topics)

    def _mark(self, topics: set[str]) -> None:
        # render only what a socket here shows; a stream's change dirties each range watched
        topics = {t for t in self.watched if t in topics or base_topic(t) in topics}
        if topics:
            self.dirty |= topics
            self.wake.set()

    async def _push(self) -> None:
        topics, self.dirty = self.dirty, set()
        layer = get_channel_layer()
        assert layer is not None
        for topic in sorted(topics):
            try:
                parts = await self.render(topic)
            except Exception:  # one broken topic must not stop the others
                log.exception("live hub: rendering %s failed", topic)
                continue
            if parts is None:
                continue
            self.pushes += 1
            await layer.group_send(
                group_name(topic), {"type": "live.push", "topic": topic, "parts": parts}
            )


_hub: LiveHub | None = None


def hub() -> LiveHub:
    """This process' hub (created on first use, in the server's event loop)."""
    global _hub
    if _hub is None:
        from django.conf import settings

        _hub = LiveHub(
            settings.NATS_URL,
            settings.FLOWSCOPE_SUBJECT_PREFIX,
            tick=settings.FLOWSCOPE_LIVE_INTERVAL,
        )
    return _hub
