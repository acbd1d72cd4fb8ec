"""What a page may watch, and how each topic is rendered.

A topic names one page's live part: `overview`, `topology`,
`stream:<name>[:<range>]`, `consumer:<stream>:<name>[:<range>]` (the range its chart shows,
dashboard/pages/charts.py's RANGES; the default range without), `replay:<job id>`, and a
filtered list's: `tail:<query>` (the event browser's live tail), `deadletters:<query>`
(/dead-letters/), the filter's query string percent-encoded. A socket watches only the
topics its page shows (given in the `ws-connect` URL, checked here). Each topic renders to
the HTML of that page's live partials, each root marked `hx-swap-oob`, from the same named
partials as the full page.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import quote, unquote

from dashboard.pages.charts import RANGES

MAX_TOPICS = 8
MAX_NAME = 255
# topic kind -> "module:function" taking the topic's names and returning the HTML (or None
# when what it shows no longer exists); imported on first use so each page owns its renderer.
RENDERERS: dict[str, str] = {
    "overview": "dashboard.pages.overview:overview_live_html",
    "topology": "dashboard.pages.topology:topology_live_html",
    "stream": "dashboard.pages.streams:stream_live_html",
    "consumer": "dashboard.pages.streams:consumer_live_html",
    "tail": "dashboard.pages.events:tail_live_html",
    "replay": "dashboard.pages.replays:replay_live_html",
    "deadletters": "dashboard.pages.deadletters:dead_letters_live_html",
}
MAX_TAIL = 4096  # a tail topic carries its filter's query string, percent-encoded
FILTERED = ("tail", "deadletters")  # topics `<kind>:<filter query string, percent-encoded>`


def parse_topic(text: str) -> tuple[str, tuple[str, ...]] | None:
    """`stream:ORDERS` -> ("stream", ("ORDERS",)); None when it is not a topic a page shows."""
    kind, _, rest = text.partition(":")
    if kind in ("overview", "topology"):
        return (kind, ()) if not rest else None
    if kind in FILTERED:  # `tail:<filter query string, percent-encoded>` ("" = no filter)
        ok = len(rest) <= MAX_TAIL and ":" not in rest and "," not in rest and rest.isprintable()
        return (kind, (rest,)) if ok else None
    # names percent-encoded (`make_topic`): a stream may be called `a,b` or `v1:orders`
    names = tuple(unquote(n) for n in rest.split(":")) if rest else ()
    arity = {"stream": 1, "consumer": 2, "replay": 1}.get(kind)
    if arity is None or len(names) not in (arity, arity + (kind != "replay")):
        return None
    if len(names) > arity and names[-1] not in RANGES:
        return None
    if any(not n or len(n) > MAX_NAME or not n.isprintable() for n in names):
        return None
    return kind, names


def make_topic(kind: str, *names: str) -> str:
    """`make_topic("stream", "a,b")` -> `stream:a%2Cb`: the one spelling of a topic, the
    page's (parse_topics) and the digests' (dashboard/live/hub.py) alike. Names are
    percent-encoded, so the `,` that separates a page's topics and the `:` that separates a
    topic's parts stay separators."""
    return ":".join([kind, *(quote(n, safe="") for n in names)])


def canonical(text: str) -> str | None:
    """The one spelling of a topic a page sent (None when it is not one)."""
    parsed = parse_topic(text)
    if parsed is None:
        return None
    kind, names = parsed
    return text if kind in FILTERED else make_topic(kind, *names)


def base_topic(topic: str) -> str:
    """The topic whose changes a topic follows: `stream:ORDERS:15m` -> `stream:ORDERS` (a chart
    range is how a page draws a stream, not what changed); any other topic is its own."""
    parsed = parse_topic(topic)
    if parsed is None or parsed[0] not in ("stream", "consumer"):
        return topic
    kind, names = parsed
    if len(names) > (1 if kind == "stream" else 2):
        return topic.rsplit(":", 1)[0]
    return topic


def parse_topics(query: str) -> list[str]:
    """The `topics` of a ws-connect query string (comma-separated, at most MAX_TOPICS, each
    valid), deduplicated in order."""
    from urllib.parse import parse_qs

    found: list[str] = []
    for value in parse_qs(query).get("topics", []):
        for text in value.split(","):
            topic = canonical(text.strip()) if text.strip() else None
            if topic is not None and topic not in found:
                found.append(topic)
    return found[:MAX_TOPICS]


def _function(kind: str) -> Callable[..., str | None] | None:
    target = RENDERERS.get(kind)
    if target is None:
        return None
    module, _, name = target.partition(":")
    fn: Callable[..., str | None] = getattr(importlib.import_module(module), name)
    return fn


def renderer(topic: str) -> str | None:
    """Render a topic's live HTML (sync: runs the ORM; called in a worker thread, whose
    database connection is checked as a request's would be: one that broke is replaced)."""
    from django.db import close_old_connections

    parsed = parse_topic(topic)
    if parsed is None:
        return None
    fn = _function(parsed[0])
    if fn is None:
        return None
    close_old_connections()
    try:
        return fn(*parsed[1])
    finally:
        close_old_connections()
