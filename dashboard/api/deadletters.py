"""`GET /api/dead-letters` and `GET /api/dead-letters/<id>` (issue #15): dead letters as
/dead-letters/ filters and shows them (dashboard/deadletters.py). Read-only for now."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from dashboard.api.auth import need
from dashboard.api.errors import bad_request
from dashboard.api.paging import PageParams
from dashboard.api.schemas import ErrorOut
from dashboard.deadletters import as_detail, as_item, dead_letters
from dashboard.models import DeadLetter
from dashboard.search.filters import FilterError

router = Router(tags=["dead letters"])


class DeadLetterQuery(PageParams):
    stream: str | None = Field(None, description="stream name")
    consumer: str | None = Field(None, description="consumer name")
    subject: str | None = Field(None, description="a subject or wildcard: orders.*.created")
    reason: str | None = Field(None, description="max_deliveries, terminated or dlq_stream")
    status: str | None = Field(None, description="new, replayed or discarded")
    since: str | None = Field(None, description="died at or after, ISO 8601")
    until: str | None = Field(None, description="died before, ISO 8601")


class DeadLetterOut(Schema):
    id: int
    stream: str
    seq: int
    consumer: str = Field(description='"" for a message of a dead-letter stream')
    reason: str
    deliveries: int
    subject: str
    status: str
    died_at: datetime


class NakOut(Schema):
    deliveries: int = Field(description="the delivery the consumer nak'ed (1 = the first)")
    at: datetime = Field(description="when, as the server's advisory says")


class DeadLetterDetailOut(DeadLetterOut):
    headers: dict[str, Any]
    payload: str = Field(description="base64 of the stored payload ('' when it is gone)")
    payload_source: str = Field(description="stream, recorded (the tap's copy) or gone")
    truncated: bool
    terminate_reason: str
    status_note: str
    origin_stream: str | None
    origin_seq: int | None
    captured_at: datetime
    trace_id: str | None
    naks: list[NakOut] = Field(
        description="the naks the server reported for this (stream, seq, consumer) before it "
        "died, oldest first: the last 100 (see naks_total); [] when none were reported (the "
        "consumer let the ack wait expire, the tap was not running then, they are older than "
        "the tap's retention, or a dead-letter stream's message)"
    )
    naks_total: int = Field(description="how many naks were reported in all")


class DeadLetterPageOut(Schema):
    items: list[DeadLetterOut]
    next: str | None


@router.get("", response={200: DeadLetterPageOut, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut},
            summary="Dead letters, newest first")  # fmt: skip
def list_dead_letters(request: HttpRequest, params: Query[DeadLetterQuery]) -> dict[str, Any]:
    need(request, "browse")
    values = {k: v for k, v in params.dict().items() if v is not None and k != "limit"}
    try:
        page = dead_letters(values, params.limit)
    except FilterError as exc:
        bad_request(exc.field, exc.message)
    return {"items": [as_item(d) for d in page.items], "next": page.next}


@router.get("/{int:letter_id}",
            response={200: DeadLetterDetailOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
            summary="One dead letter, with its headers and payload")  # fmt: skip
def get_dead_letter(request: HttpRequest, letter_id: int) -> dict[str, Any]:
    need(request, "browse")
    d = DeadLetter.objects.filter(pk=letter_id).first() if 0 < letter_id < 2**63 else None
    if d is None:
        raise HttpError(404, f"no dead letter {letter_id} is stored")
    return as_detail(d)
