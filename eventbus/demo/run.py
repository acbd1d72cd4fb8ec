"""The demo as one asyncio program: topology, workers, and the order generator."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from opentelemetry.sdk.trace import TracerProvider

from eventbus.aio import wait_event
from eventbus.demo import metrics, topology
from eventbus.demo.services import World, new_order
from eventbus.demo.tracing import Tracing
from eventbus.demo.worker import Publisher, Worker
from eventbus.httpserver import ProbeServer
from eventbus.natsconn import servers

log = logging.getLogger("flowscope.demo")


@dataclass
class DemoConfig:
    nats_url: str
    rate: float = 2.0  # orders per second; 0 publishes none
    failure_rate: float = 0.1
    namespace: str = ""
    seed: int | None = None
    concurrency: int = 8
    retry_delay: float = 2.0
    service_header: str = "Flowscope-Service"
    wait_for_tap: float = 0.0  # seconds to wait, before the first order, for a tap to watch
    tap_prefix: str = "flowscope"  # the tap's FLOWSCOPE_SUBJECT_PREFIX
    topology: topology.Settings = field(default_factory=topology.Settings)
    # /metrics, /healthz and /readyz (eventbus/demo/metrics.py); port 0: none
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0


class Demo:
    def __init__(
        self,
        config: DemoConfig,
        tracer_provider: TracerProvider | None = None,
        worker_types: dict[str, type[Worker]] | None = None,
    ):
        self.config = config
        self.worker_types = worker_types or {}  # by consumer: tests put in crashing workers
        self.names = topology.Names(config.namespace)
        self.world = World(random.Random(config.seed), config.failure_rate, config.retry_delay)
        self.tracing = Tracing(tracer_provider)
        self.stop_event = asyncio.Event()
        self.workers: dict[str, Worker] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.orders_placed = 0
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.tap_ready = asyncio.Event()  # set once a tap watches every demo stream (or gave up)

    def publisher(self, service: str) -> Publisher:
        assert self.js is not None
        return Publisher(self.js, self.names, self.tracing, service, self.config.service_header)

    async def start(self) -> None:
        self.nc = await nats.connect(
            servers(self.config.nats_url),
            name="flowscope-demo",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            drain_timeout=5,
        )
        self.js = self.nc.jetstream()
        await self._ensure_topology()
        # Nothing is consumed or placed before a tap watches every demo stream: a backlog left
        # by an earlier run is worked off in milliseconds, and what leaves a work-queue stream
        # unseen is never recorded.
        if self.config.wait_for_tap > 0:
            waiter = asyncio.create_task(self._await_tap(), name="wait for the tap")
            self.tasks.append(waiter)  # it ends; a failure is logged when the demo stops
        else:
            self.tap_ready.set()
        kv = await self._bucket()
        handlers = self.world.handlers()
        for spec in topology.CONSUMERS:
            worker_type = self.worker_types.get(spec.durable, Worker)
            worker = worker_type(self.nc, self.js, self.names, spec, handlers[spec.durable], kv,
                            self.publisher(spec.service), self.config.concurrency,
                            self.config.retry_delay)  # fmt: skip
            self.workers[spec.durable] = worker
            task = asyncio.create_task(
                self._once_tap_ready(worker.run(self.stop_event)), name=spec.durable
            )
            task.add_done_callback(self._ended)
            self.tasks.append(task)
        if self.config.rate > 0:
            generator = asyncio.create_task(self._once_tap_ready(self._generate()), name="orders")
            generator.add_done_callback(self._ended)
            self.tasks.append(generator)
        log.info(
            "demo services running: %d consumers, %.1f orders/s, failure rate %.2f",
            len(self.workers), self.config.rate, self.config.failure_rate,
        )  # fmt: skip

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A worker that ends before the demo stops is a bug: say so loudly."""
        if task.cancelled() or self.stop_event.is_set():
            return
        exc = task.exception()
        log.error("demo: %s stopped working: %r", task.get_name(), exc, exc_info=exc)

    async def _ensure_topology(self) -> None:
        assert self.js is not None
        while True:
            try:
                await topology.ensure(self.js, self.names, self.config.topology)
                return
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("demo: cannot set up streams yet (%r): retrying", exc)
                await asyncio.sleep(1)

    async def _bucket(self) -> KeyValue:
        assert self.js is not None
        try:  # processed-message records, kept a day: longer than any redelivery
            return await self.js.create_key_value(bucket=self.names.bucket, ttl=86400, history=1)
        except BadRequestError:
            return await self.js.key_value(self.names.bucket)

    async def place_order(self, simulate: str | None = None) -> str:
        """Publish one new order (the orders service's API); returns its id."""
        order = new_order(self.world.rng, self.config.failure_rate, simulate)
        await self.publisher("orders").publish(order, None)
        self.orders_placed += 1
        return order.msg_id.split(".", 1)[0]

    async def _once_tap_ready(self, work: Coroutine[Any, Any, None]) -> None:
        waiting = asyncio.ensure_future(self.tap_ready.wait())
        stopping = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            stopping.cancel()
        if self.stop_event.is_set():
            work.close()  # never started
            return
        await work

    async def _await_tap(self) -> None:
        try:
            await self._find_tap()
        except Exception as exc:  # asking failed: say so, and let the services work anyway
            log.error("demo: could not ask for a tap (%r): starting anyway", exc, exc_info=exc)
        finally:
            self.tap_ready.set()

    async def _find_tap(self) -> None:
        """Ask the taps (`<prefix>.tap.observing`) until one watches each demo stream: the
        first orders' events pass interest and work-queue streams within milliseconds, and a
        tap that starts watching later would record them as gaps or not at all."""
        assert self.nc is not None
        wanted = {self.names.stream(s.name) for s in topology.STREAMS}
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_answer(msg: Msg) -> None:
            if msg.data:  # not the server's "no responders" status
                answers.put_nowait(msg.data)

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=on_answer)
        deadline = time.monotonic() + self.config.wait_for_tap
        seen: set[str] = set()
        try:
            while time.monotonic() < deadline and not self.stop_event.is_set():
                await self.nc.publish(f"{self.config.tap_prefix}.tap.observing", b"", reply=inbox)
                seen = set()
                try:
                    async with asyncio.timeout(0.3):  # every tap answers: gather them
                        while True:
                            answer = json.loads(await answers.get())
                            seen.update(answer.get("streams", []))
                except TimeoutError:
                    pass
                if wanted <= seen:
                    log.info("demo: the tap watches all %d demo streams: placing orders",
                             len(wanted))  # fmt: skip
                    return
                await wait_event(self.stop_event, 0.2)
            if not self.stop_event.is_set():
                log.warning("demo: no tap watches %s after %.0f s: placing orders anyway",
                            ", ".join(sorted(wanted - seen)), self.config.wait_for_tap)  # fmt: skip
        finally:
            await sub.unsubscribe()

    async def _generate(self) -> None:
        interval = 1.0 / self.config.rate
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                await self.place_order()
            except nats.errors.Error as exc:
                log.warning("orders: could not place an order (%s)", exc)
            next_at += interval
            now = time.monotonic()
            if next_at < now - 1:  # fell behind by more than a second: don't burst to catch up
                next_at = now
            if await wait_event(self.stop_event, max(0.0, next_at - now)):
                return

    async def stop(self) -> None:
        """Graceful: stop pulling, finish and ack what is in hand, then drain the connection."""
        self.stop_event.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for task, result in zip(self.tasks, results, strict=True):
            if isinstance(result, Exception):  # a cancelled task is not a failure
                log.error("demo: %s failed while stopping: %r", task.get_name(), result,
                          exc_info=result)  # fmt: skip
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except nats.errors.Error:
                await self.nc.close()
        log.info("demo stopped: %d orders placed", self.orders_placed)


async def run(config: DemoConfig, stop: asyncio.Event) -> None:
    demo = Demo(config)
    port = None
    if config.metrics_port:  # answering from the start: /readyz says what it still waits for
        port = ProbeServer("demo", metrics.registry_for(demo), lambda: metrics.checks(demo),
                           config.metrics_host, config.metrics_port,
                           "FLOWSCOPE_DEMO_METRICS_PORT")  # fmt: skip
        await port.start()
    try:
        await demo.start()
        await stop.wait()
        await demo.stop()
    finally:
        if port is not None:
            await port.close()
