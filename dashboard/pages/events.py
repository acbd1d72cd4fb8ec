"""The event browser (/events/): filters on top, the newest matching events below, keyset pages
("older"), an honest note when a search ran out of time, and a live tail of what arrives.

The filter lives in the URL (the same parameters as `GET /api/events`), so a search can be
shared and the back button works. The live tail rides on the live transport: the page watches
the topic `tail:<the filter's query string>`; `tail_live_html` renders it for the hub.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from django.conf import settings
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.template.loader import render_to_string

from dashboard.models import Stream
from dashboard.pages.overview import kind_of
from dashboard.roles import require
from dashboard.search import KINDS, RANGES, EventFilter, FilterError, parse_filter, search_events
from dashboard.search.query import from_micros, micros

TEMPLATE = "dashboard/events.html"
PAGE_SIZE = 50
TAIL_ROWS = 50  # rows a tail push carries (the page keeps up to 200: static/js/tail.js)
TAIL_NEW_MAX = 500  # new matches counted per render; more shows as "500+"


DEFAULT_KIND = "stream"  # a fresh page leaves out KV buckets' and object stores' writes


def _streams() -> list[tuple[str, list[str]]]:
    """The live streams' names for the stream menu, grouped: streams, KV buckets, object stores."""
    names = Stream.objects.filter(deleted_at__isnull=True).order_by("name").values_list("name")
    groups: dict[str, list[str]] = {"stream": [], "kv": [], "obj": []}
    for (name,) in names:
        groups[kind_of(name)[0]].append(name)
    titles = {"stream": "Streams", "kv": "KV buckets", "obj": "Object stores"}
    return [(titles[k], v) for k, v in groups.items() if v]


def _params(query: QueryDict) -> QueryDict:
    """The page's filter: the query as given, but a page opened with no filter at all searches
    the application streams only (`kind=all` in the form searches everything)."""
    if any(str(query.get(k, "")).strip() for k in query if k not in ("cursor", "live")):
        return query
    params = query.copy()
    params["kind"] = DEFAULT_KIND
    return params


@require("browse")
def events(request: HttpRequest) -> HttpResponse:
    error: FilterError | None = None
    page = None
    f = EventFilter()
    form = _params(request.GET)
    try:
        f = parse_filter(form)
        page = search_events(f, PAGE_SIZE, cursor=request.GET.get("cursor") or None)
    except FilterError as exc:
        error = exc
    ctx: dict[str, Any] = {
        "f": f,
        "form": form,
        "error": error,
        "page": page,
        "ranges": RANGES,
        "kinds": KINDS,
        "kind": (form.get("kind") or "").strip().lower(),
        # nothing but a kind asked for: say which, so an empty page points at the menu
        "only_kind": dict(KINDS).get(f.kind)
        if f.kind != "all" and f.but(kind="").is_empty()
        else "",
        "streams": _streams(),
        "first_page": not request.GET.get("cursor"),
        "filter_qs": f.query_string(),
        "tail_topic": "tail:" + quote(f.query_string(), safe=""),
        "live_rate": round(1 / settings.FLOWSCOPE_LIVE_INTERVAL, 1),
        "live": request.GET.get("live") == "1",
        "preview_kib": settings.FLOWSCOPE_PAYLOAD_PREVIEW_BYTES // 1024,
    }
    return render(request, TEMPLATE, ctx, status=400 if error else 200)


# -- the live tail --------------------------------------------------------------------------------


@dataclass
class _Tail:
    """A tail topic's state in this web process: where it has read up to, and what it saw."""

    started: datetime
    mark: tuple[int, int] | None = None  # (ts micros, id) of the newest event seen
    matched: int = 0  # matches that arrived since it started
    capped: bool = False  # a render saw more than TAIL_NEW_MAX new matches: `matched` is a floor
    rows: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TAIL_ROWS))
    lock: threading.Lock = field(default_factory=threading.Lock)


_tails: dict[str, _Tail] = {}
MAX_TAILS = 256  # filters tailed in this process; the oldest is forgotten beyond that


def _tail(text: str, now: datetime) -> _Tail:
    tail = _tails.get(text)
    if tail is None:
        if len(_tails) >= MAX_TAILS:
            _tails.pop(next(iter(_tails)))
        tail = _tails[text] = _Tail(started=now)
    return tail


def tail_live_html(query: str) -> str | None:
    """The tail of the filter `query` (a query string, percent-encoded once more in the topic):
    the newest matches and how many arrived since the tail started. A page merges the rows it
    has not shown yet and counts the rest as skipped (static/js/tail.js)."""
    text = unquote(query)
    try:
        f = parse_filter(QueryDict(text))
    except FilterError:
        return None
    now = datetime.now(UTC)
    tail = _tail(text, now)
    with tail.lock:
        since = from_micros(tail.mark[0]) if tail.mark else None
        window = f.but(
            since=max(since, f.since) if since and f.since else (since or f.since), last=""
        )
        if since is None and not f.since:
            window = f  # the first rendering: the newest matches there are, as `tail` shows
        try:
            page = search_events(window, TAIL_NEW_MAX if tail.mark else TAIL_ROWS, budget=0.5)
        except FilterError:
            return None
        fresh = [
            e for e in page.items if tail.mark is None or (micros(e["ts"]), e["id"]) > tail.mark
        ]
        if tail.mark is not None:
            tail.matched += len(fresh)
            tail.capped = tail.capped or page.next is not None
        if fresh:
            tail.mark = (micros(fresh[0]["ts"]), fresh[0]["id"])
        elif tail.mark is None:
            tail.mark = (micros(now), 0)
        for item in reversed(fresh[:TAIL_ROWS]):
            tail.rows.appendleft(item)
        return render_to_string(
            TEMPLATE + "#tail",
            {"tail": tail, "rows": list(tail.rows), "filter_qs": f.query_string(), "oob": True},
        )
