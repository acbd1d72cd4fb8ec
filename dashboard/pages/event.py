"""The event page (/events/<stream>/<seq>/, /events/<stream>/id/<id>/) and the full payload it
loads from the stream on request (/events/<stream>/<seq>/payload/, an htmx swap of the page's
payload region). What they show is built in dashboard/event_detail.py."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.event_detail import (
    EventDetail,
    PayloadView,
    PubCommand,
    fetch_full_payload,
    find_event,
    header_rows,
    is_live,
    load_event,
    nats_pub_command,
    payload_view,
    preview_note,
)
from dashboard.models import Event, Stream
from dashboard.roles import require

TEMPLATE = "dashboard/event.html"


def _page(
    request: HttpRequest, stream: str, detail: EventDetail | None, wanted: str
) -> HttpResponse:
    if detail is None:
        context = {"name": stream, "wanted": wanted,
                   "known_stream": Stream.objects.filter(name=stream).exists()}  # fmt: skip
        return render(request, "dashboard/event_missing.html", context, status=404)
    context = payload_context(detail.event, detail.payload, detail.pub, detail.preview_note,
                              detail.can_fetch)  # fmt: skip
    view = request.GET.get("view")
    if view in dict(detail.payload.views):  # the tab chosen (a link that works without script)
        context["active"] = view
    return render(request, TEMPLATE, {**context, "d": detail})


@require("browse")
def event_by_seq(request: HttpRequest, stream: str, seq: int) -> HttpResponse:
    return _page(request, stream, load_event(stream, seq=seq), f"sequence {seq}")


@require("browse")
def event_by_id(request: HttpRequest, stream: str, event_id: int) -> HttpResponse:
    return _page(request, stream, load_event(stream, event_id=event_id), f"event {event_id}")


@require("browse")
async def full_payload(request: HttpRequest, stream: str, seq: int) -> HttpResponse:
    """The whole payload from the stream, rendered as the page's payload region (the same
    partial), or that region with a message saying why it cannot be had."""
    event = await sync_to_async(find_event)(stream, seq=seq)
    if event is None:
        return HttpResponse(status=404)
    incarnation = event.stream
    if not await sync_to_async(is_live)(incarnation):
        data, message = (
            None,
            (
                "The stream was deleted or created again since this event was recorded: it no "
                "longer holds it. Only the stored preview is left."
            ),
        )
    else:
        got = await fetch_full_payload(event, incarnation)
        data, message = got.data, got.message
    headers = header_rows(event.headers)
    if data is None:  # the stored preview again, with the reason
        stored = bytes(event.payload)
        note = preview_note(len(stored), event.size) if event.truncated else ""
        context = payload_context(event, payload_view(stored, event.size, event.truncated),
                                  nats_pub_command(event.subject, headers, stored, event.truncated),
                                  note)  # fmt: skip
        context["fetch_message"] = message
    else:
        context = payload_context(event, payload_view(data),
                                  nats_pub_command(event.subject, headers, data))  # fmt: skip
        context["fetched"] = True
    return await sync_to_async(render)(request, f"{TEMPLATE}#payload", context)


def payload_context(event: Event, payload: PayloadView, pub: PubCommand,
                    note: str = "", can_fetch: bool = False) -> dict[str, Any]:  # fmt: skip
    """What the payload partial shows (the page and the full-payload swap both render it)."""
    return {"e": event, "payload": payload, "pub": pub, "preview_note": note,
            "can_fetch": can_fetch, "active": payload.active}  # fmt: skip
