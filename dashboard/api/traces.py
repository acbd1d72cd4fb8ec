"""`GET /api/traces/<trace_id>` (issue #16): a trace's stored events oldest first, as the journey
page shows them (dashboard/traces.py), paged like every list; beside them, the services the trace
crossed and its dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from dashboard.api.auth import need
from dashboard.api.deadletters import DeadLetterOut
from dashboard.api.errors import bad_request
from dashboard.api.paging import Keyset, PageParams
from dashboard.api.schemas import ErrorOut
from dashboard.deadletters import as_item
from dashboard.models import DeadLetter, Event
from dashboard.traces import (
    MAX_EVENTS,
    Journey,
    Step,
    TraceIdError,
    build_steps,
    load_journey,
    parse_trace_id,
    trace_events,
    tracing_url,
)

router = Router(tags=["traces"])
KEYSET = Keyset("trace", ("ts", datetime), ("id", int))


class ReplayOfOut(Schema):
    stream: str
    seq: int


class ParentOut(Schema):
    stream: str
    seq: int | None
    span_id: str | None
    service: str | None
    how: str = Field(
        description="replay: this event replays it; consumed: inferred, the latest earlier "
        "event of the trace that a consumer of this event's service takes"
    )


class TraceEventOut(Schema):
    id: int
    stream: str
    seq: int | None = Field(description="stream sequence; null when recorded without one")
    subject: str
    ts: datetime = Field(description="the stream's time of the message")
    offset_ms: float = Field(description="milliseconds after the trace's first stored event")
    size: int = Field(description="payload bytes")
    headers: dict[str, Any] | None
    msg_id: str | None
    trace_id: str
    span_id: str | None
    service: str | None
    replay_of: ReplayOfOut | None = Field(description="Flowscope-Replay-Of, when a replay")
    replayed_by: str | None = Field(description="Flowscope-Replayed-By, when a replay")
    parent: ParentOut | None = Field(description="the event this one follows, when known")
    dead_letters: list[int] = Field(description="ids of this event's dead letters")


class ServiceOut(Schema):
    name: str = Field(description='the service header; "(no service header)" without one')
    events: int
    first_offset_ms: float
    dead_letters: int = Field(description="dead letters of its consumers in this trace")


class EdgeOut(Schema):
    source: str
    target: str
    streams: list[str]
    count: int
    how: str = Field(description="consumed (inferred) or replay")


class TraceOut(Schema):
    trace_id: str
    items: list[TraceEventOut] = Field(description="the trace's events, oldest first")
    next: str | None = Field(description="pass back as `cursor` for the next page; null: no more")
    total: int = Field(description="events stored with this trace id (counted up to 100,000)")
    services: list[ServiceOut] = Field(
        description=f"services that published, from the trace's first {MAX_EVENTS:,} events"
    )
    edges: list[EdgeOut] = Field(description="which service followed which, as `parent` says")
    dead_letters: list[DeadLetterOut] = Field(description="the trace's dead letters")
    tracing_url: str | None = Field(description="the trace in the tracing UI "
                                    "(FLOWSCOPE_TRACE_URL), when configured")  # fmt: skip


def _item(step: Step) -> dict[str, Any]:
    e, parent = step.event, step.parent
    return {
        "id": e.id, "stream": e.stream.name, "seq": e.seq, "subject": e.subject, "ts": e.ts,
        "offset_ms": round(step.offset_ms, 3), "size": e.size, "headers": e.headers,
        "msg_id": e.msg_id, "trace_id": e.trace_id, "span_id": e.span_id, "service": e.service,
        "replay_of": step.replay, "replayed_by": step.replayed_by or None,
        "parent": None if parent is None else {
            "stream": parent.event.stream.name, "seq": parent.event.seq,
            "span_id": parent.event.span_id, "service": parent.event.service,
            "how": step.parent_how,
        },
        "dead_letters": [d.id for d in step.dead_letters],
    }  # fmt: skip


ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


@router.get("/{trace_id}", response={200: TraceOut, **ERRORS},
            summary="A trace's events, oldest first, its services and dead letters")  # fmt: skip
def get_trace(request: HttpRequest, trace_id: str, params: Query[PageParams]) -> dict[str, Any]:
    """Every stored event whose traceparent carries the trace id, across streams and services.
    `trace_id`: 32 hex digits (a whole traceparent works too). 404 when no event is stored."""
    need(request, "browse")
    try:
        parsed = parse_trace_id(trace_id)
    except TraceIdError as exc:
        bad_request("trace_id", str(exc))
    journey = load_journey(parsed)
    if journey is None:
        raise HttpError(404, f"no stored event carries trace id {parsed}")
    if params.cursor is None and params.limit >= len(journey.steps) == journey.total:
        steps = journey.steps  # the whole trace is one page: already built
        nxt = None
    else:
        events, nxt = KEYSET.page(trace_events(parsed), params)
        steps = _page_steps(parsed, events, journey)
    return {
        "trace_id": parsed, "items": [_item(s) for s in steps], "next": nxt,
        "total": journey.total, "services": journey.services, "edges": journey.edges,
        "dead_letters": [as_item(d) for d in journey.dead_letters],
        "tracing_url": tracing_url(parsed) or None,
    }  # fmt: skip


def _page_steps(trace_id: str, events: list[Event], journey: Journey) -> list[Step]:
    """A page's steps: parents looked for among up to MAX_EVENTS events before the page,
    offsets from the trace's first event, dead letters as the journey found them."""
    if not events:
        return []
    first = events[0]
    before = list(
        trace_events(trace_id)
        .filter(Q(ts__lt=first.ts) | Q(ts=first.ts, id__lt=first.id))
        .order_by("-ts", "-id")[:MAX_EVENTS]
    )[::-1]
    steps = build_steps(events, before, origin=journey.first_ts)
    dead: dict[tuple[str, int | None], list[DeadLetter]] = {}
    for d in journey.dead_letters:
        dead.setdefault((d.stream_name, d.seq), []).append(d)
        if d.origin_stream:
            dead.setdefault((d.origin_stream, d.origin_seq), []).append(d)
    for s in steps:
        s.dead_letters = dead.get((s.event.stream.name, s.event.seq), [])
    return steps
