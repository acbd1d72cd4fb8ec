"""The event browser's filter: parsed once from query parameters (the page's form and the API
take the same names, `../shared/DESIGN.md`), validated with a reason per field, and kept in a
canonical form for URLs and cursors."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from eventbus import subjects

# the relative ranges offered by the page; `last` also takes any "<number><s|m|h|d>"
RANGES = (("15m", "15 min"), ("1h", "1 h"), ("6h", "6 h"), ("24h", "24 h"), ("7d", "7 d"))
MAX_TEXT = 256
MAX_VALUE = 1024
_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_TRACE = re.compile(r"^[0-9a-f]{32}$")
_PATH_TOKEN = re.compile(r"^[^\s.]{1,128}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# `kind`: which streams a search without `stream` covers (KV buckets and object stores are
# streams named KV_* and OBJ_*); the names `GET /api/streams?kind=` takes, plus `all`
KINDS = (("stream", "streams"), ("kv", "KV buckets"), ("object", "object stores"),
         ("all", "everything"))  # fmt: skip


class FilterError(ValueError):
    """A filter field that cannot be used, and why (shown next to the field, sent as 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class EventFilter:
    stream: str = ""
    subject: str = ""
    last: str = ""  # a relative range ("15m") counted back from now; `since` wins if both
    since: datetime | None = None
    until: datetime | None = None
    service: str = ""
    trace_id: str = ""
    msg_id: str = ""
    header: tuple[str, str] | None = None
    text: str = ""
    json: tuple[tuple[str, ...], str] | None = None  # (path tokens, value)
    min_size: int | None = None
    max_size: int | None = None
    kind: str = ""  # "stream", "kv", "object"; "all" or "" (not given): every stream

    def window(self, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
        """The time range asked for: (oldest, newest), either end open (None)."""
        since = self.since
        if since is None and self.last:
            since = (now or datetime.now(UTC)) - duration(self.last)
        return since, self.until

    def params(self) -> dict[str, str]:
        """The filter as query parameters, canonical (empty ones left out)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                continue
            if isinstance(value, datetime):
                out[f.name] = value.isoformat()
            elif f.name == "header":
                out[f.name] = f"{value[0]}={value[1]}"
            elif f.name == "json":
                out[f.name] = ".".join(value[0]) + "=" + value[1]
            else:
                out[f.name] = str(value)
        return out

    def query_string(self) -> str:
        return urlencode(self.params())

    def fingerprint(self) -> str:
        """Names the filter in a cursor, so a cursor is only used with the filter it came from."""
        fields_ = asdict(self)
        fields_["kind"] = "" if self.kind == "all" else self.kind  # the same search either way
        body = json.dumps(fields_, default=str, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def is_empty(self) -> bool:
        return self == EventFilter()

    def but(self, **changes: object) -> EventFilter:
        return replace(self, **changes)  # type: ignore[arg-type]


def duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ValueError(text)
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def parse_time(field: str, text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC (what the API documents)."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            field, f"'{value[:40]}' is not an ISO 8601 time (2026-12-02T14:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if not (1970 <= parsed.year <= 9000):
        raise FilterError(field, "the time is out of range")
    return parsed.astimezone(UTC)  # an offset PostgreSQL cannot hold (-21:14) is gone in UTC


def _size(field: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise FilterError(field, "a size is a whole number of bytes") from None
    if value < 0 or value > 2**31 - 1:
        raise FilterError(field, "a size is between 0 and 2,147,483,647 bytes")
    return value


def _pair(field: str, text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise FilterError(field, f"write it as {what}=value")
    if len(name) > MAX_VALUE or len(value) > MAX_VALUE:
        raise FilterError(field, f"longer than {MAX_VALUE} characters")
    return name, value.strip()


def _text(field: str, text: str, limit: int = MAX_VALUE) -> str:
    value = text.strip()
    if len(value) > limit:
        raise FilterError(field, f"longer than {limit} characters")
    if "\x00" in value:
        raise FilterError(field, "contains a NUL character")
    return value


def parse_subject(value: str, field: str = "subject") -> str:
    """A subject or wildcard checked by NATS' rules (eventbus/subjects.py); FilterError names
    `field` with the reason."""
    try:
        return subjects.validate(value.strip())
    except subjects.SubjectError as exc:
        raise FilterError(field, str(exc)) from None


def parse_filter(params: Mapping[str, str]) -> EventFilter:
    """The filter in `params` (a QueryDict or a dict of the API's parameters); FilterError on
    the first field that cannot be used. Unknown parameters are ignored."""

    def get(name: str) -> str:
        value = params.get(name)
        return "" if value is None else str(value)

    found: dict[str, object] = {}
    for name in ("stream", "service", "msg_id"):
        if get(name).strip():
            found[name] = _text(name, get(name))
    if get("subject").strip():
        found["subject"] = parse_subject(get("subject"))
    if get("last").strip():
        try:
            duration(get("last"))
        except ValueError:
            raise FilterError(
                "last", "a range is a number and a unit: 15m, 1h, 6h, 24h, 7d"
            ) from None
        found["last"] = get("last").strip().lower()
    for name in ("since", "until"):
        if get(name).strip():
            found[name] = parse_time(name, get(name))
    since, until = found.get("since"), found.get("until")
    if isinstance(since, datetime) and isinstance(until, datetime) and since >= until:
        raise FilterError("until", "the end of the range is not after its start")
    if get("trace_id").strip():
        trace = get("trace_id").strip().lower()
        if not _TRACE.match(trace):
            raise FilterError("trace_id", "a trace id is 32 hexadecimal characters")
        found["trace_id"] = trace
    if get("header").strip():
        found["header"] = _pair("header", get("header"), "Name")
    if get("text") != "" and get("text").strip():
        found["text"] = _text("text", get("text"), MAX_TEXT)
    if get("json").strip():
        path, value = _pair("json", get("json"), "path.to.field")
        tokens = tuple(path.split("."))
        if not all(_PATH_TOKEN.match(t) for t in tokens) or len(tokens) > 16:
            raise FilterError("json", "a path is field names joined by dots: customer.id")
        found["json"] = (tokens, value)
    kind = get("kind").strip().lower()
    if kind and kind not in dict(KINDS):
        raise FilterError("kind", "a kind is stream, kv, object or all")
    if kind and "stream" not in found:  # a named stream is searched whatever its kind
        found["kind"] = kind
    for name in ("min_size", "max_size"):
        if get(name).strip():
            found[name] = _size(name, get(name))
    lo, hi = found.get("min_size"), found.get("max_size")
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        raise FilterError("max_size", "the largest size is below the smallest")
    return EventFilter(**found)  # type: ignore[arg-type]
