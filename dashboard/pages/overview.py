"""The overview (`/`): every stream with its rate, size, consumers, dead letters waiting and worst
lag, sparklines of rate and lag, KV buckets and object stores apart, the taps, and every consumer
with its dead letters waiting. The same
partials render the full page and the live pushes (`overview_live_html`)."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone

from dashboard.deadletters import per_stream, waiting_counts
from dashboard.models import Checkpoint, Consumer, ConsumerSample, Stream, StreamSample
from dashboard.roles import require
from dashboard.taps import tap_views

SPARK_WINDOW = timedelta(minutes=15)
RATE_WINDOW = 60.0  # seconds: "message rate (last minute)"
STEADY = 0.05  # a lag within 5% of a minute ago (or within 1 message) is steady
SPECIAL = (("KV_", "kv"), ("OBJ_", "obj"))  # KV buckets and object stores are streams too
STREAM_SAMPLES = StreamSample._meta.db_table
CONSUMER_SAMPLES = ConsumerSample._meta.db_table


def kind_of(name: str) -> tuple[str, str]:
    """('kv', 'config') for KV_config, ('obj', 'files') for OBJ_files, else ('stream', name)."""
    for prefix, kind in SPECIAL:
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind, name[len(prefix) :]
    return "stream", name


def rate_series(points: Sequence[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """(unix seconds, last_seq) samples -> messages/s between consecutive samples, at the later
    one. A sequence that went down (stream purged and reset) counts as 0, not negative."""
    xs: list[float] = []
    ys: list[float] = []
    for (t0, s0), (t1, s1) in itertools.pairwise(points):
        if t1 > t0:
            xs.append(t1)
            ys.append(max(0.0, (s1 - s0) / (t1 - t0)))
    return xs, ys


def recent_rate(points: Sequence[tuple[float, int]], window: float = RATE_WINDOW) -> float | None:
    """Messages/s over the last `window` seconds of samples (the history there is, if shorter);
    None without two samples."""
    if len(points) < 2:
        return None
    t1, s1 = points[-1]
    start = next((p for p in points if p[0] >= t1 - window), points[0])
    if start[0] >= t1:
        start = points[-2]
    t0, s0 = start
    return max(0.0, (s1 - s0) / (t1 - t0)) if t1 > t0 else None


def trend(now: int, before: int | None) -> str:
    """growing / shrinking / steady: a lag now against the same lag about a minute ago."""
    if before is None:
        return "steady"
    margin = max(1.0, STEADY * before)
    if now > before + margin:
        return "growing"
    if now < before - margin:
        return "shrinking"
    return "steady"


@dataclass
class StreamRow:
    stream: Stream
    label: str  # the name, or the bucket's name for KV_/OBJ_
    recorded: int
    dropped: int
    gaps: int
    rate: float | None
    worst: Consumer | None
    worst_trend: str
    dead_letters: int = 0  # new ones waiting, all its consumers' (or, a DLQ stream, its own)
    rate_xs: list[float] = field(default_factory=list)
    rate_ys: list[float] = field(default_factory=list)
    lag_xs: list[float] = field(default_factory=list)
    lag_ys: list[float] = field(default_factory=list)

    @property
    def rate_json(self) -> tuple[str, str]:
        return json.dumps([round(x) for x in self.rate_xs]), json.dumps(
            [round(y, 2) for y in self.rate_ys]
        )

    @property
    def lag_json(self) -> tuple[str, str]:
        return json.dumps([round(x) for x in self.lag_xs]), json.dumps(self.lag_ys)


Points = list[tuple[float, int]]


Lags = dict[int, dict[float, int]]


def _series(
    stream_ids: Iterable[int], since: datetime, then: datetime
) -> tuple[dict[int, Points], Lags, dict[tuple[int, str], int]]:
    """Per stream, its samples (ts, last_seq) and the worst consumer lag at each sample time; and
    each consumer's lag at its last sample no newer than `then` (for the trend), from the same
    rows: two queries, whatever the number of streams and consumers. (SQL of its own, times as
    epoch seconds: the rendering of every live push runs this, and 15 minutes of samples are
    thousands of rows that the ORM's datetimes make four times as slow to read.)"""
    ids = list(stream_ids)
    seqs: dict[int, Points] = defaultdict(list)
    lags: Lags = defaultdict(dict)
    before: dict[tuple[int, str], tuple[float, int]] = {}
    cutoff = then.timestamp()
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT stream_id, extract(epoch FROM ts)::float8, last_seq FROM {STREAM_SAMPLES} "
            "WHERE stream_id = ANY(%s) AND ts >= %s ORDER BY stream_id, ts",
            [ids, since],
        )
        for sid, t, last in cur.fetchall():
            seqs[sid].append((t, last))
        cur.execute(
            "SELECT stream_id, consumer, extract(epoch FROM ts)::float8, "
            f"num_pending + num_ack_pending FROM {CONSUMER_SAMPLES} "
            "WHERE stream_id = ANY(%s) AND ts >= %s",
            [ids, since],
        )
        for sid, name, t, lag in cur.fetchall():
            lags[sid][t] = max(lags[sid].get(t, 0), lag)
            if t <= cutoff and t >= before.get((sid, name), (t, 0))[0]:
                before[(sid, name)] = (t, lag)
    return seqs, lags, {key: lag for key, (_, lag) in before.items()}


def overview_context(now: datetime) -> dict[str, object]:
    streams = list(
        Stream.objects.filter(deleted_at__isnull=True)
        .annotate(gap_count=Count("gaps", distinct=True))
        .order_by(Lower("name"), "name")
    )
    consumers = list(
        Consumer.objects.filter(deleted_at__isnull=True, stream__deleted_at__isnull=True)
        .select_related("stream")
        .order_by(Lower("stream__name"), "stream__name", "name")
    )
    checkpoints = {
        c.stream_id: c for c in Checkpoint.objects.filter(stream_id__in=[s.id for s in streams])
    }
    seqs, lags, before = _series(
        (s.id for s in streams), now - SPARK_WINDOW, now - timedelta(seconds=RATE_WINDOW)
    )
    worst: dict[int, Consumer] = {}
    for c in consumers:
        if c.stream_id not in worst or c.lag > worst[c.stream_id].lag:
            worst[c.stream_id] = c
    waiting = waiting_counts()
    for c in consumers:
        setattr(c, "dead_letters", waiting.get((c.stream.name, c.name), 0))  # noqa: B010
    stream_waiting = per_stream(waiting)
    rows: dict[str, list[StreamRow]] = {"stream": [], "kv": [], "obj": []}
    for s in streams:
        kind, label = kind_of(s.name)
        cp = checkpoints.get(s.id)
        w = worst.get(s.id)
        rate_xs, rate_ys = rate_series(seqs.get(s.id, []))
        lag_points = sorted(lags.get(s.id, {}).items())
        rows[kind].append(
            StreamRow(
                stream=s, label=label, recorded=cp.recorded if cp else 0,
                dropped=cp.dropped if cp else 0, gaps=s.gap_count,  # type: ignore[attr-defined]
                rate=recent_rate(seqs.get(s.id, [])), worst=w,
                dead_letters=stream_waiting.get(s.name, 0),
                worst_trend=trend(w.lag, before.get((s.id, w.name))) if w else "steady",
                rate_xs=rate_xs, rate_ys=rate_ys,
                lag_xs=[t for t, _ in lag_points], lag_ys=[v for _, v in lag_points],
            )
        )  # fmt: skip
    return {
        "stream_rows": rows["stream"],
        "kv_rows": rows["kv"],
        "obj_rows": rows["obj"],
        "consumers": consumers,
        "taps": tap_views(now),
        "lag_interval": settings.FLOWSCOPE_LAG_INTERVAL,
        "spark_minutes": int(SPARK_WINDOW.total_seconds() // 60),
    }


LIVE_PARTIALS = ("taps", "streams", "stores", "consumers")


@require("browse")
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", overview_context(timezone.now()))


def overview_live_html() -> str:
    """The overview's live partials, each marked for an out-of-band swap (the live hub)."""
    context = {**overview_context(timezone.now()), "oob": True}
    return "".join(
        render_to_string(f"dashboard/overview.html#{name}", context) for name in LIVE_PARTIALS
    )
