"""Pure functions that turn what arrives from NATS into rows: no I/O here.

An `EventRecord` is one stored message as the tap writes it. `Gap` says which sequences the
tap could not read because they had left the stream first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

# Headers the server adds to republished copies; they describe the stored original.
REPUBLISH_STREAM = "Nats-Stream"
REPUBLISH_SEQUENCE = "Nats-Sequence"
REPUBLISH_TIMESTAMP = "Nats-Time-Stamp"
REPUBLISH_LAST_SEQUENCE = "Nats-Last-Sequence"


@dataclass(slots=True)
class EventRecord:
    stream_id: int
    seq: int | None
    ts: datetime
    subject: str
    size: int
    headers: dict[str, Any] | None
    msg_id: str | None
    trace_id: str | None
    span_id: str | None
    service: str | None
    payload: bytes
    truncated: bool


@dataclass(slots=True)
class Gap:
    stream_id: int
    first_seq: int
    last_seq: int
    reason: str


class AckMeta(NamedTuple):
    """A delivery's metadata, from its reply subject. Immutable. A NamedTuple rather than a frozen
    dataclass: it is built once per message on the tap's hot path, and a frozen dataclass'
    `__init__` (one `object.__setattr__` per field) cost more than the rest of the parse."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def _ack_offset(tokens: list[str] | list[bytes]) -> int | None:
    """Where the stream name is among an ack subject's tokens (str or raw bytes), or None."""
    n = len(tokens)
    if n != 9 and n < 12:
        return None
    head = (b"$JS", b"ACK") if isinstance(tokens[0], bytes) else ("$JS", "ACK")
    if tokens[0] != head[0] or tokens[1] != head[1]:
        return None
    return 2 if n == 9 else 4


def parse_ack_subject(reply: str) -> AckMeta | None:
    """Parse a JetStream delivery's reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (9 tokens), or the
    domain form `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>
    .<ts>.<pending>.<token>` (12 or more tokens). Returns None for anything else.
    """
    tokens = reply.split(".")
    o = _ack_offset(tokens)
    if o is None:
        return None
    try:
        return AckMeta(
            tokens[o],
            tokens[o + 1],
            int(tokens[o + 2]),
            int(tokens[o + 3]),
            int(tokens[o + 4]),
            int(tokens[o + 5]),
            int(tokens[o + 6]),
        )
    except ValueError:
        return None


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace_id, span_id) from a W3C `traceparent` value, or None if it is not valid."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, _flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def header(headers: dict[str, str] | None, name: str) -> str | None:
    """A header's value by case-insensitive name (`traceparent` may arrive in any case)."""
    if not headers:
        return None
    if name in headers:
        return headers[name]
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def ack_position(reply: bytes) -> tuple[int, int] | None:
    """(stream sequence, stream timestamp in ns) from a delivery's raw reply subject: what the
    tap's hot path needs of `parse_ack_subject`, without building an AckMeta per message."""
    tokens = reply.split(b".")
    o = _ack_offset(tokens)
    if o is None:
        return None
    try:
        return int(tokens[o + 3]), int(tokens[o + 5])
    except ValueError:
        return None


_fromtimestamp = datetime.fromtimestamp


def ns_to_datetime(ns: int) -> datetime:
    """A stream timestamp (ns since the epoch) as an aware UTC datetime, to the microsecond
    (rounded). The float path is the fastest of those measured: 0.66 µs against 1.0 to 2.2 µs for
    integer arithmetic, timedelta or a per-second cache."""
    return _fromtimestamp(ns / 1e9, UTC)  # positional tz: half the cost of `tz=UTC`


def parse_nats_time(value: str | None) -> datetime | None:
    """The RFC 3339 timestamp in a republished message's Nats-Time-Stamp header."""
    if not value:
        return None
    v = value.strip().replace("Z", "+00:00")
    # Python accepts at most 6 fractional digits; the server writes up to 9.
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", v)
    if not m:
        return None
    frac = (m.group(2) or "")[:7]
    try:
        return datetime.fromisoformat(m.group(1) + frac + (m.group(3) or "+00:00"))
    except ValueError:
        return None


def clean_text(value: str, limit: int = 4096) -> str:
    """Text that PostgreSQL accepts: no NUL characters, bounded length."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value[:limit]


def build_record(
    *,
    stream_id: int,
    seq: int | None,
    ts: datetime,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    preview_bytes: int,
    service_header: str,
) -> EventRecord:
    if not headers:  # the common case, kept short: this runs once per message
        return EventRecord(
            stream_id, seq, ts, clean_text(subject, 1024), len(data), None, None, None, None,
            None, bytes(data[:preview_bytes]), len(data) > preview_bytes,
        )  # fmt: skip
    trace = parse_traceparent(header(headers, "traceparent"))
    msg_id = header(headers, "Nats-Msg-Id")
    service = header(headers, service_header)
    stored_headers = (
        {clean_text(k, 256): clean_text(str(v)) for k, v in headers.items()} if headers else None
    )
    return EventRecord(
        stream_id=stream_id,
        seq=seq,
        ts=ts,
        subject=clean_text(subject, 1024),
        size=len(data),
        headers=stored_headers,
        msg_id=clean_text(msg_id, 1024) if msg_id else None,
        trace_id=trace[0] if trace else None,
        span_id=trace[1] if trace else None,
        service=clean_text(service, 256) if service else None,
        payload=bytes(data[:preview_bytes]),
        truncated=len(data) > preview_bytes,
    )


def headers_json(headers: dict[str, Any] | None) -> str | None:
    return json.dumps(headers, ensure_ascii=False, separators=(",", ":")) if headers else None
