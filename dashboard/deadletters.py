"""Reading dead letters (issue #15): filters (stream, consumer, subject wildcard, reason,
status, time range), keyset pages (newest death first) and the counts of new ones per stream
and consumer, shared by /dead-letters/ and `GET /api/dead-letters`, and one dead letter's naks
(the deliveries its consumer refused before the last). The tap captures them
(eventbus/deadletters.py); nothing here writes."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, QuerySet

from dashboard.keyset import newest_first
from dashboard.models import DeadLetter, Nak
from dashboard.search.filters import MAX_TEXT, FilterError, parse_subject, parse_time
from eventbus import subjects
from eventbus.records import header, parse_traceparent

PAGE = 100
NAKS_SHOWN = 100  # a dead letter's naks shown (the last ones; a consumer may nak thousands)
# A nak is the dead letter's if reported by then: the advisories come from one server clock
# (the consumer's leader), a nak before its max-deliveries advisory; the slack is for a new
# leader's clock. Later naks are of a later life (the consumer reset, the message delivered again).
NAK_SLACK = timedelta(seconds=1)
FIELDS = ("stream", "consumer", "subject", "reason", "status", "since", "until")


@dataclass
class DeadLetterPage:
    items: list[DeadLetter]
    next: str | None


@dataclass(frozen=True)
class Waiting:
    """How many new dead letters wait for one consumer of one stream."""

    stream: str
    consumer: str
    count: int


def _text(params: Mapping[str, str], name: str) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > MAX_TEXT:
        raise FilterError(name, f"longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise FilterError(name, "contains a NUL character")
    return value


def filtered(params: Mapping[str, str]) -> QuerySet[DeadLetter]:
    """The dead letters the filter takes; FilterError names a field that cannot be used."""
    rows: QuerySet[DeadLetter] = DeadLetter.objects.all()
    stream = _text(params, "stream")
    if stream:
        rows = rows.filter(stream_name=stream)
    consumer = _text(params, "consumer")
    if consumer:
        rows = rows.filter(consumer=consumer)
    subject = (params.get("subject") or "").strip()
    if subject:
        subject = parse_subject(subject)
        if subjects.has_wildcard(subject):
            rows = rows.filter(subject__regex=subjects.to_regex(subject))
        else:
            rows = rows.filter(subject=subject)
    for name, choices in (("reason", DeadLetter.Reason), ("status", DeadLetter.Status)):
        value = _text(params, name)
        if value:
            if value not in choices.values:
                raise FilterError(name, "one of " + ", ".join(choices.values))
            rows = rows.filter(**{name: value})
    for name, op in (("since", "died_at__gte"), ("until", "died_at__lt")):
        if (params.get(name) or "").strip():
            rows = rows.filter(**{op: parse_time(name, params[name])})
    return rows


def dead_letters(params: Mapping[str, str], limit: int = PAGE) -> DeadLetterPage:
    """One page, newest death first; `cursor` is the `next` of the page before."""
    rows = filtered(params)
    items, nxt = newest_first(rows, "died_at", params.get("cursor") or "", limit)
    return DeadLetterPage(items, nxt)


def waiting(params: Mapping[str, str] | None = None) -> list[Waiting]:
    """New dead letters per (stream, consumer), most first (within the filter, if given, but
    whatever status it asks for: these are the ones that wait)."""
    rows = filtered({k: v for k, v in (params or {}).items() if k != "status"})
    counted = (
        rows.filter(status=DeadLetter.Status.NEW)
        .values("stream_name", "consumer")
        .annotate(n=Count("*"))  # not count(id): the partial index answers count(*) alone
        .order_by("-n", "stream_name", "consumer")
    )
    return [Waiting(r["stream_name"], r["consumer"], r["n"]) for r in counted]


def waiting_counts(stream: str | None = None) -> dict[tuple[str, str], int]:
    """New dead letters per (stream, consumer) (all streams, or `stream`'s): one grouped query,
    answered from the partial index `deadletter_waiting` alone (migration 0016). For the
    overview, the topology and the stream pages, which show them beside each stream and
    consumer."""
    rows = DeadLetter.objects.filter(status=DeadLetter.Status.NEW)
    if stream is not None:
        rows = rows.filter(stream_name=stream)
    counted = rows.values_list("stream_name", "consumer").annotate(n=Count("*")).order_by()
    return {(s, c): n for s, c, n in counted}


def per_stream(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """`waiting_counts` summed per stream (its consumers' and, for a dead-letter stream, its
    own messages')."""
    totals: dict[str, int] = {}
    for (s, _), n in counts.items():
        totals[s] = totals.get(s, 0) + n
    return totals


@dataclass(frozen=True)
class NakRow:
    """One nak of a dead letter: its delivery number, when, and the milliseconds since the nak
    before it (None for the first shown)."""

    deliveries: int
    at: datetime
    gap_ms: float | None


@dataclass(frozen=True)
class Naks:
    rows: list[NakRow]  # the last NAKS_SHOWN, oldest first
    total: int
    final_gap_ms: float | None  # from the last nak to the death


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def naks(d: DeadLetter) -> Naks:
    """The naks the server reported for the dead letter's (stream, seq, consumer) within its
    life: none for a dead-letter stream's message (no consumer refused it)."""
    if not d.consumer:
        return Naks([], 0, None)
    rows = Nak.objects.filter(
        stream_name=d.stream_name, seq=d.seq, consumer=d.consumer, ts__lte=d.died_at + NAK_SLACK
    )
    if d.stream_id is not None:  # not a nak of an earlier incarnation's message of that seq
        rows = rows.filter(ts__gte=d.stream.created)  # type: ignore[union-attr]
    earlier = (  # the same seq's death before (its consumer, or the stream, created again)
        DeadLetter.objects.filter(
            stream_name=d.stream_name, seq=d.seq, consumer=d.consumer, died_at__lt=d.died_at
        )
        .order_by("-died_at")
        .values_list("died_at", flat=True)
        .first()
    )
    if earlier is not None:
        rows = rows.filter(ts__gt=earlier)
    last = list(rows.order_by("-ts", "-deliveries").values_list("deliveries", "ts")[:NAKS_SHOWN])
    last.reverse()
    total = len(last) if len(last) < NAKS_SHOWN else rows.count()
    shown = [
        NakRow(n, at, _ms(at, last[i - 1][1]) if i else None) for i, (n, at) in enumerate(last)
    ]
    return Naks(shown, total, _ms(d.died_at, last[-1][1]) if last else None)


def trace_id(d: DeadLetter) -> str | None:
    """The trace the message belonged to, from its traceparent header."""
    headers = {k: v[0] if isinstance(v, list) and v else v for k, v in (d.headers or {}).items()}
    got = parse_traceparent(header(headers, "traceparent"))
    return got[0] if got else None


def as_item(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id, "stream": d.stream_name, "seq": d.seq, "consumer": d.consumer,
        "reason": d.reason, "deliveries": d.deliveries, "subject": d.subject,
        "status": d.status, "died_at": d.died_at,
    }  # fmt: skip


def as_detail(d: DeadLetter) -> dict[str, Any]:
    reported = naks(d)
    return {
        **as_item(d),
        "headers": dict(d.headers or {}),
        "payload": base64.b64encode(bytes(d.payload)).decode("ascii"),
        "payload_source": d.payload_source,
        "truncated": d.truncated,
        "terminate_reason": d.terminate_reason,
        "status_note": d.status_note,
        "origin_stream": d.origin_stream or None,
        "origin_seq": d.origin_seq,
        "captured_at": d.captured_at,
        "trace_id": trace_id(d),
        "naks": [{"deliveries": n.deliveries, "at": n.at} for n in reported.rows],
        "naks_total": reported.total,
    }
