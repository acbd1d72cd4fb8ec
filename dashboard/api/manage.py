"""Managing streams and consumers over the API (issue #14): admins only.

The operations join the streams router (dashboard/api/streams.py), beside the reads of the same
paths: `POST /api/streams`, `PATCH` and `DELETE /api/streams/<name>`, `POST .../purge`,
`DELETE .../messages/<seq>`, and the same for `.../consumers[/<consumer>]` with `pause` and
`resume`. Bodies are JetStream's own configuration keys (durations in nanoseconds, -1 for no
limit). Each change goes through dashboard/jetstream.py, so it is audited like the web's.

Answers: 400 `{"detail": [{"field", "message"}]}` for what we or the server refuse (the field a
refusal concerns, "" for the request as a whole), 401 anonymous, 403 a role that may not, 404 no
such stream or consumer, 503 NATS unreachable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, NoReturn, TypeVar

from django.http import HttpRequest
from ninja import Field, Schema, Status
from ninja.errors import HttpError, ValidationError

from dashboard import jetstream
from dashboard.api.auth import need
from dashboard.api.schemas import ErrorOut
from dashboard.api.streams import router
from eventbus.admin import AdminError, NotFound, Unreachable

T = TypeVar("T")

CHANGE_ERRORS: dict[int, type[Schema]] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    503: ErrorOut,
}
NANOS = "nanoseconds"


class StreamLimits(Schema):
    retention: Literal["limits", "interest", "workqueue"] | None = None
    num_replicas: int | None = Field(None, description="1 to 5")
    max_age: int | None = Field(None, description=f"{NANOS}; 0: no limit")
    max_bytes: int | None = Field(None, description="-1: no limit")
    max_msgs: int | None = Field(None, description="-1: no limit")
    max_msg_size: int | None = Field(None, description="bytes; -1: no limit")
    max_msgs_per_subject: int | None = Field(None, description="-1: no limit")
    discard: Literal["old", "new"] | None = None
    duplicate_window: int | None = Field(None, description=NANOS)
    allow_direct: bool | None = None
    description: str | None = None


class StreamIn(StreamLimits):
    name: str = Field(description="no spaces, dots, * or >; at most 255 characters")
    subjects: list[str] = Field(description="at most 1,000")
    storage: Literal["file", "memory"] | None = None


class StreamPatch(StreamLimits):
    subjects: list[str] | None = None


class StreamConfigOut(Schema):
    config: dict[str, Any] = Field(description="the configuration the server holds now")


class PurgeIn(Schema):
    subject: str | None = Field(None, description="only this subject's messages (wildcards ok)")
    keep: int | None = Field(None, description="keep the newest N")
    seq: int | None = Field(None, description="purge up to, not including, this sequence")


class PurgeOut(Schema):
    purged: int


class ConsumerSettings(Schema):
    description: str | None = None
    filter_subjects: list[str] | None = None
    ack_wait: int | None = Field(None, description=NANOS)
    max_deliver: int | None = Field(None, description="-1: no limit")
    max_ack_pending: int | None = None
    replay_policy: Literal["instant", "original"] | None = None


class ConsumerIn(ConsumerSettings):
    name: str = Field(description="the durable name")
    deliver_policy: (
        Literal["all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject"]
        | None
    ) = None
    opt_start_seq: int | None = None
    ack_policy: Literal["explicit", "all", "none"] | None = None


class PauseIn(Schema):
    until: datetime = Field(description="ISO 8601 with an offset, in the future")


class PauseOut(Schema):
    paused: bool
    pause_until: str | None = None


def _refused(error: AdminError) -> NoReturn:
    """An AdminError as the API's answer."""
    if isinstance(error, NotFound):
        raise HttpError(404, str(error))
    if isinstance(error, Unreachable):
        raise HttpError(503, str(error))
    raise ValidationError(
        [{"loc": ("body", f or ""), "msg": m, "type": "value_error"} for f, m in error.errors]
    )


def _managed(request: HttpRequest, change: Callable[[], T]) -> T:
    """Ask the role check, make the change (dashboard/jetstream.py audits it), answer the
    server's refusal as the API's."""
    need(request, "manage")
    try:
        return change()
    except AdminError as exc:
        _refused(exc)


def _given(payload: Schema) -> dict[str, Any]:
    return payload.model_dump(exclude_none=True)


@router.post("", response={201: StreamConfigOut, **CHANGE_ERRORS}, summary="Create a stream")
def create_stream(request: HttpRequest, payload: StreamIn) -> Status[dict[str, Any]]:
    return _managed(
        request, lambda: Status(201, {"config": jetstream.create_stream(request, _given(payload))})
    )


@router.patch(
    "/{name}",
    response={200: StreamConfigOut, **CHANGE_ERRORS},
    summary="Change a stream's configuration",
)
def update_stream(request: HttpRequest, name: str, payload: StreamPatch) -> dict[str, Any]:
    """The keys given replace the server's; name and storage cannot change."""
    return _managed(
        request, lambda: {"config": jetstream.update_stream(request, name, _given(payload))}
    )


@router.delete("/{name}", response={204: None, **CHANGE_ERRORS}, summary="Delete a stream")
def delete_stream(request: HttpRequest, name: str) -> Status[None]:
    _managed(request, lambda: jetstream.delete_stream(request, name))
    return Status(204, None)


@router.post(
    "/{name}/purge",
    response={200: PurgeOut, **CHANGE_ERRORS},
    summary="Purge a stream: all, one subject, keep the newest N, or up to a sequence",
)
def purge_stream(request: HttpRequest, name: str, payload: PurgeIn) -> dict[str, Any]:
    purged = _managed(
        request,
        lambda: jetstream.purge_stream(request, name, payload.subject, payload.keep, payload.seq),
    )
    return {"purged": purged}


@router.delete(
    "/{name}/messages/{seq}",
    response={204: None, **CHANGE_ERRORS},
    summary="Delete one message by sequence",
)
def delete_message(request: HttpRequest, name: str, seq: int) -> Status[None]:
    _managed(request, lambda: jetstream.delete_message(request, name, seq))
    return Status(204, None)


def _consumer_config(payload: ConsumerIn) -> dict[str, Any]:
    config = _given(payload)
    config["durable_name"] = config.pop("name")
    return config


@router.post(
    "/{name}/consumers",
    response={201: StreamConfigOut, **CHANGE_ERRORS},
    summary="Create a durable pull consumer",
)
def create_consumer(request: HttpRequest, name: str, payload: ConsumerIn) -> Status[dict[str, Any]]:
    return _managed(
        request,
        lambda: Status(
            201, {"config": jetstream.create_consumer(request, name, _consumer_config(payload))}
        ),
    )


@router.patch(
    "/{name}/consumers/{consumer}",
    response={200: StreamConfigOut, **CHANGE_ERRORS},
    summary="Change a consumer's configuration",
)
def update_consumer(
    request: HttpRequest, name: str, consumer: str, payload: ConsumerSettings
) -> dict[str, Any]:
    return _managed(
        request,
        lambda: {"config": jetstream.update_consumer(request, name, consumer, _given(payload))},
    )


@router.delete(
    "/{name}/consumers/{consumer}",
    response={204: None, **CHANGE_ERRORS},
    summary="Delete a consumer",
)
def delete_consumer(request: HttpRequest, name: str, consumer: str) -> Status[None]:
    _managed(request, lambda: jetstream.delete_consumer(request, name, consumer))
    return Status(204, None)


@router.post(
    "/{name}/consumers/{consumer}/pause",
    response={200: PauseOut, **CHANGE_ERRORS},
    summary="Pause a consumer until a time",
)
def pause_consumer(
    request: HttpRequest, name: str, consumer: str, payload: PauseIn
) -> dict[str, Any]:
    return _managed(
        request, lambda: jetstream.pause_consumer(request, name, consumer, payload.until)
    )


@router.post(
    "/{name}/consumers/{consumer}/resume",
    response={200: PauseOut, **CHANGE_ERRORS},
    summary="Resume a paused consumer",
)
def resume_consumer(request: HttpRequest, name: str, consumer: str) -> dict[str, Any]:
    return _managed(request, lambda: jetstream.resume_consumer(request, name, consumer))
