"""The tap: watches every JetStream stream and records events and consumer lag in PostgreSQL.

`run(config)` owns the connections, signals and tasks; the parts live beside it:
registry.py (streams and their rows), lease.py (which streams this tap owns), observers.py (how
each stream is read), writer.py (batched COPY with checkpoints), digest.py (what the web app is
told after each commit), lag.py (consumer lag), partitions.py (retention).
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

from eventbus import digest, lag, scan
from eventbus.aio import wait_event
from eventbus.lease import Lease
from eventbus.natsconn import servers
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
    StreamDesc,
    advance_checkpoint,
    checkpoint,
    list_streams,
    mark_deleted,
    upsert_stream,
)
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
        )


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
        self.db: psycopg.AsyncConnection[Any] | None = None
        self.db_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.db_ok = True

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
            log.error("NATS connection lost: reconnecting (nothing still in the streams is lost)")

        async def reconnected() -> None:
            log.warning(
                "NATS reconnected to %s: resuming", self.nc.connected_url if self.nc else ""
            )
            self.wake.set()

        async def error(exc: Exception) -> None:
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
        self.nc = await self.connect_nats()
        log.info("tap %s connected to %s", self.id, self.config.nats_url)
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
        tasks = [
            asyncio.create_task(self.writer.run(self.stop), name="writer"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._retention_loop(), name="retention"),
            asyncio.create_task(self._lag_loop(), name="lag"),
        ]
        await self.stop.wait()
        log.info("tap %s stopping: flushing what it holds", self.id)
        for t in tasks[1:]:
            t.cancel()
        # Let the loops finish first, so none of them starts an observer after this point.
        _, pending = await asyncio.wait(tasks[1:], timeout=10)
        for t in pending:  # a loop ignoring cancellation is a bug: say which, and go on
            log.error(
                "tap %s: %s did not stop when cancelled: %s", self.id, t.get_name(), t.get_stack()
            )
        for name in list(self.observers):
            await self._stop_observer(name)
        for sub in (advisories, observing):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await tasks[0]  # the writer drains its buffer, then returns
        await self.lease.close()
        if self.db is not None:
            await self.db.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        log.info("tap %s stopped: %d events written", self.id, self.writer.written)

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
                for name in list(self.observers):  # our leases died with the connection
                    await self._stop_observer(name)
            except Exception as exc:
                log.warning("tap: discovery failed (%r): retrying", exc)
            self.wake.clear()
            await wait_event(self.wake, self.config.rebalance_interval)

    async def reconcile(self) -> None:
        assert self.nc is not None
        streams = {s.name: s for s in await list_streams(self.nc)}
        db = await self._db()
        gone = await mark_deleted(db, set(streams))
        for name in gone:
            log.info("stream %s was deleted", name)
        owned = await self.lease.rebalance(streams)
        for name in list(self.observers):
            if name not in owned:
                await self._stop_observer(name)
                self.incarnations.pop(name, None)
        for name in sorted(owned):
            await self._ensure_observer(db, streams[name])

    async def _ensure_observer(self, db: psycopg.AsyncConnection[Any], s: StreamDesc) -> None:
        stream_id, last_seq = await upsert_stream(db, s)
        mode, _ = choose_observer(s.config)
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
        observer.start()

    async def _stop_observer(self, name: str) -> None:
        observer = self.observers.pop(name, None)
        if observer is not None:
            await observer.stop()

    async def _resync(self, stream_id: int) -> None:
        for observer in self.observers.values():
            if observer.stream_id == stream_id:
                last = await checkpoint(await self._db(), stream_id)
                await observer.resync(last)

    async def _announce(self, committed: Committed) -> None:
        if self.nc is None or not self.nc.is_connected:
            return
        names = {sid: name for name, (sid, _) in self.incarnations.items()}
        with contextlib.suppress(Exception):
            await self.nc.publish(
                f"{self.config.subject_prefix}.digest.events",
                digest.events_digest(committed, names),
            )

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
                    await self._downsample(db)
            except psycopg.Error as exc:
                log.warning("retention: %s (will retry)", exc)
            if await wait_event(self.stop, 3600):
                return

    async def _downsample(self, db: psycopg.AsyncConnection[Any]) -> None:
        await lag.downsample(db, raw_for=timedelta(hours=24), keep_for=self.config.retention)

    async def _lag_loop(self) -> None:
        assert self.nc is not None

        async def on_sample(d: lag.LagSample) -> None:
            if self.nc is not None and self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.nc.publish(
                        f"{self.config.subject_prefix}.digest.lag", digest.lag_digest(d)
                    )

        await lag.run_sampler(
            self.nc,
            self.config.database_url,
            self.config.lag_interval,
            self.stop,
            on_sample=on_sample,
            streams=lambda: list(self.observers),
        )


async def run(config: TapConfig, stop: asyncio.Event | None = None) -> None:
    """Run a tap until SIGINT/SIGTERM (or until `stop` is set, for tests)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    await Tap(config, stop).run()
