"""The topology page (`/topology/`) and its live partials.

`topology_live_html()` is what the websocket fan-out pushes: the same named partials the full
page renders, each root marked `hx-swap-oob="true"`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from dashboard.roles import require
from dashboard.topology import KIND_TITLES, build_graph

TEMPLATE = "dashboard/topology.html"
LIVE_PARTIALS = ("topology-data", "topology-summary", "topology-list")

# What keeps JSON inside <script> from ending the element or opening a comment (as Django's
# json_script does).
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


def script_json(data: Any) -> SafeString:
    # Safe: with <, > and & escaped as JSON \u escapes, no text can close the script element.
    return mark_safe(json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES))  # noqa: S308


def topology_context(oob: bool = False) -> dict[str, Any]:
    graph = build_graph()
    counts = {kind: 0 for kind in KIND_TITLES}
    for n in graph.nodes.values():
        counts[n.kind] += 1
    return {
        "graph": graph,
        "graph_json": script_json(graph.elements()),
        "sections": graph.sections(),
        "counts": [(KIND_TITLES[k], n) for k, n in counts.items()],
        "problems": sum(1 for n in graph.nodes.values() if n.health != "ok"),
        # the count takes the colour of its worst node: red once dead letters wait anywhere
        "worst": "dead" if any(n.health == "dead" for n in graph.nodes.values()) else "warn",
        "dead_letters": sum(n.dead_letters for n in graph.nodes.values() if n.kind == "stream"),
        "window_minutes": graph.window_seconds // 60,
        "oob": oob,
    }


@require("browse")
def topology(request: HttpRequest) -> HttpResponse:
    return render(request, TEMPLATE, topology_context())


# A push may come several times a second; the graph changes on the scale of seconds and its
# window query reads every event of the last WINDOW (about 130 ms for 83,000 events): one
# build per process every LIVE_TTL seconds at most, shared by every socket.
LIVE_TTL = 2.0
_live_lock = threading.Lock()
_live: tuple[float, str] | None = None


def cache_clear() -> None:
    global _live
    with _live_lock:
        _live = None


def topology_live_html() -> str:
    """The page's live partials (#topology-data, #topology-summary, #topology-list), each
    with hx-swap-oob="true". Sync (ORM): call it from a thread. Built at most every LIVE_TTL
    seconds per process; calls in between get the same HTML."""
    global _live
    with _live_lock:
        if _live is not None and time.monotonic() - _live[0] < LIVE_TTL:
            return _live[1]
        context = topology_context(oob=True)
        html = "".join(render_to_string(f"{TEMPLATE}#{name}", context) for name in LIVE_PARTIALS)
        _live = (time.monotonic(), html)
        return html
