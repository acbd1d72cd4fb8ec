"""The demo services' port (FLOWSCOPE_DEMO_METRICS_PORT): /metrics counts what the consumers
do, /healthz answers, /readyz follows NATS. The demo runs in this process (its `run`, as
`manage.py demo` calls it) against a real nats-server; scrapes go through a thread, since the
port is served by this event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from eventbus.demo import topology
from eventbus.demo.run import DemoConfig, run
from eventbus.embedded import free_port
from tests.metricsutil import Series, probe, scrape, value
from tests.webutil import get


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


async def test_the_demo_port_counts_the_consumers_work_and_follows_nats(nats_server, unique):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = DemoConfig(
        nats_server.url,
        rate=20.0,
        failure_rate=0.5,  # retries and poison messages too
        namespace=f"m{unique}",
        seed=11,
        retry_delay=0.2,
        topology=topology.Settings(max_deliver=3, ack_wait=2.0),
        metrics_port=port,
    )
    stop = asyncio.Event()
    demo = asyncio.create_task(run(config, stop))
    try:
        assert (await until(lambda: get(base + "/healthz"), 10, "healthz"))[0] == 200

        def worked() -> Series | None:
            s = scrape(base + "/metrics")
            busy = (
                value(s, "flowscope_demo_messages_handled_total", outcome="processed") > 20
                and value(s, "flowscope_demo_retries_total") > 0
                and value(s, "flowscope_demo_failures_total", kind="poison") > 0
            )
            return s if busy else None

        series = await until(worked, 40, "messages handled, retried and terminated")
        consumers = {dict(labels)["consumer"] for name, labels in series
                     if name == "flowscope_demo_inflight_messages"}  # fmt: skip
        assert consumers == {c.durable for c in topology.CONSUMERS}
        assert value(series, "flowscope_demo_concurrency_limit", consumer="inventory") == 8
        assert value(series, "flowscope_demo_messages_handled_total", consumer="inventory",
                     outcome="processed") > 0  # fmt: skip
        assert value(series, "flowscope_demo_orders_placed_total") >= 3
        states = {dict(labels)["state"]: v for (name, labels), v in series.items()
                  if name == "flowscope_demo_breaker_state"}  # fmt: skip
        assert set(states) == {"closed", "open", "half-open"} and sum(states.values()) == 1
        assert await asyncio.to_thread(probe, base + "/readyz") == (
            200,
            {"status": "ok", "checks": {"nats": "ok", "tap": "ok", "consumers": "ok"}},
        )

        nats_server.stop()
        t0 = time.monotonic()
        await until(lambda: probe(base + "/readyz")[0] == 503, 5, "readyz unavailable")
        status, body = await asyncio.to_thread(probe, base + "/readyz")
        assert status == 503 and body["checks"]["nats"] == "unreachable", body
        print(f"demo readyz said NATS is gone after {time.monotonic() - t0:.2f}s")
        nats_server.start()
        await until(lambda: probe(base + "/readyz")[0] == 200, 15, "ready again")
    finally:
        stop.set()
        await asyncio.wait_for(demo, 30)
    assert not await asyncio.to_thread(lambda: _listening(port)), "the port is closed at stop"


def _listening(port: int) -> bool:
    try:
        get(f"http://127.0.0.1:{port}/healthz")
    except OSError:
        return False
    return True
