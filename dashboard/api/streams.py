"""`/api/streams`: streams, their consumers and a consumer's lag over time, as recorded by the tap.

The numbers are the ones the stream and consumer pages show, from the same functions
(dashboard/pages/): the server's state as last sampled, what the tap recorded, rates and lag
series from the lag sampler's tables."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db.models import Count, F, QuerySet, Sum
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from dashboard.api.errors import bad_request
from dashboard.api.paging import Keyset, Page, PageParams
from dashboard.api.schemas import READ_ERRORS
from dashboard.models import Checkpoint, Consumer, Stream, StreamSample
from dashboard.pages import charts
from dashboard.pages.overview import RATE_WINDOW, kind_of, recent_rate
from dashboard.pages.streams import live_consumer, live_stream, subject_rates

router = Router(tags=["streams"])

Kind = Literal["stream", "kv", "object"]
KINDS: dict[str, Kind] = {"stream": "stream", "kv": "kv", "obj": "object"}
DEFAULT_LAG_SPAN = timedelta(hours=1)
STREAMS = Keyset("streams", ("name", str), ("id", int))
CONSUMERS = Keyset("consumers", ("name", str))


class StreamOut(Schema):
    name: str
    kind: Kind = Field(description="kv: a KV bucket (KV_*), object: an object store (OBJ_*)")
    subjects: list[str]
    retention: str
    storage: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumer_count: int = Field(description="the applications' consumers (the tap's left out)")
    rate: float | None = Field(description="messages/s over the last minute; null: unknown")
    recorded: int = Field(description="events the tap recorded")
    dropped: int = Field(description="messages a subject subscription dropped")
    observed_by: str
    created: datetime
    state_at: datetime | None = Field(description="when the server last reported the state")


class SubjectRateOut(Schema):
    subject: str
    last_minute: int
    last_5_minutes: int
    per_second: float = Field(description="over the last minute")


class StreamDetailOut(StreamOut):
    config: dict[str, Any]
    observation_note: str
    recorded_seq: int = Field(description="the tap's checkpoint: last sequence recorded")
    gaps: int
    gap_missing: int = Field(description="sequences the tap could not record, in all gaps")
    subject_rates: list[SubjectRateOut] = Field(description="busiest first, at most 50")


class ConsumerOut(Schema):
    stream: str
    name: str
    lag: int = Field(description="pending + ack pending")
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    delivered_stream_seq: int
    ack_floor_stream_seq: int
    ack_floor_consumer_seq: int | None = Field(
        description="the ack floor in deliveries (consumer sequence); null: not sampled yet"
    )
    created: datetime | None
    last_seen: datetime


class ConsumerDetailOut(ConsumerOut):
    config: dict[str, Any]
    ack_rate: float | None = Field(
        description="acks/s over the last minute: the rise of ack_floor_consumer_seq; null: unknown"
    )


class LagPoint(Schema):
    t: datetime = Field(description="the newest sample in the bucket")
    lag: int = Field(description="the bucket's highest pending + ack pending")
    pending: int
    ack_pending: int


class LagOut(Schema):
    stream: str
    consumer: str
    since: datetime
    until: datetime
    bucket_seconds: int
    items: list[LagPoint]
    next: None = Field(None, description="always null: a range is one answer of <= 600 points")


class StreamFilter(PageParams):
    kind: Kind | None = Field(None, description="only streams, KV buckets or object stores")


class LagRange(Schema):
    since: datetime | None = Field(None, description="ISO 8601; default: an hour before until")
    until: datetime | None = Field(None, description="ISO 8601; default: now")


def _stream_or_404(name: str) -> Stream:
    stream = live_stream(name)
    if stream is None:
        gone = Stream.objects.filter(name=name).exists()
        raise HttpError(404, f"stream {name!r} {'was deleted' if gone else 'is not known'}")
    return stream


def _consumer_or_404(stream: Stream, name: str) -> Consumer:
    consumer = live_consumer(stream, name)
    if consumer is None:
        gone = stream.consumers.filter(name=name).exists()
        state = "was deleted" if gone else "is not known"
        raise HttpError(404, f"consumer {name!r} of stream {stream.name!r} {state}")
    return consumer


def _rates(ids: list[int], now: datetime) -> dict[int, float | None]:
    """Each stream's messages/s over the last minute of its samples (as the overview)."""
    points: dict[int, list[tuple[float, int]]] = defaultdict(list)
    since = now - timedelta(seconds=3 * RATE_WINDOW)
    for sid, ts, last in (
        StreamSample.objects.filter(stream_id__in=ids, ts__gte=since)
        .order_by("stream_id", "ts")
        .values_list("stream_id", "ts", "last_seq")
    ):
        points[sid].append((ts.timestamp(), last))
    return {sid: recent_rate(points.get(sid, [])) for sid in ids}


def _stream_out(
    stream: Stream, checkpoint: Checkpoint | None, rate: float | None
) -> dict[str, Any]:
    config = stream.config if isinstance(stream.config, dict) else {}
    return {
        "name": stream.name,
        "kind": KINDS[kind_of(stream.name)[0]],
        "subjects": [str(s) for s in stream.subjects or []],
        "retention": stream.retention,
        "storage": str(config.get("storage", "file")),
        "messages": stream.messages, "bytes": stream.bytes,
        "first_seq": stream.first_seq, "last_seq": stream.last_seq,
        "consumer_count": stream.consumer_count,
        "rate": rate,
        "recorded": checkpoint.recorded if checkpoint else 0,
        "dropped": checkpoint.dropped if checkpoint else 0,
        "observed_by": stream.observed_by,
        "created": stream.created,
        "state_at": stream.state_at,
    }  # fmt: skip


def _by_kind(streams: QuerySet[Stream], kind: Kind | None) -> QuerySet[Stream]:
    special = {"kv": r"^KV_.", "object": r"^OBJ_."}
    if kind == "stream":
        return streams.exclude(name__regex=special["kv"]).exclude(name__regex=special["object"])
    return streams.filter(name__regex=special[kind]) if kind else streams


@router.get("", response={200: Page[StreamOut], **READ_ERRORS}, summary="Every live stream")
def list_streams(request: HttpRequest, params: Query[StreamFilter]) -> dict[str, Any]:
    streams = _by_kind(Stream.objects.filter(deleted_at__isnull=True), params.kind)
    page, next_cursor = STREAMS.page(streams, params)
    ids = [s.id for s in page]
    checkpoints = {c.stream_id: c for c in Checkpoint.objects.filter(stream_id__in=ids)}
    rates = _rates(ids, timezone.now())
    items = [_stream_out(s, checkpoints.get(s.id), rates[s.id]) for s in page]
    return {"items": items, "next": next_cursor}


@router.get("/{name}", response={200: StreamDetailOut, **READ_ERRORS}, summary="One stream")
def get_stream(request: HttpRequest, name: str) -> dict[str, Any]:
    stream = _stream_or_404(name)
    now = timezone.now()
    checkpoint = Checkpoint.objects.filter(stream=stream).first()
    gaps = stream.gaps.aggregate(n=Count("id"), missing=Sum(F("last_seq") - F("first_seq") + 1))
    return {
        **_stream_out(stream, checkpoint, _rates([stream.id], now)[stream.id]),
        "config": stream.config if isinstance(stream.config, dict) else {},
        "observation_note": stream.observation_note,
        "recorded_seq": checkpoint.last_seq if checkpoint else 0,
        "gaps": gaps["n"] or 0,
        "gap_missing": gaps["missing"] or 0,
        "subject_rates": [
            {"subject": r.subject, "last_minute": r.last_minute,
             "last_5_minutes": r.last_5_minutes, "per_second": r.per_second_1m}
            for r in subject_rates(stream, now)
        ],
    }  # fmt: skip


def _consumer_out(stream: Stream, c: Consumer) -> dict[str, Any]:
    return {
        "stream": stream.name, "name": c.name, "lag": c.lag,
        "num_pending": c.num_pending, "num_ack_pending": c.num_ack_pending,
        "num_redelivered": c.num_redelivered, "num_waiting": c.num_waiting,
        "delivered_stream_seq": c.delivered_stream_seq,
        "ack_floor_stream_seq": c.ack_floor_stream_seq,
        "ack_floor_consumer_seq": c.ack_floor_consumer_seq,
        "created": c.created, "last_seen": c.last_seen,
    }  # fmt: skip


@router.get("/{name}/consumers", response={200: Page[ConsumerOut], **READ_ERRORS},
            summary="A stream's consumers")  # fmt: skip
def list_consumers(request: HttpRequest, name: str, params: Query[PageParams]) -> dict[str, Any]:
    stream = _stream_or_404(name)
    consumers = stream.consumers.filter(deleted_at__isnull=True)
    page, next_cursor = CONSUMERS.page(consumers, params)
    return {"items": [_consumer_out(stream, c) for c in page], "next": next_cursor}


@router.get("/{name}/consumers/{consumer}", response={200: ConsumerDetailOut, **READ_ERRORS},
            summary="One consumer")  # fmt: skip
def get_consumer(request: HttpRequest, name: str, consumer: str) -> dict[str, Any]:
    stream = _stream_or_404(name)
    found = _consumer_or_404(stream, consumer)
    return {
        **_consumer_out(stream, found),
        "config": found.config if isinstance(found.config, dict) else {},
        "ack_rate": charts.recent_ack_rate(stream.id, found.name, timezone.now()),
    }


def _aware(value: datetime | None) -> datetime | None:
    """In UTC; a time without an offset is taken as UTC. (An offset PostgreSQL cannot hold,
    such as -21:14, which Python accepts, is gone once the time is in UTC.)"""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # a time at the very end of what a datetime holds: that end, in UTC
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def lag_range(since: datetime | None, until: datetime | None, now: datetime
              ) -> tuple[datetime, datetime]:  # fmt: skip
    """(since, until) with their defaults (the hour before until; now); 400 if since is not
    before until."""
    end = _aware(until) or now
    try:
        start = _aware(since) or end - DEFAULT_LAG_SPAN
    except OverflowError:
        bad_request("until", "too early to take the hour before it: give since as well")
    if start >= end:
        bad_request("since", "since must be before until")
    return start, end


@router.get("/{name}/consumers/{consumer}/lag", response={200: LagOut, **READ_ERRORS},
            summary="A consumer's lag over time")  # fmt: skip
def consumer_lag(request: HttpRequest, name: str, consumer: str,
                 span: Query[LagRange]) -> dict[str, Any]:  # fmt: skip
    """At most 600 points, each the highest lag of its bucket (bucket_seconds wide): samples
    taken every few seconds for the last day, one a minute (downsampled) before that."""
    stream = _stream_or_404(name)
    found = _consumer_or_404(stream, consumer)
    start, end = lag_range(span.since, span.until, timezone.now())
    select = "max(num_pending + num_ack_pending), max(num_pending), max(num_ack_pending)"
    rows = charts.bucketed(select, stream.id, [found.name], start, end)
    items = [
        {"t": datetime.fromtimestamp(last, UTC), "lag": lag, "pending": p, "ack_pending": a}
        for _name, _bucket, last, lag, p, a in rows
    ]
    return {
        "stream": stream.name, "consumer": found.name, "since": start, "until": end,
        "bucket_seconds": charts.span_bucket_seconds(end - start), "items": items, "next": None,
    }  # fmt: skip
