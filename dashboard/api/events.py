"""`/api/events`: the stored events, searched with the event browser's filter (dashboard/search/),
and one event with its payload. The parameters are the page's (`/events/`), so a search can move
between the two."""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from dashboard.api.errors import bad_request
from dashboard.api.paging import PageParams
from dashboard.api.schemas import READ_ERRORS
from dashboard.event_detail import find_event
from dashboard.search import FilterError, Page, parse_filter, search_events
from dashboard.search.query import PREVIEW, preview_text

router = Router(tags=["events"])


class EventQuery(PageParams):
    """The event browser's filter; `limit` and `cursor` as every list takes them."""

    stream: str | None = Field(None, description="stream name")
    subject: str | None = Field(None, description="NATS subject; `*` one token, `>` the rest")
    since: str | None = Field(None, description="ISO 8601; UTC when it has no offset")
    until: str | None = Field(None, description="ISO 8601, exclusive")
    last: str | None = Field(None, description="a range back from now: 15m, 1h, 6h, 24h, 7d")
    service: str | None = None
    trace_id: str | None = Field(None, description="32 hex digits (W3C trace context)")
    msg_id: str | None = Field(None, description="Nats-Msg-Id")
    header: str | None = Field(None, description="Name=value")
    text: str | None = Field(None, description="the stored payload contains these bytes")
    json_field: str | None = Field(
        None, alias="json", description="path=value, path dotted from the root: order.id=42"
    )
    min_size: str | None = Field(None, description="bytes")
    max_size: str | None = Field(None, description="bytes")
    kind: str | None = Field(
        None,
        description="without `stream`: only streams (`stream`), KV buckets (`kv`) or object"
        " stores (`object`); `all` or absent: every stream",
    )


class EventOut(Schema):
    id: int
    stream: str
    seq: int | None = Field(description="stream sequence; null when recorded without one")
    subject: str
    ts: datetime = Field(description="the stream's time of the message")
    size: int = Field(description="payload bytes")
    headers: dict[str, Any] | None
    msg_id: str | None
    trace_id: str | None
    service: str | None
    truncated: bool = Field(description="only a preview of the payload is stored")
    preview: str | None = Field(description="the payload's start as text; null when binary")


class CoverageOut(Schema):
    oldest: datetime | None = Field(description="the oldest time searched")
    newest: datetime | None
    searched: int | None = Field(description="events looked at; null: not counted in time")
    stream: str = ""
    first_seq: int | None = None
    last_seq: int | None = None


class EventPageOut(Schema):
    items: list[EventOut]
    next: str | None = Field(description="pass back as `cursor`: the next page, or where an "
                             "unfinished search goes on (see coverage)")  # fmt: skip
    complete: bool = Field(description="false: the search stopped on its time budget")
    coverage: CoverageOut | None = Field(description="what an unfinished search did search")
    total: int | None = Field(description="the number of matches, when the search saw them all")
    plan: str = Field(description="how it searched: trace, msg_id, stream or time")


def page_out(page: Page) -> dict[str, Any]:
    return {
        "items": page.items,
        "next": page.next,
        "complete": page.complete,
        "coverage": page.coverage,
        "total": page.exact_total,
        "plan": page.plan,
    }


@router.get("", response={200: EventPageOut, **READ_ERRORS}, summary="Search the events")
def list_events(request: HttpRequest, params: Query[EventQuery]) -> dict[str, Any]:
    """Newest first. A filter no index serves is searched within a time budget: then `complete`
    is false, `coverage` says what was searched, and `next` goes on into older events."""
    values = {k: v for k, v in params.dict(by_alias=True).items() if v is not None}
    values.pop("limit", None)
    values.pop("cursor", None)
    try:
        f = parse_filter(values)
        page = search_events(f, params.limit, cursor=params.cursor)
    except FilterError as exc:
        bad_request(exc.field, exc.message)
    return page_out(page)


def payload_forms(data: bytes) -> dict[str, Any]:
    """The payload as base64 (byte-exact) and decoded: text when UTF-8, JSON when it parses."""
    import json

    out: dict[str, Any] = {"payload": base64.b64encode(data).decode(), "text": None, "json": None}
    try:
        out["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        return out
    with contextlib.suppress(ValueError, RecursionError):
        out["json"] = json.loads(out["text"])
    return out


class EventDetailOut(EventOut):
    payload: str = Field(description="the stored payload, base64 (byte-exact)")
    text: str | None = Field(description="the payload as text, when it is UTF-8")
    json_value: Any = Field(None, alias="json", description="the payload parsed, when it is JSON")
    recorded_at: datetime
    span_id: str | None


@router.get("/{stream}/{seq}", response={200: EventDetailOut, **READ_ERRORS},
            summary="One event, its payload in base64 and decoded", by_alias=True)  # fmt: skip
def get_event(request: HttpRequest, stream: str, seq: int) -> dict[str, Any]:
    """From the newest incarnation of the stream that holds the sequence. `truncated`: only the
    payload's first bytes are stored (the event page can fetch the rest from the stream)."""
    event = find_event(stream, seq=seq)
    if event is None:
        raise HttpError(404, f"no event {seq} of a stream '{stream[:80]}' is stored")
    data = bytes(event.payload)
    return {
        "id": event.id, "stream": event.stream.name, "seq": event.seq, "subject": event.subject,
        "ts": event.ts, "size": event.size, "headers": event.headers, "msg_id": event.msg_id,
        "trace_id": event.trace_id, "service": event.service, "truncated": event.truncated,
        "preview": preview_text(data[:PREVIEW]), "recorded_at": event.recorded_at,
        "span_id": event.span_id, **payload_forms(data),
    }  # fmt: skip
