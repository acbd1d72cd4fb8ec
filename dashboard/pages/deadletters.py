"""/dead-letters/ and /dead-letters/<id>/ (issue #15): what consumers gave up on, filtered,
counted per stream and consumer, and one dead letter with its payload shown as the event page
shows one (dashboard/event_detail.py), with its replays and, for operators, the replay and
discard forms (they post to dashboard/pages/replays.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.deadletters import dead_letters, trace_id, waiting
from dashboard.event_detail import header_rows, payload_view
from dashboard.models import DeadLetter, Stream
from dashboard.pages.replays import DiscardForm, ReplayForm
from dashboard.roles import require
from dashboard.search.filters import FilterError


@require("browse")
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    error = None
    page = None
    counts = None
    try:
        page = dead_letters(request.GET)
        counts = waiting(request.GET)
    except FilterError as exc:
        error = exc
    params = request.GET.copy()
    params.pop("cursor", None)
    ctx = {"page": page, "counts": counts, "error": error, "form": request.GET,
           "reasons": DeadLetter.Reason.choices, "statuses": DeadLetter.Status.choices,
           "filter_qs": params.urlencode()}  # fmt: skip
    return render(request, "dashboard/deadletters.html", ctx, status=400 if error else 200)


@require("browse")
def dead_letter_detail(request: HttpRequest, letter_id: int) -> HttpResponse:
    d = DeadLetter.objects.filter(pk=letter_id).select_related("stream").first()
    if d is None:
        return render(request, "dashboard/deadletter.html", {"missing": letter_id}, status=404)
    payload = None
    active = ""
    if d.payload_source != DeadLetter.PayloadSource.GONE:
        data = bytes(d.payload)
        payload = payload_view(data, len(data), d.truncated)
        active = payload.active
        view = request.GET.get("view")
        if view in dict(payload.views):
            active = view
    ctx = {
        "d": d, "payload": payload, "active": active, "headers": header_rows(d.headers),
        "trace_id": trace_id(d),
        "stream_known": Stream.objects.filter(name=d.stream_name, deleted_at=None).exists(),
        "history": list(d.replays.select_related("job").order_by("-id")[:50]),
        "replay_form": ReplayForm(initial={"mode": "copy"}), "discard_form": DiscardForm(),
    }  # fmt: skip
    return render(request, "dashboard/deadletter.html", ctx)
