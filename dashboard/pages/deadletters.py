"""/dead-letters/ and /dead-letters/<id>/ (issue #15): what consumers gave up on, filtered,
counted per stream and consumer, and one dead letter with its payload shown as the event page
shows one (dashboard/event_detail.py), with its replays and, for operators, the replay and
discard forms (they post to dashboard/pages/replays.py).

The list is live: the page watches the topic `deadletters:<its filter>`, which
`dead_letters_live_html` renders for the hub from the same partials as the page: the new ones
waiting per stream and consumer (swapped), and, hidden, the filter's newest rows and the status
of its newest `STATUS_WINDOW` dead letters, which static/js/deadletters.js merges into the table
(new rows inserted in order, status cells updated; rows and ticked boxes are never replaced)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode

from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.template.loader import render_to_string

from dashboard.deadletters import FIELDS, dead_letters, filtered, naks, trace_id, waiting
from dashboard.event_detail import header_rows, payload_view
from dashboard.models import DeadLetter, Stream
from dashboard.pages.replays import DiscardForm, ReplayForm
from dashboard.roles import require
from dashboard.search.filters import FilterError
from dashboard.search.query import micros

TEMPLATE = "dashboard/deadletters.html"
LIVE_ROWS = 50  # the filter's newest rows a push carries (new ones are among them)
STATUS_WINDOW = 500  # dead letters whose status a push carries (the newest of the filter)


def filter_query(params: Mapping[str, str]) -> str:
    """The filter part of a query string (no cursor), in a fixed order: one topic per filter."""
    return urlencode([(f, params[f]) for f in FIELDS if (params.get(f) or "").strip()])


def _keyed(rows: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Each row with its sort key "<died_at micros>.<id>" (the page orders new rows by it)."""
    out = list(rows)
    for d in out:
        setattr(d, "key", f"{micros(d.died_at)}.{d.id}")  # noqa: B010 - not a model field
    return out


@require("browse")
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    error = None
    page = None
    counts = None
    try:
        page = dead_letters(request.GET)
        counts = waiting(request.GET)
        _keyed(page.items)
    except FilterError as exc:
        error = exc
    params = request.GET.copy()
    params.pop("cursor", None)
    query = filter_query(request.GET)
    ctx = {"page": page, "counts": counts, "error": error, "form": request.GET,
           "reasons": DeadLetter.Reason.choices, "statuses": DeadLetter.Status.choices,
           "filter_qs": params.urlencode(), "first_page": not request.GET.get("cursor"),
           "topic": "deadletters:" + quote(query, safe=""),
           "filter_items": [(k, request.GET[k]) for k in FIELDS if request.GET.get(k)]}  # fmt: skip
    return render(request, TEMPLATE, ctx, status=400 if error else 200)


def status_window(params: Mapping[str, str]) -> dict[str, list[int]]:
    """Status -> ids, for the newest STATUS_WINDOW dead letters of the filter whatever status it
    asks for (a page of new ones learns which of its rows were replayed or discarded)."""
    rows = filtered({k: v for k, v in params.items() if k != "status"})
    found: dict[str, list[int]] = {}
    newest = rows.order_by("-died_at", "-id").values_list("id", "status")[:STATUS_WINDOW]
    for id_, status in newest:
        found.setdefault(status, []).append(id_)
    return found


def dead_letters_live_html(query: str) -> str | None:
    """The list's live partials for the filter `query` (a query string, percent-encoded once
    more in the topic), each root marked hx-swap-oob; None for a filter that cannot be used."""
    params = QueryDict(unquote(query))
    try:
        rows = _keyed(dead_letters(params, LIVE_ROWS).items)
        counts = waiting(params)
        statuses = status_window(params)
    except FilterError:
        return None
    ctx: dict[str, Any] = {"counts": counts, "form": params, "incoming": rows, "pick": True,
                           "limit": LIVE_ROWS, "oob": True,
                           "statuses": json.dumps(statuses, separators=(",", ":"))}  # fmt: skip
    return "".join(render_to_string(f"{TEMPLATE}#{name}", ctx) for name in ("waiting", "incoming"))


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
        "trace_id": trace_id(d), "naks": naks(d),
        "stream_known": Stream.objects.filter(name=d.stream_name, deleted_at=None).exists(),
        "history": list(d.replays.select_related("job").order_by("-id")[:50]),
        "replay_form": ReplayForm(initial={"mode": "copy"}), "discard_form": DiscardForm(),
    }  # fmt: skip
    return render(request, "dashboard/deadletter.html", ctx)
