"""The tap's Prometheus metrics (served on its own port by eventbus/httpserver.py).

Counters are module-level objects in `REGISTRY`, a registry of the tap process's own (not
prometheus_client's global one, so a process that merely imports this module, the web app say,
does not expose the tap's series at zero). Code elsewhere in the tap process imports and
increments them, e.g. the replay worker:

    from eventbus.metrics import REPLAYS_PUBLISHED
    REPLAYS_PUBLISHED.labels(result="published").inc()

Counted per batch, never per message: the tap ingests 100k+ events/s. Gauges that describe the
state of a running object (a tap's held events, how far it is behind each stream) are read at
scrape time from that object through `STATE` (see `StateCollector`), so nothing is updated on
the hot path and a stream given up vanishes from the output with its owner's state.

Names follow Prometheus' conventions: `flowscope_` prefix, `_total` counters, base units in
the name (`_seconds`, `_bytes`, `_messages`), low-cardinality labels (a stream's name, a
reason, a task; never a subject or a sequence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes…
PlatformCollector(registry=REGISTRY)
REGISTRY.register(GC_COLLECTOR)

# -- the tap's recording --------------------------------------------------------------------
EVENTS_INGESTED = Counter(
    "flowscope_tap_events_ingested",
    "Events the tap committed to PostgreSQL, per stream.",
    ["stream"],
    registry=REGISTRY,
)
GAP_MESSAGES = Counter(
    "flowscope_tap_gap_messages",
    "Messages recorded as missing (an explicit gap: gone from the stream before the tap read "
    "them), per stream.",
    ["stream"],
    registry=REGISTRY,
)
BATCH_WRITE_SECONDS = Histogram(
    "flowscope_tap_batch_write_seconds",
    "Time from starting a batch's transaction (COPY and checkpoints) to its commit.",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "flowscope_tap_batch_events",
    "Events per committed batch.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
    registry=REGISTRY,
)
DIGESTS_PUBLISHED = Counter(
    "flowscope_tap_digests_published",
    "Digests the tap announced to the web processes (flowscope.digest.*), by kind.",
    ["kind"],
    registry=REGISTRY,
)
NATS_DISCONNECTS = Counter(
    "flowscope_tap_nats_disconnects",
    "Times the tap's NATS connection was lost (it reconnects by itself).",
    registry=REGISTRY,
)

# -- dead letters (eventbus/deadletters.py) ----------------------------------------------------
DEADLETTERS_CAPTURED = Counter(
    "flowscope_deadletters_captured",
    "Dead letters written (once each), per stream of the message and reason.",
    ["stream", "reason"],
    registry=REGISTRY,
)
DEADLETTER_ADVISORIES_IGNORED = Counter(
    "flowscope_deadletter_advisories_ignored",
    "Advisories that could not be parsed (acknowledged and logged, never retried).",
    registry=REGISTRY,
)

# -- replays (eventbus/replay.py increments these) ---------------------------------------------
REPLAYS_PUBLISHED = Counter(
    "flowscope_replays_published",
    "Dead letters published again by replay, by result (published, duplicate, failed, ...).",
    ["result"],
    registry=REGISTRY,
)
REPLAY_JOBS = Counter(
    "flowscope_replay_jobs",
    "Replay jobs by the state they reached (claimed, done, cancelled, failed, ...).",
    ["state"],
    registry=REGISTRY,
)


# -- state read at scrape time ---------------------------------------------------------------
@dataclass
class Sample:
    """One value of a gauge (or a counter kept by the object itself) read at scrape time."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    kind: str = "gauge"  # or "counter" (then `name` is without `_total`)


Source = Callable[[], Iterable[Sample]]


class StateCollector(Collector):
    """Reads each registered source at scrape time and groups the samples into families by
    name, so two sources (two taps in one test process) never emit a family twice."""

    def __init__(self) -> None:
        self.sources: dict[object, Source] = {}

    def add(self, owner: object, source: Source) -> None:
        self.sources[owner] = source

    def remove(self, owner: object) -> None:
        self.sources.pop(owner, None)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for source in list(self.sources.values()):
            for s in source():
                family = families.get(s.name)
                if family is None:
                    labels = sorted(s.labels)
                    if s.kind == "counter":
                        family = CounterMetricFamily(s.name, s.help, labels=labels)
                    else:
                        family = GaugeMetricFamily(s.name, s.help, labels=labels)
                    families[s.name] = family
                family.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the names depend on what runs: not checked for duplicates up front


STATE = StateCollector()
REGISTRY.register(STATE)
