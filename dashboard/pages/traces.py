"""/traces/ (a box taking a trace id) and /traces/<trace_id>/ (issue #16): one trace's stored
events as a waterfall on a time axis, its dead letters and replays marked, and the services it
crossed as a small graph. What they show is built in dashboard/traces.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from dashboard.models import Event
from dashboard.pages.topology import script_json
from dashboard.roles import require
from dashboard.templatetags.traces import duration_ms
from dashboard.traces import (
    Journey,
    TraceIdError,
    graph_elements,
    load_journey,
    parse_trace_id,
    tracing_url,
)

TEMPLATE = "dashboard/trace.html"
TICKS = (0, 25, 50, 75, 100)  # per cent of the journey's duration, labelled on the time axis


@require("browse")
def trace_search(request: HttpRequest) -> HttpResponse:
    """The search box's target: a trace id (or a traceparent) goes to its journey."""
    typed = request.GET.get("trace_id", "")
    if not typed.strip():
        return render(request, TEMPLATE, {"typed": ""})
    try:
        trace_id = parse_trace_id(typed)
    except TraceIdError as exc:
        return render(request, TEMPLATE, {"typed": typed, "error": str(exc)}, status=400)
    return redirect("trace", trace_id=trace_id)


@require("browse")
def trace_detail(request: HttpRequest, trace_id: str) -> HttpResponse:
    try:
        parsed = parse_trace_id(trace_id)
    except TraceIdError as exc:
        return render(request, TEMPLATE, {"typed": trace_id, "error": str(exc)}, status=400)
    if parsed != trace_id:  # upper case, a traceparent: the canonical address
        return redirect("trace", trace_id=parsed)
    journey = load_journey(parsed)
    if journey is None:
        ctx = {"typed": parsed, "missing": parsed, "tracing_url": tracing_url(parsed),
               "retention": settings.FLOWSCOPE_RETENTION}  # fmt: skip
        return render(request, TEMPLATE, ctx, status=404)
    return render(request, TEMPLATE, journey_context(journey))


def event_href(e: Event) -> str:
    """The event page's address (as `{% url 'event' %}` / `'event-by-id'` give it)."""
    stream = quote(e.stream.name, safe="")
    return f"/events/{stream}/{e.seq}/" if e.seq else f"/events/{stream}/id/{e.id}/"


def journey_context(journey: Journey) -> dict[str, Any]:
    span = journey.duration_ms

    def at(offset_ms: float) -> str:
        """Per cent of the time axis, as a data-* attribute (static/js/trace.js places it)."""
        return f"{(offset_ms / span * 100) if span > 0 else 0:.3f}"

    rows = [
        {
            "step": s,
            "at": at(s.offset_ms),
            "from": at(s.parent.offset_ms) if s.parent else "",
            "href": event_href(s.event),
            "offset": duration_ms(s.offset_ms),
            "offset_attr": f"{s.offset_ms:.3f}",
            "waited": duration_ms(s.waited_ms) if s.parent else "",
        }
        for s in journey.steps
    ]  # formatted here: a template tag per cell costs ~1 ms a row at 1,000 rows
    ticks = [{"at": f"{p:.0f}", "ms": span * p / 100} for p in TICKS]
    return {
        "j": journey,
        "rows": rows,
        "ticks": ticks,
        "typed": journey.trace_id,
        "graph_json": script_json(graph_elements(journey)),
        "inferred": any(s.parent_how == "consumed" for s in journey.steps),
    }
