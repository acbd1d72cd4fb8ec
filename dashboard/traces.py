"""Event journeys (issue #16): every stored event of one W3C trace, across streams and services,
oldest first, with what caused each one when that can be known, the trace's dead letters and
replays, and the services it crossed. Shared by /traces/<trace_id>/ and `GET /api/traces/<id>`.

What causes an event (its *parent*), in this order:
- a replay (`Flowscope-Replay-Of: <stream>:<seq>`) is caused by the event it replays;
- otherwise an event published by service S follows the latest earlier event of the trace that S
  consumed: an event of a stream with a consumer of S's whose filter takes its subject. A
  consumer belongs to S when the demo's naming says so or when it is named S (the traceparent of
  a message names only its own span, not the span it descends from, so this is read from who
  consumes what, and said to be inferred);
- otherwise it is not known.

The events are read through the B-tree on `trace_id`, without their payloads, at most
MAX_EVENTS of them; dead letters through the index of migration 0015 on the trace id of their
`traceparent` header, and by the (stream, sequence) of the trace's events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL

from dashboard.models import Consumer, DeadLetter, Event, Stream
from dashboard.topology import demo_service
from dashboard.topology_grouping import subject_matches
from eventbus.records import header, parse_traceparent

MAX_EVENTS = 1000  # events a journey shows (the API pages through all of them)
MAX_COUNTED = 100_000  # events counted for "showing the first N of M"
MAX_DEAD_LETTERS = 200
REPLAY_OF = "Flowscope-Replay-Of"
REPLAYED_BY = "Flowscope-Replayed-By"
NO_SERVICE = "(no service header)"

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# what NATS accepts as a stream name: no whitespace, dots, wildcards or path separators
_STREAM_NAME = re.compile(r"^[^\s.*>/\\]{1,255}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# The trace id of a dead letter's `traceparent` header, as migration 0015 indexes it.
DEAD_LETTER_TRACE = "lower(substr(btrim(headers ->> 'traceparent'), 4, 32))"


class TraceIdError(ValueError):
    """Not a trace id: the message says what one looks like."""


def parse_trace_id(text: str | None) -> str:
    """A trace id as typed or pasted: 32 hex digits in any case, or a whole `traceparent`
    value (its trace id is taken). TraceIdError otherwise."""
    value = (text or "").strip().lower()
    match = _TRACEPARENT.match(value)
    if match:
        value = match.group(1)
    if not _TRACE_ID.match(value):
        shown = value[:40] + ("…" if len(value) > 40 else "")
        raise TraceIdError(
            f"“{shown}” is not a trace id: a W3C trace id is 32 hexadecimal characters "
            "(0-9, a-f), like 4bf92f3577b34da6a3ce929d0e0e4736; a traceparent works too"
        )
    if value == "0" * 32:
        raise TraceIdError("the all-zero trace id is not a valid trace (W3C trace context)")
    return value


def tracing_url(trace_id: str | None) -> str:
    """The team's tracing UI for a trace (FLOWSCOPE_TRACE_URL), or "" when not configured."""
    template = getattr(settings, "FLOWSCOPE_TRACE_URL", "")
    if not template or not trace_id or not _TRACE_ID.match(trace_id):
        return ""
    return str(template).replace("{trace_id}", trace_id)


@dataclass(frozen=True)
class ReplayOf:
    stream: str
    seq: int


def replay_of(headers: dict[str, Any] | None) -> ReplayOf | None:
    """`Flowscope-Replay-Of: <stream>:<seq>` -> ReplayOf; None when absent or malformed."""
    value = header(headers, REPLAY_OF)
    if not value or not isinstance(value, str):
        return None
    stream, _, seq = value.strip().rpartition(":")
    if not _STREAM_NAME.match(stream) or not seq.isdigit() or len(seq) > 18:
        return None
    return ReplayOf(stream, int(seq))


@dataclass
class Step:
    """One event of the journey."""

    event: Event
    index: int  # 1-based, in time order
    offset_ms: float  # from the journey's first event
    replay: ReplayOf | None = None
    replayed_by: str = ""
    parent: Step | None = None
    parent_how: str = ""  # "replay" | "consumed" (inferred) | ""
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def service(self) -> str:
        return self.event.service or NO_SERVICE

    @property
    def waited_ms(self) -> float | None:
        """Time from the parent event to this one."""
        return None if self.parent is None else self.offset_ms - self.parent.offset_ms


@dataclass
class ServiceSummary:
    name: str
    events: int
    first_offset_ms: float
    dead_letters: int = 0


@dataclass
class Edge:
    """Service `source` published what `target` consumed (or replayed), through `streams`."""

    source: str
    target: str
    streams: list[str]
    count: int
    how: str  # "consumed" | "replay"


@dataclass
class Journey:
    trace_id: str
    steps: list[Step]
    total: int  # events stored with this trace id (counted up to MAX_COUNTED)
    total_capped: bool
    dead_letters: list[DeadLetter]
    services: list[ServiceSummary]
    edges: list[Edge]

    @property
    def shown(self) -> int:
        return len(self.steps)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.steps)

    @property
    def duration_ms(self) -> float:
        return self.steps[-1].offset_ms if self.steps else 0.0

    @property
    def first_ts(self) -> datetime | None:
        return self.steps[0].event.ts if self.steps else None

    @property
    def replays(self) -> int:
        return sum(1 for s in self.steps if s.replay)

    @property
    def streams(self) -> list[str]:
        return sorted({s.event.stream.name for s in self.steps})


def trace_events(trace_id: str) -> QuerySet[Event]:
    """The trace's events without their payloads, oldest first (the B-tree on trace_id)."""
    return (
        Event.objects.filter(trace_id=trace_id)
        .select_related("stream")
        .defer("payload")
        .order_by("ts", "id")
    )


def count_events(trace_id: str, cap: int = MAX_COUNTED) -> int:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM flowscope_event WHERE trace_id = %s LIMIT %s) t",
            [trace_id, cap],
        )
        return int(cur.fetchone()[0])


def dead_letters_of(trace_id: str, events: Sequence[Event]) -> list[DeadLetter]:
    """The trace's dead letters, oldest death first: those whose traceparent names it (the
    index of migration 0015), and those of its events' (stream, sequence) whose headers do not
    name another trace (a `Traceparent` spelt otherwise, or headers gone with the payload) and
    whose stream incarnation is the event's. Two queries, each served by an index."""
    # a constant expression, no parameters: nothing from the request reaches the SQL text
    indexed = RawSQL(DEAD_LETTER_TRACE, [])  # noqa: S611
    limit = MAX_DEAD_LETTERS
    by_header = DeadLetter.objects.alias(tid=indexed).filter(tid=trace_id)
    found: dict[int, DeadLetter] = {
        d.id: d for d in DeadLetter.objects.filter(pk__in=by_header.values("pk"))
        .order_by("died_at", "id")[:limit]
    }  # fmt: skip
    seqs: dict[str, list[int]] = {}
    incarnations: dict[tuple[str, int], int] = {}
    for e in events:
        if e.seq is not None:
            seqs.setdefault(e.stream.name, []).append(e.seq)
            incarnations[(e.stream.name, e.seq)] = e.stream_id
    wanted = Q()
    for name, numbers in seqs.items():
        wanted |= Q(stream_name=name, seq__in=numbers)
        wanted |= Q(origin_stream=name, origin_seq__in=numbers)
    if seqs:
        for d in DeadLetter.objects.filter(wanted).order_by("died_at", "id")[:limit]:
            named = _dead_letter_trace(d)
            same = d.stream_id is None or incarnations.get((d.stream_name, d.seq)) in (
                None, d.stream_id)  # fmt: skip
            if (named is None and same) or named == trace_id:
                found.setdefault(d.id, d)
    return sorted(found.values(), key=lambda d: (d.died_at, d.id))[:limit]


def _dead_letter_trace(d: DeadLetter) -> str | None:
    got = parse_traceparent(header(d.headers, "traceparent"))
    return got[0] if got else None


Owners = dict[int, list[tuple[str, list[str]]]]


def consumer_owners(streams: Iterable[Stream], services: set[str]) -> Owners:
    """Per stream incarnation id: (owning service, filter subjects) of its consumers whose
    service is known: by the demo's naming, or a consumer named after a service of the trace."""
    by_id = {s.id: s for s in streams}
    owners: Owners = {}
    for c in Consumer.objects.filter(stream_id__in=list(by_id)).only("stream_id", "name", "config"):
        owner = demo_service(by_id[c.stream_id].name, c.name)
        if owner is None and c.name in services:
            owner = c.name
        if owner is None:
            continue
        config = c.config or {}
        filters = list(config.get("filter_subjects") or [])
        if config.get("filter_subject"):
            filters.append(config["filter_subject"])
        owners.setdefault(c.stream_id, []).append((owner, filters))
    return owners


def build_steps(
    events: Sequence[Event], before: Sequence[Event] = (), origin: datetime | None = None
) -> list[Step]:
    """Steps of `events` (oldest first), their parents found among `before` (earlier events of
    the trace, oldest first) and themselves. Offsets from `origin` (default: the first)."""
    every = [*before, *events]
    if not every:
        return []
    origin = origin or every[0].ts
    steps = [
        Step(e, i + 1, (e.ts - origin).total_seconds() * 1000, replay_of(e.headers))
        for i, e in enumerate(every)
    ]
    services = {e.service for e in every if e.service}
    owners = consumer_owners({e.stream for e in every}, services)
    by_position = {(s.event.stream.name, s.event.seq): s for s in steps if s.event.seq is not None}
    consumed: dict[str, Step] = {}  # service -> the latest step so far that it consumed
    for step in steps:
        if step.replay is not None:
            step.replayed_by = header(step.event.headers, REPLAYED_BY) or ""
            original = by_position.get((step.replay.stream, step.replay.seq))
            if original is not None and original is not step:
                step.parent, step.parent_how = original, "replay"
        if step.parent is None and step.event.service in consumed:
            step.parent, step.parent_how = consumed[step.event.service], "consumed"
        e = step.event
        for owner, filters in owners.get(e.stream_id, ()):
            if not filters or any(subject_matches(f, e.subject) for f in filters):
                consumed[owner] = step
    return steps[len(before) :]


def summarize(
    steps: Sequence[Step], dead: Sequence[DeadLetter]
) -> tuple[list[ServiceSummary], list[Edge]]:
    services: dict[str, ServiceSummary] = {}
    for s in steps:
        if s.service not in services:
            services[s.service] = ServiceSummary(s.service, 0, s.offset_ms)
        services[s.service].events += 1
    edges: dict[tuple[str, str, str], Edge] = {}
    for s in steps:
        if s.parent is None:
            continue
        key = (s.parent.service, s.service, s.parent_how)
        edge = edges.setdefault(key, Edge(key[0], key[1], [], 0, s.parent_how))
        edge.count += 1
        if s.parent.event.stream.name not in edge.streams:
            edge.streams.append(s.parent.event.stream.name)
    # each dead letter beside its event; counted against the service whose consumer gave up on
    # it, when that consumer's service is known
    at = {(st.event.stream.name, st.event.seq): st for st in steps}
    for d in dead:
        step = at.get((d.stream_name, d.seq)) or at.get((d.origin_stream, d.origin_seq))
        if step is not None:
            step.dead_letters.append(d)
        owner = demo_service(d.stream_name, d.consumer) or d.consumer
        if owner in services:
            services[owner].dead_letters += 1
    return list(services.values()), list(edges.values())


def load_journey(trace_id: str, limit: int | None = None) -> Journey | None:
    """The journey of a trace id (already parsed), or None when no event of it is stored; at
    most `limit` (MAX_EVENTS) events of it."""
    limit = limit or MAX_EVENTS
    events = list(trace_events(trace_id)[: limit + 1])
    if not events:
        return None
    shown = events[:limit]
    total = len(events) if len(events) <= limit else count_events(trace_id)
    steps = build_steps(shown)
    dead = dead_letters_of(trace_id, shown)
    services, edges = summarize(steps, dead)
    return Journey(trace_id, steps, total, total >= MAX_COUNTED, dead, services, edges)


def graph_elements(journey: Journey) -> dict[str, list[dict[str, Any]]]:
    """The services graph as Cytoscape elements (for #trace-graph-data)."""
    nodes = [
        {"data": {"id": f"svc:{svc.name}", "label": f"{svc.name} · {svc.events}",
                  "kind": "service", "health": "bad" if svc.dead_letters else "ok",
                  "order": i}}
        for i, svc in enumerate(journey.services)
    ]  # fmt: skip
    edges = [
        {"data": {"id": f"edge:{e.source}>{e.target}:{e.how}", "source": f"svc:{e.source}",
                  "target": f"svc:{e.target}", "how": e.how,
                  "label": ("replayed" if e.how == "replay" else ", ".join(e.streams))
                  + (f" \N{MULTIPLICATION SIGN}{e.count}" if e.count > 1 else "")}}
        for e in journey.edges
    ]  # fmt: skip
    return {"nodes": nodes, "edges": edges}
