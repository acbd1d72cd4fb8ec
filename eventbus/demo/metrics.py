"""The demo services' Prometheus metrics and probes (FLOWSCOPE_DEMO_METRICS_PORT).

Read at scrape time from the running demo (its workers' counters, in-flight tasks, the
carrier's circuit breaker), so handling a message costs nothing more than the counters it
already kept. Per consumer (the durable's name: eight of them, a fixed set):
- `flowscope_demo_messages_handled_total{consumer,outcome}`: outcome `processed` (handled and
  acked), `duplicate` (a redelivery of work already done: acked, nothing done twice),
  `terminated` (poison: ended as a dead letter);
- `flowscope_demo_retries_total{consumer}`: deliveries nak'ed to be tried again later;
- `flowscope_demo_failures_total{consumer,kind}`: `poison` (terminated), `error` (the handler
  raised something unexpected; retried), `nats` (an ack or a publish failed; redelivered);
- `flowscope_demo_inflight_messages{consumer}` and `flowscope_demo_concurrency_limit{consumer}`;
- `flowscope_demo_breaker_state{breaker,state}`: 1 for the carrier breaker's current state
  (closed, open, half-open), 0 for the others; `flowscope_demo_orders_placed_total`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from eventbus.demo.run import Demo

BREAKER_STATES = ("closed", "open", "half-open")


class DemoCollector(Collector):
    def __init__(self, demo: Demo):
        self.demo = demo

    def collect(self) -> Iterator[Metric]:
        demo = self.demo
        handled = CounterMetricFamily(
            "flowscope_demo_messages_handled",
            "Messages a demo consumer finished with, by outcome.",
            labels=["consumer", "outcome"],
        )
        retries = CounterMetricFamily(
            "flowscope_demo_retries",
            "Deliveries nak'ed to be tried again later.",
            labels=["consumer"],
        )
        failures = CounterMetricFamily(
            "flowscope_demo_failures",
            "Messages that failed: poison (terminated), error (unexpected; retried), nats (an "
            "ack or publish failed; redelivered).",
            labels=["consumer", "kind"],
        )
        inflight = GaugeMetricFamily(
            "flowscope_demo_inflight_messages",
            "Messages a consumer is working on now.",
            labels=["consumer"],
        )
        limit = GaugeMetricFamily(
            "flowscope_demo_concurrency_limit",
            "Messages a consumer works on at most at once.",
            labels=["consumer"],
        )
        for name, worker in sorted(demo.workers.items()):
            s = worker.stats
            handled.add_metric([name, "processed"], s.processed)
            handled.add_metric([name, "duplicate"], s.duplicates)
            handled.add_metric([name, "terminated"], s.terminated)
            retries.add_metric([name], s.retried)
            failures.add_metric([name, "poison"], s.terminated)
            failures.add_metric([name, "error"], s.errors)
            failures.add_metric([name, "nats"], s.failed)
            inflight.add_metric([name], len(worker.inflight))
            limit.add_metric([name], worker.concurrency)
        yield from (handled, retries, failures, inflight, limit)
        breaker = demo.world.breaker
        state = GaugeMetricFamily(
            "flowscope_demo_breaker_state",
            "1 for the circuit breaker's current state, 0 for the others.",
            labels=["breaker", "state"],
        )
        now = breaker.state
        for name in BREAKER_STATES:
            state.add_metric(["carrier", name], 1 if name == now else 0)
        yield state
        yield GaugeMetricFamily(
            "flowscope_demo_breaker_consecutive_failures",
            "Failures of the carrier's API since its last success.",
            value=breaker.failures,
        )
        yield CounterMetricFamily(
            "flowscope_demo_orders_placed", "Orders the demo placed.", value=demo.orders_placed
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


def registry_for(demo: Demo) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(DemoCollector(demo))
    return registry


def checks(demo: Demo) -> dict[str, str]:
    """/readyz: connected to NATS, past waiting for the tap, every consumer still running."""
    nc = demo.nc
    stopped = sorted(t.get_name() for t in demo.tasks if t.done() and t.get_name() in demo.workers)
    return {
        "nats": "ok" if nc is not None and nc.is_connected else "unreachable",
        "tap": "ok" if demo.tap_ready.is_set() else "waiting",
        "consumers": "ok" if not stopped else "stopped: " + ", ".join(stopped),
    }
