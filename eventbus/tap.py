"""The tap: watches every JetStream stream and records events and consumer lag in PostgreSQL.

`run(config)` owns the connections, signals and tasks; the parts live beside it:
registry.py (streams and their rows), lease.py (which streams this tap owns), observers.py (how
each stream is read), writer.py (batched COPY with checkpoints), digest.py (what the web app is
told after each commit), lag.py (consumer lag), partitions.py (retention), deadletters.py (what
consumers gave up on), replay.py (the worker that replays them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import psycopg
from nats.aio.client import Client
from nats.errors import SlowConsumerError

from eventbus import digest, lag, metrics, probes, scan, topology
from eventbus.aio import wait_event
from eventbus.deadletters import ADVISORY_STREAM, DeadLetterCapture, expire_naks
from eventbus.heartbeat import Heartbeat
from eventbus.httpserver import ProbeServer
from eventbus.lease import Lease
from eventbus.natsconn import servers, shown
from eventbus.observers import (
    ConsumerObserver,
    Observer,
    ObserverSettings,
    RepublishObserver,
    SubjectObserver,
    WireConsumerObserver,
    choose_observer,
)
from eventbus.partitions import Partitions, parse_retention
from eventbus.registry import (
    JetStreamError,
    StreamDesc,
    advance_checkpoint,
    checkpoint,
    list_streams,
    mark_deleted,
    upsert_stream,
)
from eventbus.replay import ReplayWorker
from eventbus.supervise import Supervisor
from eventbus.writer import Committed, Writer

log = logging.getLogger("flowscope.tap")


@dataclass
class TapConfig:
    nats_url: str
    database_url: str
    nats_creds: str = ""
    subject_prefix: str = "flowscope"
    lag_interval: float = 5.0
    retention: timedelta = timedelta(days=7)
    rebalance_interval: float = 2.0
    observer: ObserverSettings = field(default_factory=ObserverSettings)
    buffer_size: int = 20_000
    batch_size: int = 5_000
    heartbeat_interval: float = 1.0
    # A writer that has not been able to commit for this long gives the streams back.
    unhealthy_after: float = 30.0
    # How long a stream given back to another tap may take to write what this tap holds of it.
    handover_timeout: float = 10.0
    # Flowscope's own stream of consumer advisories (not observed as an application stream).
    advisory_stream: str = ADVISORY_STREAM
    dlq_streams: tuple[str, ...] = ()  # names or fnmatch patterns: each message a dead letter
    # /metrics, /healthz and /readyz (eventbus/httpserver.py); port 0: none
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # /readyz: the heartbeat must have been written within this many seconds
    heartbeat_fresh: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> TapConfig:
        return cls(
            nats_url=settings.NATS_URL,
            database_url=settings.DATABASE_URL,
            nats_creds=settings.NATS_CREDS,
            subject_prefix=settings.FLOWSCOPE_SUBJECT_PREFIX,
            lag_interval=settings.FLOWSCOPE_LAG_INTERVAL,
            retention=parse_retention(settings.FLOWSCOPE_RETENTION),
            observer=ObserverSettings(
                preview_bytes=settings.FLOWSCOPE_PAYLOAD_PREVIEW_BYTES,
                service_header=settings.FLOWSCOPE_SERVICE_HEADER,
                reader=settings.FLOWSCOPE_TAP_READER,
            ),
            advisory_stream=settings.FLOWSCOPE_ADVISORY_STREAM,
            dlq_streams=tuple(settings.FLOWSCOPE_DLQ_STREAMS),
            metrics_host=settings.FLOWSCOPE_METRICS_HOST,
            metrics_port=settings.FLOWSCOPE_TAP_METRICS_PORT,
        )


class TapFailed(Exception):
    """A task of the tap failed beyond what restarting it fixes: the process must exit."""


class Tap:
    def __init__(self, config: TapConfig, stop: asyncio.Event):
        self.config = config
        self.stop = stop
        self.id = uuid.uuid4().hex[:10]
        self.nc: Client | None = None
        self.writer = Writer(
            config.database_url,
            buffer_size=config.buffer_size,
            batch_size=config.batch_size,
            on_commit=self._announce,
            on_conflict=self._resync,
        )
        self.lease = Lease(config.database_url, self.id)
        self.observers: dict[str, Observer] = {}  # by stream name
        self.incarnations: dict[str, tuple[int, str]] = {}  # name -> (stream_id, mode)
        self.seen: dict[str, tuple[int, str, Any]] = {}  # name -> (stream_id, mode, config)
        self.db: psycopg.AsyncConnection[Any] | None = None
        self.db_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.db_ok = True
        self.supervisor = Supervisor(stop)
        self.writer_running = False
        self.heartbeat = Heartbeat(self)
        self.deadletters: DeadLetterCapture | None = None
        self.replays: ReplayWorker | None = None
        # For /metrics: each owned stream's last recorded sequence (moved per batch) and how far
        # the stream's last sequence was past it when the lag sampler last looked.
        self.recorded: dict[str, int] = {}
        self.behind: dict[str, int] = {}

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        async with self.db_lock:  # several loops share it: connect once
            if self.db is None or self.db.closed:
                self.db = await psycopg.AsyncConnection.connect(
                    self.config.database_url,
                    autocommit=True,
                    application_name="flowscope-tap",
                    connect_timeout=5,
                )
            return self.db

    async def connect_nats(self) -> Client:
        async def disconnected() -> None:
            if self.stop.is_set():
                return
            metrics.NATS_DISCONNECTS.inc()
            log.error("NATS connection lost: reconnecting (nothing still in the streams is lost)")

        async def reconnected() -> None:
            server = shown(self.nc.connected_url if self.nc else None)
            log.warning("NATS reconnected to %s: resuming", server)
            self.wake.set()

        async def error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError):
                self._dropped(exc)
                return
            log.warning("NATS: %s", exc)

        options: dict[str, Any] = {
            "name": f"flowscope-tap-{self.id}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
        }
        if self.config.nats_creds:
            options["user_credentials"] = self.config.nats_creds
        while True:
            try:
                return await nats.connect(servers(self.config.nats_url), **options)
            except Exception as exc:
                if self.stop.is_set():
                    raise
                log.error("cannot reach NATS at %s (%s): retrying", self.config.nats_url, exc)
                await asyncio.sleep(2)

    async def run(self) -> None:
        """Run until `stop`; /metrics and the probes answer from the start (before NATS is
        reached: /readyz then says so) to the end."""
        port = None
        if self.config.metrics_port:
            port = ProbeServer("tap", metrics.REGISTRY, lambda: probes.checks(self),
                               self.config.metrics_host, self.config.metrics_port,
                               "FLOWSCOPE_TAP_METRICS_PORT")  # fmt: skip
            await port.start()
        metrics.STATE.add(self, lambda: probes.samples(self))
        try:
            await self._run()
        finally:
            metrics.STATE.remove(self)
            if port is not None:
                await port.close()

    async def _run(self) -> None:
        self.nc = await self.connect_nats()
        log.info("tap %s connected to %s", self.id, shown(self.nc.connected_url))
        if scan.IMPLEMENTATION != "c":
            log.warning(
                "the tap's C scanner (eventbus/_scan.c) is not in use [%s]: plain deliveries "
                "are read in Python, about 7 µs of CPU per event instead of 1.5",
                scan.IMPLEMENTATION,
            )
        advisories = await self.nc.subscribe(
            "$JS.EVENT.ADVISORY.STREAM.>", cb=self._on_stream_advisory
        )
        observing = await self.nc.subscribe(
            f"{self.config.subject_prefix}.tap.observing", cb=self._on_observing
        )
        sup = self.supervisor
        sup.spawn("writer", self._run_writer, on_crash=self._writer_failed)
        sup.spawn("discovery", self._reconcile_loop, on_crash=self._discovery_failed)
        sup.spawn("heartbeat", self.heartbeat.run)
        sup.spawn("retention", self._retention_loop)
        sup.spawn("lag sampler", self._lag_loop)
        sup.spawn("topology", self._topology_loop)
        c = self.config  # dead letters: eventbus/deadletters.py
        self.deadletters = DeadLetterCapture(self.nc, c.database_url, self.stop,
                                             advisory_stream=c.advisory_stream,
                                             dlq_streams=c.dlq_streams,
                                             subject_prefix=c.subject_prefix)  # fmt: skip
        sup.spawn("dead letters", self.deadletters.run)
        if c.dlq_streams:
            sup.spawn("dead-letter streams", self.deadletters.run_dlq)
        # replay jobs: eventbus/replay.py (every tap runs a worker; SKIP LOCKED shares the jobs)
        self.replays = ReplayWorker(self.nc, c.database_url, self.stop, prefix=c.subject_prefix)
        sup.spawn("replays", self.replays.run)
        await self.stop.wait()
        log.info("tap %s stopping: flushing what it holds", self.id)
        # The loops first, so none of them starts an observer after this point.
        loops = ["discovery", "heartbeat", "retention", "lag sampler", "dead letters"]
        await sup.wait([*loops, "dead-letter streams", "replays"], timeout=10)
        for name in list(self.observers):
            await self._stop_observer(name)
        for sub in (advisories, observing):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await sup.wait(["writer"], timeout=60)  # the writer drains its buffer, then returns
        await self.lease.close()
        if self.db is not None:
            await self.db.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        log.info("tap %s stopped: %d events written", self.id, self.writer.written)
        if sup.fatal:
            raise TapFailed(sup.fatal)

    async def _run_writer(self) -> None:
        self.writer_running = True
        await self.writer.run(self.stop)

    def writer_healthy(self) -> bool:
        return self.writer_running and self.writer.down_for() < self.config.unhealthy_after

    async def _writer_failed(self, exc: BaseException) -> None:
        """The writer died: what it held is lost from memory, so every observer starts again
        from the stored checkpoint, and the streams are given back until it runs again."""
        self.writer_running = False
        for name in list(self.observers):
            await self._stop_observer(name)
        self.incarnations.clear()
        self.seen.clear()
        self.writer.reset()
        with contextlib.suppress(psycopg.Error):
            await self.lease.release_all()
        self.wake.set()

    async def _discovery_failed(self, exc: BaseException) -> None:
        """Discovery died on something unexpected: start it again from a clean slate."""
        self.seen.clear()
        if self.db is not None:
            await self.db.close()
            self.db = None

    def _dropped(self, exc: SlowConsumerError) -> None:
        for observer in self.observers.values():
            if isinstance(observer, SubjectObserver) and observer.owns(exc.sub):
                observer.count_drop()
                return
        log.error("NATS dropped a message for %s (slow consumer)", exc.subject)

    async def _on_observing(self, msg: Any) -> None:
        """`<prefix>.tap.observing`: which streams this tap watches now (its observers receive
        what those streams get). Every tap answers; a caller gathers the answers."""
        if msg.reply:
            ready = sorted(name for name, o in self.observers.items() if o.ready.is_set())
            await msg.respond(json.dumps({"tap": self.id, "streams": ready}).encode())

    async def _on_stream_advisory(self, msg: Any) -> None:
        self.wake.set()  # created, updated or deleted: reconcile now

    async def _reconcile_loop(self) -> None:
        while not self.stop.is_set():  # the flag too: nats-py's requests can lose a cancel
            # Cleared *before* the round: a stream created while it runs sets it again, and the
            # next round starts at once (clearing it afterwards lost those wake-ups).
            self.wake.clear()
            try:
                await self.reconcile()
                if not self.db_ok:
                    log.warning("tap: PostgreSQL reachable again")
                self.db_ok = True
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self.db_ok:
                    log.error("tap: PostgreSQL unavailable (%s): retrying", exc)
                self.db_ok = False
                if self.db is not None:
                    await self.db.close()
                    self.db = None
                self.seen.clear()
                for name in list(self.observers):  # our leases died with the connection
                    await self._give_up(name, timeout=0)
            except (TimeoutError, nats.errors.Error, JetStreamError) as exc:
                log.warning("tap: discovery failed (%r): retrying", exc)
            await wait_event(self.wake, self.config.rebalance_interval)

    async def reconcile(self) -> None:
        assert self.nc is not None
        listing = await list_streams(self.nc)
        # Flowscope's own advisory stream is no application stream: not observed, not listed.
        own = {self.config.advisory_stream}
        streams = {s.name: s for s in listing.streams if s.name not in own}
        # A stream the server could not describe now (no leader for a moment) still exists: it
        # is neither deleted nor given away, and its observer goes on (it reconnects itself).
        live = set(streams) | (listing.missing - own)
        db = await self._db()
        gone = await mark_deleted(db, live)
        for name in gone:
            log.info("stream %s was deleted", name)
        if not self.writer_healthy():
            # Nothing this tap reads would be written: let another tap have the streams.
            if self.lease.owned:
                log.error(
                    "tap %s: the writer cannot commit (down for %.0fs): giving up %d streams",
                    self.id, self.writer.down_for(), len(self.lease.owned),
                )  # fmt: skip
            await self.lease.release_all(self._release)
            return
        owned = await self.lease.rebalance(live, before_release=self._release)
        for name in list(self.observers):
            if name not in owned:
                await self._give_up(name, timeout=0)
        for name in list(self.observers):  # supervised: an observer task that ended is restarted
            observer = self.observers[name]
            if observer.task is not None and observer.task.done() and not self.stop.is_set():
                exc = None if observer.task.cancelled() else observer.task.exception()
                log.error("stream %s: observer ended (%r): restarting it", name, exc,
                          exc_info=exc)  # fmt: skip
                observer.start()
        for name in sorted(owned & set(streams)):
            await self._ensure_observer(db, streams[name])

    async def _release(self, name: str) -> None:
        """Before a stream's lock is given back: stop reading it and write (or, failing that
        in time, drop) what this tap holds of it, so the next owner resumes from a checkpoint
        that covers everything this one read."""
        writing = self.writer_healthy() and self.writer.db_down_since is None
        await self._give_up(name, self.config.handover_timeout if writing else 0.0)

    async def _give_up(self, name: str, timeout: float) -> None:
        self.recorded.pop(name, None)
        self.behind.pop(name, None)
        observer = self.observers.pop(name, None)
        self.incarnations.pop(name, None)
        self.seen.pop(name, None)
        if observer is None:
            return
        await observer.stop()
        if timeout > 0:
            observer.hand_over_pending()
            if await self.writer.flush_stream(observer.stream_id, timeout):
                return
            log.warning("stream %s: what this tap held could not be written in time: dropped "
                        "(the next owner reads it again)", name)  # fmt: skip
        dropped = self.writer.forget(observer.stream_id)
        if dropped:
            log.info("stream %s: %d events held by this tap left to the next owner", name,
                     dropped)  # fmt: skip

    async def _ensure_observer(self, db: psycopg.AsyncConnection[Any], s: StreamDesc) -> None:
        mode, _ = choose_observer(s.config)
        seen = self.seen.get(s.name)
        if (
            seen is not None
            and seen[1:] == (mode, s.config)
            and self.incarnations.get(s.name) == seen[:2]
            and s.name in self.observers
        ):
            return  # nothing changed since the last round: no database round trip
        stream_id, last_seq = await upsert_stream(db, s)
        self.seen[s.name] = (stream_id, mode, s.config)
        if self.incarnations.get(s.name) == (stream_id, mode) and s.name in self.observers:
            return
        previous = self.incarnations.get(s.name)
        await self._stop_observer(s.name)
        if self.stop.is_set():
            return
        if mode != "subject" and previous == (stream_id, "subject"):
            # What the stream stored so far, the subject observer saw (without sequences):
            # sequenced observation starts after it, not with a false gap from seq 1.
            last_seq = await advance_checkpoint(db, stream_id, int(s.state.get("last_seq", 0)))
        assert self.nc is not None
        args = (self.nc, self.writer, s.name, stream_id, last_seq + 1, self.config.observer)
        observer: Observer
        if mode == "republish":
            observer = RepublishObserver(*args, dest=s.config["republish"]["dest"])
        elif mode == "subject":
            observer = SubjectObserver(*args, subjects=s.subjects)
        elif self.config.observer.reader == "wire" and not self.config.nats_creds:
            observer = WireConsumerObserver(*args, tap_id=self.id)
        else:
            observer = ConsumerObserver(*args, tap_id=self.id)
        if mode == "subject":
            log.info("stream %s (%s): observing by subject subscription (no sequences)",
                     s.name, s.retention)  # fmt: skip
        else:
            log.info("stream %s (%s): observing by %s from seq %d",
                     s.name, s.retention, mode, last_seq + 1)  # fmt: skip
        self.observers[s.name] = observer
        self.incarnations[s.name] = (stream_id, mode)
        if mode != "subject":  # (a subject subscription has no sequences to be behind on)
            self.recorded[s.name] = last_seq
        observer.start()

    async def _stop_observer(self, name: str) -> None:
        self.recorded.pop(name, None)
        self.behind.pop(name, None)
        observer = self.observers.pop(name, None)
        if observer is not None:
            await observer.stop()

    async def _resync(self, stream_id: int) -> None:
        for observer in self.observers.values():
            if observer.stream_id == stream_id:
                last = await checkpoint(await self._db(), stream_id)
                await observer.resync(last)

    async def _announce(self, committed: Committed) -> None:
        names = {sid: name for name, (sid, _) in self.incarnations.items()}
        self._count(committed, names)
        if self.nc is None or not self.nc.is_connected:
            return
        with contextlib.suppress(Exception):
            await self.nc.publish(
                f"{self.config.subject_prefix}.digest.events",
                digest.events_digest(committed, names),
            )
            metrics.DIGESTS_PUBLISHED.labels("events").inc()

    def _count(self, committed: Committed, names: dict[int, str]) -> None:
        """A committed batch in the metrics: a few calls per stream in it, none per event."""
        metrics.BATCH_WRITE_SECONDS.observe(committed.seconds)
        metrics.BATCH_EVENTS.observe(committed.count)
        for stream_id, n in committed.counts.items():
            metrics.EVENTS_INGESTED.labels(names.get(stream_id, "(given up)")).inc(n)
        for gap in committed.gaps:
            metrics.GAP_MESSAGES.labels(names.get(gap.stream_id, "(given up)")).inc(
                gap.last_seq - gap.first_seq + 1
            )
        for stream_id, seq in committed.last_seq.items():
            name = names.get(stream_id)
            if name in self.recorded:
                self.recorded[name] = max(self.recorded[name], seq)

    async def _retention_loop(self) -> None:
        partitions = Partitions()
        while True:
            try:  # a connection of its own: transactions on the shared one would interleave
                async with await psycopg.AsyncConnection.connect(
                    self.config.database_url,
                    autocommit=True,
                    application_name="flowscope-tap",
                    connect_timeout=5,
                ) as db:
                    await partitions.drop_expired(db, self.config.retention, datetime.now(UTC))
                    await expire_naks(db, datetime.now(UTC) - self.config.retention)
                    await self._downsample(db)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("retention: %s (will retry)", exc)
            if await wait_event(self.stop, 3600):
                return

    async def _downsample(self, db: psycopg.AsyncConnection[Any]) -> None:
        await lag.downsample(db, raw_for=timedelta(hours=24), keep_for=self.config.retention)

    async def _lag_loop(self) -> None:
        assert self.nc is not None

        async def on_sample(d: lag.LagSample) -> None:
            for name, entry in d.streams.items():
                if name in self.recorded:
                    self.behind[name] = max(0, int(entry["last_seq"]) - self.recorded[name])
            if self.nc is not None and self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.nc.publish(
                        f"{self.config.subject_prefix}.digest.lag", digest.lag_digest(d)
                    )
                    metrics.DIGESTS_PUBLISHED.labels("lag").inc()

        await lag.run_sampler(
            self.nc,
            self.config.database_url,
            self.config.lag_interval,
            self.stop,
            on_sample=on_sample,
            streams=lambda: list(self.observers),
        )

    async def _topology_loop(self) -> None:
        """Micro services and client connections, as NATS reports them (eventbus/topology.py)."""
        assert self.nc is not None
        await topology.run(self.nc, self.config.database_url, self.stop)


async def run(config: TapConfig, stop: asyncio.Event | None = None) -> None:
    """Run a tap until SIGINT/SIGTERM (or until `stop` is set, for tests)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    await Tap(config, stop).run()  # TapFailed propagates: the process exits non-zero
