"""Pure functions that turn what arrives from NATS into rows: no I/O here.

An `EventRecord` is one stored message with its fields parsed. A `Chunk` is what observers hand
to the writer: consecutive events of one stream, already encoded as rows of PostgreSQL's binary
COPY format, so the writer sends them as they are. `Gap` says which sequences the tap could not
read because they had left the stream first.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, NamedTuple

_json_string = json.encoder.encode_basestring  # type: ignore[attr-defined]
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
    ts: int  # µs since 2000-01-01 UTC, as PostgreSQL's binary timestamptz (`pg_micros`)
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
    count: ClassVar[int] = 0  # events it holds (the writer's buffer counts events)
    nbytes: ClassVar[int] = 0


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
    match = _TRACEPARENT.match(value)  # the usual, canonical form first
    if not match:
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
    tap needs of `parse_ack_subject`, without building an AckMeta."""
    tokens = reply.split(b".")
    o = _ack_offset(tokens)
    if o is None:
        return None
    try:
        return int(tokens[o + 3]), int(tokens[o + 5])
    except ValueError:
        return None


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
    ts: int,
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
    fields = header_fields(headers, service_header)
    return EventRecord(
        stream_id, seq, ts, clean_text(subject, 1024), len(data), fields.stored, fields.msg_id,
        fields.trace_id, fields.span_id, fields.service, bytes(data[:preview_bytes]),
        len(data) > preview_bytes,
    )  # fmt: skip


class HeaderFields(NamedTuple):
    stored: dict[str, str]  # the headers as stored: cleaned where they needed it
    msg_id: str | None
    trace_id: str | None
    span_id: str | None
    service: str | None


def header_fields(headers: dict[str, str], service_header: str) -> HeaderFields:
    """What the tap reads from a message's (non-empty) headers."""
    trace = parse_traceparent(header(headers, "traceparent"))
    msg_id = header(headers, "Nats-Msg-Id")
    service = header(headers, service_header)
    stored = headers
    for k, v in headers.items():  # cleaned only when something needs it (rare)
        if len(k) > 256 or len(v) > 4096 or "\x00" in k or "\x00" in v:
            stored = {clean_text(k, 256): clean_text(str(v)) for k, v in headers.items()}
            break
    return HeaderFields(
        stored,
        clean_text(msg_id, 1024) if msg_id else None,
        trace[0] if trace else None,
        trace[1] if trace else None,
        clean_text(service, 256) if service else None,
    )


def headers_json(headers: dict[str, Any] | None) -> str | None:
    """The headers as a JSON object (names and values are strings): built from the C string
    encoder directly, about 2.5 times as fast as `json.dumps` for a few headers."""
    if not headers:
        return None
    return (
        "{"
        + ",".join([_json_string(k) + ":" + _json_string(str(v)) for k, v in headers.items()])
        + "}"
    )


# ------------------------------------------------------------------------------------------
# Rows in PostgreSQL's binary COPY format, for
#   COPY flowscope_event (stream_id, seq, ts, subject, size, headers, msg_id, trace_id, span_id,
#                         service, payload, truncated) FROM STDIN (FORMAT BINARY)
# A row is a 16-bit field count, then per field a 32-bit length (-1: NULL) and the value:
# int8/int4 big-endian, timestamptz as int8 microseconds since 2000-01-01 UTC, text as UTF-8,
# jsonb as a version byte (1) and the JSON text, bytea as is, bool as one byte.

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
COPY_COLUMNS = 12
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since 1970
_PG_EPOCH_DAY = _PG_EPOCH.date()
_DAY_US = 86_400_000_000
_NULL = b"\xff\xff\xff\xff"
_FALSE, _TRUE = b"\x00\x00\x00\x01\x00", b"\x00\x00\x00\x01\x01"
# count, stream_id, seq, ts, the subject's length (its bytes follow)
_PLAIN_HEAD = struct.Struct("!hiqiqiqi").pack
# size, headers .. service all NULL, the payload's length (its bytes follow)
_PLAIN_MID = struct.Struct("!iiiiiiii").pack
_LEN = struct.Struct("!i").pack
_INT8_FIELD = struct.Struct("!iq").pack
_HEAD = struct.Struct("!hiq").pack  # count, stream_id
_SEQ_HEAD = struct.Struct("!hiqiq").pack  # count, stream_id, seq
_FOUR_NULLS = _NULL * 4  # msg_id, trace_id, span_id, service
_INT4_FIELD = struct.Struct("!ii").pack
MAX_SUBJECT = 1024  # characters kept of a subject
NEWEST = 20  # the latest events a chunk keeps in parsed form, for the live digest


def pg_micros(ts: datetime) -> int:
    """A datetime as PostgreSQL's binary timestamptz: µs since 2000-01-01 UTC."""
    delta = ts - _PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ns_to_pg_micros(ns: int) -> int:
    """A stream timestamp (ns since 1970) as binary timestamptz, rounded to the microsecond."""
    return (ns + 500) // 1000 - _PG_EPOCH_US


def pg_micros_to_datetime(us: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=us)


def _text_field(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode("utf-8", "replace")
    return _LEN(len(data)) + data


def encode_record(record: EventRecord) -> bytes:
    """One binary COPY row for `record`."""
    return _encode(
        record.stream_id, record.seq, record.ts, _text_field(record.subject), record.size,
        record.headers, record.msg_id, record.trace_id, record.span_id, record.service,
        record.payload, record.truncated,
    )  # fmt: skip


def _encode(
    stream_id: int,
    seq: int | None,
    ts: int,
    subject: bytes,  # the field: length and UTF-8
    size: int,
    headers: dict[str, Any] | None,
    msg_id: str | None,
    trace_id: str | None,
    span_id: str | None,
    service: str | None,
    payload: bytes,
    truncated: bool,
) -> bytes:
    parts = [
        _HEAD(COPY_COLUMNS, 8, stream_id) + _NULL if seq is None else
        _SEQ_HEAD(COPY_COLUMNS, 8, stream_id, 8, seq),
        _INT8_FIELD(8, ts),
        subject,
        _INT4_FIELD(4, size),
    ]  # fmt: skip
    if headers:
        doc = b"\x01" + headers_json(headers).encode("utf-8", "replace")  # type: ignore[union-attr]
        parts += [_LEN(len(doc)), doc]
    else:
        parts.append(_NULL)
    if trace_id is None and msg_id is None and service is None:
        parts.append(_FOUR_NULLS)
    else:
        parts += [
            _text_field(msg_id),
            _text_field(trace_id),
            _text_field(span_id),
            _text_field(service),
        ]
    parts += [_LEN(len(payload)), payload, _TRUE if truncated else _FALSE]
    return b"".join(parts)


def plain_subject(subject: bytes) -> bool:
    """True when a subject can be stored as its raw bytes: ASCII, no NUL, not over-long."""
    return subject.isascii() and len(subject) <= MAX_SUBJECT and b"\x00" not in subject


def write_plain_row(
    rows: bytearray,
    stream_id: int,
    seq: int,
    ts: int,
    subject: bytes,
    payload: bytes,
    preview: int,
) -> None:
    """Append the row of an event without headers on a `plain_subject` to `rows`: what
    `encode_record` writes for it, without the record."""
    size = len(payload)
    rows += _PLAIN_HEAD(COPY_COLUMNS, 8, stream_id, 8, seq, 8, ts, len(subject))
    rows += subject
    if size > preview:
        rows += _PLAIN_MID(4, size, -1, -1, -1, -1, -1, preview)
        rows += payload[:preview]
        rows += _TRUE
    else:
        rows += _PLAIN_MID(4, size, -1, -1, -1, -1, -1, size)
        rows += payload
        rows += _FALSE


# The latest events of a chunk, for the digest: (seq, ts in pg_micros, subject, size, service,
# trace id, msg id). The subject is raw bytes from the fast path, else text.
Recent = tuple[int | None, int, bytes | str, int, str | None, str | None, str | None]


class Chunk:
    """Consecutive events of one stream, in sequence order with no hole between them (a hole is
    a `Gap` of its own), as binary COPY rows: what an observer hands to the writer in one go.
    `first_seq` is None for an observer that has no sequences (a subject subscription)."""

    __slots__ = (
        "count",
        "day",
        "day_numbers",
        "first_seq",
        "last_seq",
        "recent",
        "rows",
        "stream_id",
        "subjects",
    )  # fmt: skip

    def __init__(self, stream_id: int, first_seq: int | None):
        self.stream_id = stream_id
        self.first_seq = first_seq
        self.last_seq = first_seq
        self.count = 0
        self.rows = bytearray()
        self.subjects: dict[bytes | str, int] = {}  # events per subject
        self.recent: list[Recent] = []  # trimmed to NEWEST by `close()`
        self.day_numbers: set[int] = set()  # the days its events fall on (since 2000-01-01)
        self.day = -1  # the day of the last event added

    @property
    def nbytes(self) -> int:
        return len(self.rows)

    def add_plain(self, seq: int, ts: int, subject: bytes, payload: bytes, preview: int) -> None:
        """An event without headers on a `plain_subject`."""
        write_plain_row(self.rows, self.stream_id, seq, ts, subject, payload, preview)
        self._count(seq, ts, subject, len(payload), None, None, None)

    def add_headed(
        self,
        seq: int,
        ts: int,
        subject: bytes,
        payload: bytes,
        preview: int,
        headers: dict[str, str],
        service_header: str,
    ) -> None:
        """An event with (non-empty) headers and a `plain_subject`: what `add_record` does for
        it, without the record."""
        f = header_fields(headers, service_header)
        size = len(payload)
        truncated = size > preview
        self.rows += _encode(
            self.stream_id, seq, ts, _LEN(len(subject)) + subject, size, f.stored, f.msg_id,
            f.trace_id, f.span_id, f.service, payload[:preview] if truncated else payload,
            truncated,
        )  # fmt: skip
        self._count(seq, ts, subject, size, f.service, f.trace_id, f.msg_id)

    def add_record(self, record: EventRecord) -> None:
        self.rows += encode_record(record)
        self._count(
            record.seq, record.ts, record.subject, record.size, record.service,
            record.trace_id, record.msg_id,
        )  # fmt: skip

    def _count(
        self,
        seq: int | None,
        ts: int,
        subject: bytes | str,
        size: int,
        service: str | None,
        trace_id: str | None,
        msg_id: str | None,
    ) -> None:
        subjects = self.subjects
        subjects[subject] = subjects.get(subject, 0) + 1
        day = ts // _DAY_US
        if day != self.day:
            self.day = day
            self.day_numbers.add(day)
        self.count += 1
        self.last_seq = seq
        self.recent.append((seq, ts, subject, size, service, trace_id, msg_id))

    def close(self) -> None:
        """Done adding: keep only the newest parsed events."""
        if len(self.recent) > NEWEST:
            del self.recent[:-NEWEST]

    def days(self) -> set[date]:
        """The days (UTC) its events fall on: the partitions they go to."""
        return {_PG_EPOCH_DAY + timedelta(days=d) for d in self.day_numbers}
