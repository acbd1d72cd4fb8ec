"""Time series for the stream and consumer pages' uPlot charts, from the lag sampler's tables.

A range is read with one indexed query ((stream_id, consumer, ts)) and bucketed in SQL to at most
MAX_POINTS points per series, so a 7-day chart costs the same to draw as a 15-minute one. The
lag sampler keeps raw samples (one every FLOWSCOPE_LAG_INTERVAL seconds) for 24 hours and one a
minute (`downsampled`) after that (eventbus/lag.py), so the 7-day range reads the downsampled
samples for all but its last day; short ranges get one point per raw sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

RANGES: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
DEFAULT_RANGE = "1h"
MAX_POINTS = 600
# Buckets are aligned on a fixed origin, so a point keeps its time from one render to the next.
ORIGIN = "2000-01-01T00:00:00Z"


def parse_range(value: str | None) -> str:
    return value if value in RANGES else DEFAULT_RANGE


def default_range(stream_id: int, now: datetime, consumer: str | None = None) -> str:
    """The range a page opens on: 15 min while the samples it charts (the stream's, or the
    consumer's on its page; one every few seconds while a tap watches) reach back less than
    that within the last hour, so minutes of data are not squeezed into the right edge of an
    hour; else DEFAULT_RANGE. One probe of the (stream, ts) or (stream, consumer, ts) index."""
    short = RANGES["15m"]
    since = now - RANGES[DEFAULT_RANGE]
    with connection.cursor() as cur:
        if consumer is None:
            cur.execute(
                "SELECT min(ts) FROM flowscope_stream_sample WHERE stream_id = %s AND ts >= %s",
                [stream_id, since],
            )
        else:
            cur.execute(
                "SELECT min(ts) FROM flowscope_consumer_sample"
                " WHERE stream_id = %s AND consumer = %s AND ts >= %s",
                [stream_id, consumer, since],
            )
        (oldest,) = cur.fetchone() or (None,)
    return "15m" if oldest is None or oldest > now - short else DEFAULT_RANGE


def bucket_seconds(range_key: str) -> int:
    """Bucket width: a range spans at most MAX_POINTS buckets (its two ends may cut two)."""
    return span_bucket_seconds(RANGES[range_key])


def span_bucket_seconds(span: timedelta) -> int:
    """Bucket width for any span (the JSON API takes arbitrary ranges)."""
    return max(1, math.ceil(span.total_seconds() / (MAX_POINTS - 1)))


@dataclass
class Chart:
    """What `data-chart="lag"` draws: {"t": [unix s], "series": {name: [value|null]}, "unit",
    "from", "to"}; from and to (unix s) are the range shown, whatever the samples cover."""

    t: list[float]
    series: dict[str, list[float | None]]
    unit: str
    start: float | None = None
    end: float | None = None

    def as_json(self) -> dict[str, Any]:
        span = {"from": self.start, "to": self.end} if self.start and self.end else {}
        return {"t": self.t, "series": self.series, "unit": self.unit, **span}

    def spanning(self, range_key: str, now: datetime) -> Chart:
        self.start, self.end = (now - RANGES[range_key]).timestamp(), now.timestamp()
        return self

    @property
    def drawable(self) -> bool:
        return len(self.t) >= 2


def _bucketed(sql_select: str, stream_id: int, names: Sequence[str], range_key: str,
              now: datetime) -> list[tuple[Any, ...]]:  # fmt: skip
    """Rows (consumer, bucket start as unix s, last sample's time as unix s, *select) per
    consumer and bucket over the range ending at `now`, oldest first."""
    return bucketed(sql_select, stream_id, names, now - RANGES[range_key], now)


def bucketed(sql_select: str, stream_id: int, names: Sequence[str], start: datetime,
             end: datetime) -> list[tuple[Any, ...]]:  # fmt: skip
    """As `_bucketed`, over (start, end]: at most MAX_POINTS buckets whatever the span."""
    if not names:
        return []
    with connection.cursor() as cur:
        cur.execute(
            "SELECT consumer, "
            "extract(epoch FROM date_bin(%s::interval, ts, %s::timestamptz))::float8, "
            f"extract(epoch FROM max(ts))::float8, {sql_select} "
            "FROM flowscope_consumer_sample "
            "WHERE stream_id = %s AND consumer = ANY(%s) AND ts > %s AND ts <= %s "
            "GROUP BY 1, 2 ORDER BY 2, 1",
            [f"{span_bucket_seconds(end - start)} seconds", ORIGIN, stream_id, list(names),
             start, end],
        )  # fmt: skip
        return list(cur.fetchall())


def lag_chart(stream_id: int, names: Sequence[str], range_key: str, now: datetime) -> Chart:
    """Each consumer's lag (pending + ack pending), the highest of each bucket, so a spike
    shorter than a bucket still shows."""
    rows = _bucketed("max(num_pending + num_ack_pending)", stream_id, names, range_key, now)
    times = sorted({r[1] for r in rows})
    index = {t: i for i, t in enumerate(times)}
    series: dict[str, list[float | None]] = {n: [None] * len(times) for n in names}
    for name, t, _last, lag in rows:
        series[name][index[t]] = lag
    return Chart(t=times, series=series, unit="messages").spanning(range_key, now)


COUNTER_SERIES = (
    ("pending", "num_pending"),
    ("ack pending", "num_ack_pending"),
    ("redelivered", "num_redelivered"),
    ("waiting", "num_waiting"),
)
# The consumer page's charts: (key, title, series drawn, unit). Each on an axis of its own: the
# server's redelivered count keeps the messages given up at max deliver, so it grows where lag
# stays near 0 and, on one axis, flattened it; waiting counts pull requests, not messages.
CONSUMER_CHARTS = (
    ("lag", "Pending and ack pending", ("pending", "ack pending"), "messages"),
    ("redelivered", "Redelivered", ("redelivered",), "messages"),
    ("waiting", "Waiting pull requests", ("waiting",), "requests"),
)


@dataclass
class Titled:
    key: str
    title: str
    chart: Chart


def consumer_charts(stream_id: int, name: str, range_key: str, now: datetime) -> list[Titled]:
    """The consumer's charts over the range (CONSUMER_CHARTS, then its ack rate). Counters:
    each bucket's highest. Ack rate: from each bucket's last ack floor (the floor only grows)
    and its time."""
    select = ", ".join(f"max({col})" for _, col in COUNTER_SERIES) + ", max(ack_floor_consumer_seq)"
    rows = _bucketed(select, stream_id, [name], range_key, now)
    times = [r[2] for r in rows]
    values = {label: [r[3 + i] for r in rows] for i, (label, _) in enumerate(COUNTER_SERIES)}
    out = [
        Titled(key, title, Chart(t=times, series={s: values[s] for s in drawn}, unit=unit)
               .spanning(range_key, now))
        for key, title, drawn, unit in CONSUMER_CHARTS
    ]  # fmt: skip
    rates = Chart(t=times, series={"acks": ack_rates(times, [r[-1] for r in rows])}, unit="msg/s")
    out.append(Titled("acks", "Ack rate", rates.spanning(range_key, now)))
    return out


def ack_rate(t0: float, floor0: int, t1: float, floor1: int) -> float | None:
    """Acknowledgements per second between two samples: the rise of the ack floor's consumer
    sequence (deliveries, not stream sequences: a filtered consumer's stream sequence also
    passes other subjects' messages) over the time between them. None when it cannot be said:
    no time passed, or the floor went back (the consumer was recreated)."""
    dt = t1 - t0
    if dt <= 0 or floor1 < floor0:
        return None
    return (floor1 - floor0) / dt


def ack_rates(times: Sequence[float], floors: Sequence[int | None]) -> list[float | None]:
    """The ack rate at each sample, from the sample before it (None for the first)."""
    out: list[float | None] = [None] * len(times)
    for i in range(1, len(times)):
        f0, f1 = floors[i - 1], floors[i]
        if f0 is not None and f1 is not None:
            out[i] = ack_rate(times[i - 1], f0, times[i], f1)
    return out


def recent_ack_rate(stream_id: int, name: str, now: datetime,
                    window: timedelta = timedelta(minutes=1)) -> float | None:  # fmt: skip
    """The ack rate over the last `window`: from the oldest to the newest sample in it."""
    with connection.cursor() as cur:
        cur.execute(
            "(SELECT extract(epoch FROM ts)::float8, ack_floor_consumer_seq "
            " FROM flowscope_consumer_sample WHERE stream_id = %s AND consumer = %s "
            " AND ts > %s AND ts <= %s AND ack_floor_consumer_seq IS NOT NULL "
            " ORDER BY ts LIMIT 1) UNION ALL "
            "(SELECT extract(epoch FROM ts)::float8, ack_floor_consumer_seq "
            " FROM flowscope_consumer_sample WHERE stream_id = %s AND consumer = %s "
            " AND ts > %s AND ts <= %s AND ack_floor_consumer_seq IS NOT NULL "
            " ORDER BY ts DESC LIMIT 1)",
            [stream_id, name, now - window, now] * 2,
        )
        rows = cur.fetchall()
    if len(rows) < 2:
        return None
    (t0, f0), (t1, f1) = rows
    return ack_rate(t0, f0, t1, f1)
