"""Replaying and discarding dead letters over the API (issue #15): operators and admins.

`POST /api/dead-letters/<id>/replay` and `POST /api/dead-letters/discard` join the dead-letters
router (dashboard/api/deadletters.py) beside its reads; `POST /api/replays` (a bulk job from ids
or a filter, or its dry run), `GET /api/replays[/<id>[/items]]` and
`POST /api/replays/<id>/cancel` are the replays router. Everything acts through
dashboard/replays.py, so it is idempotent and audited as the web's buttons are.

Answers: 400 `{"detail": [{"field", "message"}]}` for what cannot be done as asked, 401
anonymous, 403 a viewer, 404 no such dead letter or job."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from dashboard import replays
from dashboard.api.auth import need
from dashboard.api.deadletters import router as deadletters_router
from dashboard.api.errors import bad_request
from dashboard.api.paging import Keyset, PageParams
from dashboard.api.schemas import ErrorOut
from dashboard.models import DeadLetter, ReplayItem, ReplayJob
from dashboard.search.filters import FilterError

router = Router(tags=["replays"])
ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}
BIG = 2**63


class DeadLetterFilter(Schema):
    stream: str | None = None
    consumer: str | None = None
    subject: str | None = Field(None, description="a subject or wildcard: orders.*.created")
    reason: str | None = Field(None, description="max_deliveries, terminated or dlq_stream")
    status: str | None = Field(None, description="new, replayed or discarded")
    since: str | None = Field(None, description="died at or after, ISO 8601")
    until: str | None = Field(None, description="died before, ISO 8601")


class ReplayOptions(Schema):
    subject: str | None = Field(None, description="send to this subject; default: the original's")
    mode: Literal["copy", "move"] = Field(
        "copy", description="move: delete the original from its stream once the copy is stored"
    )
    again: bool = Field(
        False,
        description="also dead letters already replayed or discarded (a new attempt, so a new "
        "Nats-Msg-Id); without it those are left out, and a retried request sends nothing twice",
    )


class ReplayIn(ReplayOptions):
    ids: list[int] | None = Field(None, description="these dead letters (or give a filter)")
    filter: DeadLetterFilter | None = Field(None, description="every dead letter it matches")
    dry_run: bool = Field(False, description="say how many go where; send nothing")
    rate: float | None = Field(None, description="messages a second, 1 to 10,000; none: no limit")


class DiscardIn(Schema):
    ids: list[int] | None = None
    filter: DeadLetterFilter | None = None
    reason: str = Field(description="why they need no replay (on the record)")


class DiscardOut(Schema):
    discarded: int


class DestinationOut(Schema):
    subject: str
    count: int
    stream: str | None = Field(description="the stream that captures it; null: none (would fail)")


class DryRunOut(Schema):
    total: int
    destinations: list[DestinationOut]
    more: int = Field(description="going to destinations not listed")
    skipped: int = Field(description="selected but not new, left out (pass again to include)")
    error: str


class ItemOut(Schema):
    dead_letter: int
    position: int
    msg_id: str
    subject: str
    state: str = Field(description="pending, published, failed or cancelled")
    stream: str | None = Field(description="the publish acknowledgement's stream")
    seq: int | None = Field(description="the publish acknowledgement's sequence")
    duplicate: bool = Field(description="the stream had it already (a retry): one copy")
    deleted_original: bool | None
    error: str
    ended_at: datetime | None


class JobOut(Schema):
    id: int
    state: str = Field(description="pending, running, done or cancelled")
    mode: str
    subject: str | None
    rate: float | None
    total: int
    published: int
    failed: int
    cancel_requested: bool
    resumed: int = Field(description="times another worker took it over")
    user: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[ItemOut] = Field(description="the first 100 (all: GET /api/replays/<id>/items)")


class JobListOut(Schema):
    items: list[JobOut]
    next: str | None


class ItemPageOut(Schema):
    items: list[ItemOut]
    next: str | None


def item_out(i: ReplayItem) -> dict[str, Any]:
    return {
        "dead_letter": i.dead_letter_id, "position": i.position, "msg_id": i.msg_id,
        "subject": i.subject, "state": i.state, "stream": i.result_stream or None,
        "seq": i.result_seq, "duplicate": i.duplicate, "deleted_original": i.deleted_original,
        "error": i.error, "ended_at": i.ended_at,
    }  # fmt: skip


def job_out(j: ReplayJob, results: int = 100) -> dict[str, Any]:
    items = j.items.order_by("position")[:results] if results else []
    return {
        "id": j.pk, "state": j.state, "mode": j.mode, "subject": j.subject or None,
        "rate": j.rate, "total": j.total, "published": j.published, "failed": j.failed,
        "cancel_requested": j.cancel_requested, "resumed": j.resumed, "user": j.username,
        "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "results": [item_out(i) for i in items],
    }  # fmt: skip


def _selection(
    ids: list[int] | None, flt: DeadLetterFilter | None, again: bool
) -> tuple[QuerySet[DeadLetter], int, dict[str, Any]]:
    if (ids is None) == (flt is None):
        bad_request("ids", "give either ids or a filter")
    params = {k: v for k, v in (flt.dict() if flt else {}).items() if v not in (None, "")}
    chosen: dict[str, Any] = {"ids": ids} if ids is not None else {"filter": params}
    try:
        if ids is not None and any(not 0 < i < BIG for i in ids):
            raise FilterError("ids", "dead letter ids are positive integers")
        rows, skipped = replays.selection(ids=ids, params=None if ids is not None else params,
                                          again=again)  # fmt: skip
    except FilterError as exc:
        bad_request(exc.field, exc.message)
    return rows, skipped, chosen


def _job(job_id: int) -> ReplayJob:
    job = ReplayJob.objects.filter(pk=job_id).first() if 0 < job_id < BIG else None
    if job is None:
        raise HttpError(404, f"no replay job {job_id}")
    return job


@deadletters_router.post(
    "/discard",
    response={200: DiscardOut, **ERRORS},
    summary="Discard dead letters (mark them resolved) with a reason",
)
def discard_dead_letters(request: HttpRequest, payload: DiscardIn) -> dict[str, Any]:
    need(request, "discard")
    rows, _, _ = _selection(payload.ids, payload.filter, again=True)
    try:
        return {"discarded": replays.discard(request, rows, payload.reason)}
    except FilterError as exc:
        bad_request(exc.field, exc.message)


@deadletters_router.post("/{int:letter_id}/replay", response={200: JobOut, **ERRORS},
                         summary="Replay one dead letter now")  # fmt: skip
def replay_dead_letter(request: HttpRequest, letter_id: int, payload: ReplayOptions) -> Any:
    need(request, "replay")
    d = DeadLetter.objects.filter(pk=letter_id).first() if 0 < letter_id < BIG else None
    if d is None:
        raise HttpError(404, f"no dead letter {letter_id} is stored")
    try:
        opts = replays.options(payload.subject, payload.mode, None, payload.again)
        return job_out(replays.replay_one(request, d, opts))
    except FilterError as exc:
        bad_request(exc.field, exc.message)


@router.post(
    "",
    response={200: DryRunOut, 202: JobOut, **ERRORS},
    summary="Replay dead letters (ids or a filter) as a job, or its dry run",
)
def create_replay(request: HttpRequest, payload: ReplayIn) -> Any:
    need(request, "replay")
    rows, skipped, chosen = _selection(payload.ids, payload.filter, payload.again)
    try:
        opts = replays.options(payload.subject, payload.mode, payload.rate, payload.again)
        if payload.dry_run:
            return replays.dry_run(rows, opts, skipped)
        return Status(202, job_out(replays.start(request, rows, opts, chosen)))
    except FilterError as exc:
        bad_request(exc.field, exc.message)


@router.get("", response={200: JobListOut, **ERRORS}, summary="Replay jobs, newest first")
def list_replays(request: HttpRequest, params: Query[PageParams]) -> Any:
    need(request, "browse")
    items, nxt = Keyset("replays", ("-id", int)).page(ReplayJob.objects.all(), params)
    return {"items": [job_out(j, results=0) for j in items], "next": nxt}


@router.get(
    "/{int:job_id}", response={200: JobOut, **ERRORS}, summary="A replay job and its progress"
)
def get_replay(request: HttpRequest, job_id: int) -> Any:
    need(request, "browse")
    return job_out(_job(job_id))


@router.get("/{int:job_id}/items", response={200: ItemPageOut, **ERRORS},
            summary="A replay job's result per dead letter, in order")  # fmt: skip
def replay_items(request: HttpRequest, job_id: int, params: Query[PageParams]) -> Any:
    need(request, "browse")
    items, nxt = Keyset("replay-items", ("position", int)).page(_job(job_id).items.all(), params)
    return {"items": [item_out(i) for i in items], "next": nxt}


@router.post("/{int:job_id}/cancel", response={200: JobOut, **ERRORS},
             summary="Cancel a replay job (it stops after the batch in flight)")  # fmt: skip
def cancel_replay(request: HttpRequest, job_id: int) -> Any:
    need(request, "replay")
    return job_out(replays.cancel(request, _job(job_id)))
