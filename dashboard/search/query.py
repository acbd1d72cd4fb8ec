"""Searching the stored events, newest first, never silently wrong.

How a filter is served (`plan`):
- `trace` / `msg_id`: a B-tree finds the few events outright; the answer is complete.
- `stream`: the stream's incarnations newest first, each walked backwards by sequence on the
  unique index (stream_id, seq, ts): a stream's newest page is a short backward index scan.
- `time`: everything else walks backwards through time windows (BRIN on ts), each window a
  bounded query, the window growing fourfold while it finds too little.
Both walks stop at the time budget. A walk that stops early does not answer "no events": its
`coverage` says exactly what was searched (how many events, from when to when) and `next`
continues into older events. Pages are keyset-paginated (no OFFSET) on (ts, id) or seq, so
events arriving meanwhile neither repeat nor shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.utils import OperationalError

from dashboard.models import Stream
from dashboard.search.filters import EventFilter, FilterError
from eventbus import subjects

MAX_LIMIT = 500
DEFAULT_BUDGET = 2.0  # seconds a search may spend before it says how far it got
PREVIEW = 240  # payload bytes carried by a result row
FIRST_WINDOW = timedelta(minutes=1)
FIRST_SEQ_WINDOW = 4096
GROWTH = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = (
    "id, stream_id, seq, ts, subject, size, headers, msg_id, trace_id, service, truncated,"
    f" substring(payload from 1 for {PREVIEW})"
)


class CursorError(FilterError):
    def __init__(self, message: str) -> None:
        super().__init__("cursor", message)


@dataclass
class Coverage:
    """What a search that stopped on its time budget did search."""

    oldest: datetime | None  # the oldest time searched
    newest: datetime | None  # the newest (None: up to now)
    searched: int | None  # events looked at (exact), None when counting them ran out of time
    stream: str = ""  # set when the walk was through one stream's sequences
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass
class Page:
    items: list[dict[str, Any]]
    next: str | None
    plan: str
    coverage: Coverage | None = None  # None: the answer is complete up to `limit`
    elapsed_ms: float = 0.0
    exact_total: int | None = None  # the number of matches, when the search saw them all

    @property
    def complete(self) -> bool:
        return self.coverage is None


@dataclass
class _Segment:
    key: str
    axis: str  # "time" or "seq"
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)


# -- cursors -----------------------------------------------------------------------------------


def encode_cursor(f: EventFilter, segment: str, seq: int | None, ts: int | None, id_: int) -> str:
    body = {"f": f.fingerprint(), "g": segment, "s": seq, "t": ts, "i": id_}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(f: EventFilter, text: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor this search gave out") from None
    if not isinstance(body, dict) or not isinstance(body.get("g"), str):
        raise CursorError("not a cursor this search gave out")
    if body.get("f") != f.fingerprint():
        raise CursorError("the cursor belongs to another filter: start again from the first page")
    for key in ("s", "t", "i"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise CursorError("not a cursor this search gave out")
    return body


def micros(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# -- predicates --------------------------------------------------------------------------------


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _plain(text: str) -> bool:
    """Text that JSON writes as itself (so its bytes can narrow the search before parsing)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


# a name past the prefix, as dashboard/pages/overview.py's kind_of: a stream named `KV_` is a stream
STORE_PREFIXES = {"kv": "KV\\__%", "object": "OBJ\\__%"}


def kind_ids(kind: str) -> list[int]:
    """Ids of every incarnation (deleted ones too) of the KV buckets (`kv`), the object stores
    (`object`) or both (`store`)."""
    patterns = list(STORE_PREFIXES.values()) if kind == "store" else [STORE_PREFIXES[kind]]
    with connection.cursor() as cur:
        cur.execute("SELECT id FROM flowscope_stream WHERE name LIKE ANY(%s)", [patterns])
        return [r[0] for r in cur.fetchall()]


def kind_filter_ids(f: EventFilter) -> list[int] | None:
    """The stream ids `kind` turns on: the stores' for `stream` (left out), the buckets' or
    the object stores' (kept); None when the filter names no kind."""
    if f.kind == "stream":
        return kind_ids("store")
    return kind_ids(f.kind) if f.kind in STORE_PREFIXES else None


def predicates(
    f: EventFilter, now: datetime, kinds: list[int] | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) for every field but `stream`; `kinds` as
    kind_filter_ids(f) gives them."""
    where: list[str] = []
    params: list[Any] = []
    if f.subject:
        if subjects.has_wildcard(f.subject):
            prefix = subjects.literal_prefix(f.subject)
            if prefix:
                where.append("subject LIKE %s")
                params.append(_like_escape(prefix) + "%")
            where.append("subject ~ %s")
            params.append(subjects.to_regex(f.subject))
        else:
            where.append("subject = %s")
            params.append(f.subject)
    since, until = f.window(now)
    if since is not None:
        where.append("ts >= %s")
        params.append(since)
    if until is not None:
        where.append("ts < %s")
        params.append(until)
    for name in ("service", "trace_id", "msg_id"):
        if getattr(f, name):
            where.append(f"{name} = %s")
            params.append(getattr(f, name))
    if f.header:
        where.append("headers @> %s::jsonb")
        params.append(json.dumps({f.header[0]: f.header[1]}))
    if f.text:
        where.append("position(%s::bytea in payload) > 0")
        params.append(f.text.encode())
    if f.json:
        path, value = f.json
        # bytes that any match must contain narrow the rows before any is parsed as JSON
        if _plain(path[-1]):
            where.append("position(%s::bytea in payload) > 0")
            params.append(f'"{path[-1]}"'.encode())
        if value and _plain(value):
            where.append("position(%s::bytea in payload) > 0")
            params.append(value.encode())
        where.append("flowscope_try_jsonb(payload) #>> %s = %s")
        params.extend([list(path), value])
    if f.kind == "stream" and kinds:  # not a KV bucket's nor an object store's
        where.append("NOT (stream_id = ANY(%s))")
        params.append(kinds)
    elif f.kind in STORE_PREFIXES:
        where.append("stream_id = ANY(%s)")
        params.append(kinds or [])
    if f.min_size is not None:
        where.append("size >= %s")
        params.append(f.min_size)
    if f.max_size is not None:
        where.append("size <= %s")
        params.append(f.max_size)
    return where, params


# -- running -----------------------------------------------------------------------------------


class _OutOfTime(Exception):
    pass


@contextmanager
def _bounded(deadline: float) -> Iterator[Any]:
    """A cursor whose statements are cancelled at `deadline` (raises _OutOfTime)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0.01:
        raise _OutOfTime
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = {max(10, int(remaining * 1000))}")
            yield cur
    except OperationalError as exc:
        if "statement timeout" in str(exc) or "canceling statement" in str(exc):
            raise _OutOfTime from exc
        raise


def _fetch(deadline: float, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with _bounded(deadline) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def _scalar(sql: str, params: list[Any]) -> Any:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None


def incarnations(name: str) -> list[Stream]:
    return list(Stream.objects.filter(name=name).order_by("-created", "-id"))


def oldest_partition_start() -> datetime | None:
    """Where the time walk ends: the lower bound of the oldest day partition (no B-tree on ts
    to ask min(ts) of; partitions are named by day, eventbus/partitions.py)."""
    name = _scalar(
        "SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'flowscope_event'::regclass",
        [],
    )
    if not name:
        return None
    day = datetime.strptime(str(name).rsplit("_p", 1)[1], "%Y%m%d")
    return day.replace(tzinfo=UTC)


def _segments(
    f: EventFilter, kinds: list[int] | None
) -> tuple[str, list[_Segment], dict[int, str]]:
    """The plan, the parts it walks in order, and the stream names by id (`kinds`: as
    kind_filter_ids(f) gives them)."""
    if f.trace_id or f.msg_id:
        names: dict[int, str] = {}
        seg = _Segment("index", "index")
        if f.stream:
            ids = [s.id for s in incarnations(f.stream)]
            if not ids:
                raise FilterError("stream", f"no stream named '{f.stream[:80]}' is known")
            seg.where.append("stream_id = ANY(%s)")
            seg.params.append(ids)
        return ("trace" if f.trace_id else "msg_id"), [seg], names
    if not f.stream:
        # by subject when nothing else filters the rows (a scan per subject reads them all;
        # the time walk, which can say how far it got, serves the rest)
        alone = not (f.text or f.json or f.header or f.service or f.min_size or f.max_size)
        stored = stored_subjects(f.subject) if f.subject and alone else None
        if stored is not None:  # a few concrete subjects: one index scan each, merged
            return "subject", [_Segment("subjects", "subjects", [], [stored])], {}
        if f.kind in STORE_PREFIXES and not kinds:  # no such stream: nothing to walk
            return "time", [], {}
        return "time", [_Segment("all", "time")], {}
    streams = incarnations(f.stream)
    if not streams:
        raise FilterError("stream", f"no stream named '{f.stream[:80]}' is known")
    segs: list[_Segment] = []
    for s in streams:
        segs.append(_Segment(f"{s.id}:seq", "seq", ["stream_id = %s"], [s.id]))
        segs.append(_Segment(f"{s.id}:null", "time", ["stream_id = %s", "seq IS NULL"], [s.id]))
    return "stream", segs, {s.id: s.name for s in streams}


MAX_SUBJECTS = 64  # concrete subjects a filter may expand to before the time walk serves it


def stored_subjects(pattern: str) -> list[str] | None:
    """The stored subjects `pattern` matches, when there are at most MAX_SUBJECTS of them under
    its literal prefix: found by skipping through the (subject, ts) index one distinct subject
    at a time (a loose index scan), not by reading events. None: too many, or no prefix to
    narrow by (the time walk serves those; matches are common there)."""
    if not subjects.has_wildcard(pattern):
        return [pattern]
    prefix = subjects.literal_prefix(pattern)
    if not prefix:
        return None
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the prefix ends with "."; "/" follows it
    with connection.cursor() as cur:
        cur.execute(
            """
            WITH RECURSIVE s(subject, n) AS (
                (SELECT subject COLLATE "C", 1 FROM flowscope_event
                 WHERE subject COLLATE "C" >= %(lo)s AND subject COLLATE "C" < %(hi)s
                 ORDER BY subject COLLATE "C" LIMIT 1)
                UNION ALL
                SELECT (SELECT e.subject COLLATE "C" FROM flowscope_event e
                        WHERE e.subject COLLATE "C" > s.subject
                          AND e.subject COLLATE "C" < %(hi)s
                        ORDER BY e.subject COLLATE "C" LIMIT 1), n + 1
                FROM s WHERE s.subject IS NOT NULL AND n <= %(most)s
            )
            SELECT subject FROM s WHERE subject IS NOT NULL
            """,
            {"lo": prefix, "hi": upper, "most": MAX_SUBJECTS},
        )
        found = [r[0] for r in cur.fetchall()]
    if len(found) > MAX_SUBJECTS:
        return None
    return [x for x in found if subjects.matches(pattern, x)]


def _subject_rows(
    seg: _Segment, where: list[str], params: list[Any], pos: dict[str, Any] | None,
    want: int, deadline: float,
) -> list[tuple[Any, ...]]:  # fmt: skip
    """The newest matches of each concrete subject (one backward scan of (subject, ts) each),
    merged newest first."""
    names: list[str] = seg.params[0]
    if not names:
        return []
    at = from_micros(pos["t"]) if pos is not None and pos.get("t") is not None else None
    parts: list[str] = []
    args: list[Any] = []
    for name in names:
        conds = ['subject COLLATE "C" = %s', *where]
        args += [name, *params]
        if at is not None and pos is not None:
            conds += ["ts <= %s", "(ts, id) < (%s, %s)"]
            args += [at, at, pos["i"]]
        parts.append(
            f"(SELECT {COLUMNS} FROM flowscope_event WHERE {' AND '.join(conds)}"
            f" ORDER BY ts DESC, id DESC LIMIT {want})"
        )
    union = " UNION ALL ".join(parts)
    sql = f"SELECT * FROM ({union}) AS merged ORDER BY ts DESC, id DESC LIMIT {want}"
    try:
        return _fetch(deadline, sql, args)
    except _OutOfTime:
        raise _Stopped([], None, None, None, None) from None


class _Stopped(Exception):
    """A walk ran out of time: what it found, and where it got to."""

    def __init__(self, rows: list[tuple[Any, ...]], seq: int | None, ts: int | None,
                 top_seq: int | None, top_ts: int | None) -> None:  # fmt: skip
        super().__init__("out of time")
        self.rows = rows
        self.seq = seq  # the walk searched sequences >= seq (seq axis) ...
        self.ts = ts  # ... or times >= ts (time axis, micros)
        self.top_seq = top_seq  # from where it started
        self.top_ts = top_ts


def _select(seg: _Segment, where: list[str], extra: list[str], order: str, limit: int) -> str:
    conds = seg.where + where + extra
    clause = " AND ".join(conds) if conds else "true"
    return f"SELECT {COLUMNS} FROM flowscope_event WHERE {clause} ORDER BY {order} LIMIT {limit}"


def _index_rows(
    seg: _Segment, where: list[str], params: list[Any], pos: dict[str, Any] | None,
    want: int, deadline: float,
) -> list[tuple[Any, ...]]:  # fmt: skip
    extra: list[str] = []
    args = seg.params + params
    if pos is not None and pos.get("t") is not None:
        extra.append("(ts, id) < (%s, %s)")
        args = [*args, from_micros(pos["t"]), pos["i"]]
    try:
        return _fetch(deadline, _select(seg, where, extra, "ts DESC, id DESC", want), args)
    except _OutOfTime:
        raise _Stopped([], None, None, None, None) from None


def _walk_seq(
    seg: _Segment, where: list[str], params: list[Any], pos: dict[str, Any] | None,
    want: int, deadline: float, since: datetime | None, until: datetime | None,
) -> list[tuple[Any, ...]]:  # fmt: skip
    """Backwards through one incarnation's sequences, in growing windows."""
    sid = seg.params[0]
    if pos is not None and pos.get("s") is not None:
        top = int(pos["s"])
    else:  # (an `until` prunes the partitions after it, so the backward scan starts there)
        cond, args = ("AND ts < %s", [sid, until]) if until is not None else ("", [sid])
        newest = _scalar(f"SELECT max(seq) FROM flowscope_event WHERE stream_id = %s {cond}", args)
        if newest is None:
            return []
        top = int(newest) + 1
    floor = _scalar("SELECT min(seq) FROM flowscope_event WHERE stream_id = %s", [sid])
    if floor is None:
        return []
    found: list[tuple[Any, ...]] = []
    hi, width = top, FIRST_SEQ_WINDOW
    while hi > floor and len(found) < want:
        lo = max(int(floor), hi - width)
        extra = ["seq >= %s", "seq < %s"]
        sql = _select(seg, where, extra, "seq DESC", want - len(found))
        try:
            batch = _fetch(deadline, sql, seg.params + params + [lo, hi])
        except _OutOfTime:
            raise _Stopped(found, hi, None, top, None) from None
        found += batch
        if since is not None and batch == [] and _older_than(sid, lo, since):
            break  # the stream's events from here down are all before the range
        hi, width = lo, width * GROWTH
    return found


def _older_than(stream_id: int, seq: int, since: datetime) -> bool:
    ts = _scalar(
        "SELECT ts FROM flowscope_event WHERE stream_id = %s AND seq = %s", [stream_id, seq]
    )
    return ts is not None and ts < since


def _walk_time(
    seg: _Segment, where: list[str], params: list[Any], pos: dict[str, Any] | None,
    want: int, deadline: float, since: datetime | None, until: datetime | None, now: datetime,
) -> list[tuple[Any, ...]]:  # fmt: skip
    """Backwards through time in growing windows (BRIN on ts), newest first."""
    start = oldest_partition_start()
    if start is None:
        return []
    floor = max(start, since) if since is not None else start
    keyset: list[Any] = []
    if pos is not None and pos.get("t") is not None:
        top = from_micros(pos["t"])
        keyset = [top, pos["i"]]
    elif until is not None:
        top = until  # the walk starts where the range ends, not at now
    else:
        top = None  # open: the first window takes everything newer than now - FIRST_WINDOW
    found: list[tuple[Any, ...]] = []
    hi, width = top, FIRST_WINDOW
    while (hi is None or hi > floor) and len(found) < want:
        lo = max(floor, (hi or now) - width)
        extra = ["ts >= %s"]
        args: list[Any] = seg.params + params + [lo]
        if keyset:
            extra += ["ts <= %s", "(ts, id) < (%s, %s)"]
            args += [keyset[0], keyset[0], keyset[1]]
        elif hi is not None:
            extra.append("ts < %s")
            args.append(hi)
        sql = _select(seg, where, extra, "ts DESC, id DESC", want - len(found))
        try:
            batch = _fetch(deadline, sql, args)
        except _OutOfTime:
            reached = hi or now
            raise _Stopped(
                found, None, micros(reached), None, micros(top) if top else None
            ) from None
        found += batch
        hi, width, keyset = lo, width * GROWTH, []
    return found


def _coverage(
    f: EventFilter, seg: _Segment, stop: _Stopped, names: dict[int, str], now: datetime
) -> Coverage:
    """Says what a stopped walk searched; counting it gets a second of its own."""
    deadline = time.monotonic() + 1.0
    if seg.axis == "seq" and stop.seq is not None:
        sid = seg.params[0]
        top = stop.top_seq or stop.seq
        searched = _count(
            deadline, "stream_id = %s AND seq >= %s AND seq < %s", [sid, stop.seq, top]
        )
        at = (
            "SELECT ts FROM flowscope_event"
            " WHERE stream_id = %s AND seq {} %s ORDER BY seq {} LIMIT 1"
        )
        oldest = _scalar(at.format(">=", "ASC"), [sid, stop.seq])
        newest = _scalar(at.format("<", "DESC"), [sid, top])
        return Coverage(oldest, newest, searched, f.stream, stop.seq, top - 1)
    if stop.ts is None:  # an index lookup that ran out of time: nothing to say but that
        return Coverage(None, None, None)
    oldest = from_micros(stop.ts)
    newest = from_micros(stop.top_ts) if stop.top_ts is not None else None
    conds = seg.where + ["ts >= %s"] + (["ts < %s"] if newest else [])
    args = seg.params + [oldest] + ([newest] if newest else [])
    return Coverage(oldest, newest or now, _count(deadline, " AND ".join(conds), args))


def _count(deadline: float, where: str, params: list[Any]) -> int | None:
    try:
        rows = _fetch(deadline, f"SELECT count(*) FROM flowscope_event WHERE {where}", params)
    except _OutOfTime:
        return None
    return int(rows[0][0])


def _cursor_after(f: EventFilter, seg_key: str, row: tuple[Any, ...]) -> str:
    return encode_cursor(
        f, seg_key, row[2] if seg_key.endswith(":seq") else None, micros(row[3]), row[0]
    )


def _names(names: dict[int, str], rows: list[tuple[str, tuple[Any, ...]]]) -> None:
    missing = {r[1] for _, r in rows} - names.keys()
    if missing:
        names.update(Stream.objects.filter(id__in=missing).values_list("id", "name"))


def preview_text(data: bytes | memoryview | None) -> str | None:
    """The payload's start as text, or None when it is not UTF-8 text."""
    if data is None:
        return None
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(raw) - 3:  # not just a character cut in half at the end
            return None
        text = raw[: exc.start].decode("utf-8")
    return " ".join(text.split())


def _item(row: tuple[Any, ...], names: dict[int, str]) -> dict[str, Any]:
    id_, sid, seq, ts, subject, size, headers, msg_id, trace_id, service, truncated, head = row
    return {
        "id": id_,
        "stream": names.get(sid, str(sid)),
        "seq": seq,
        "subject": subject,
        "ts": ts,
        "size": size,
        "headers": headers
        if isinstance(headers, dict)
        else (json.loads(headers) if headers else None),
        "msg_id": msg_id,
        "trace_id": trace_id,
        "service": service,
        "truncated": truncated,
        "preview": preview_text(head),
    }


def search_events(
    f: EventFilter,
    limit: int = 50,
    cursor: str | None = None,
    budget: float = DEFAULT_BUDGET,
    now: datetime | None = None,
) -> Page:
    """The newest `limit` events matching `f` older than `cursor`. FilterError (a field and
    a reason) for an unknown stream, a bad limit or a cursor that is not this filter's."""
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError("limit", f"a limit is between 1 and {MAX_LIMIT}")
    started = time.monotonic()
    deadline = started + budget
    now = now or datetime.now(UTC)
    kinds = kind_filter_ids(f)  # asked once, for the plan and the conditions
    plan, segments, names = _segments(f, kinds)
    position = decode_cursor(f, cursor) if cursor else None
    start_index = 0
    if position is not None:
        keys = [s.key for s in segments]
        if position["g"] not in keys:
            raise CursorError("the part of the search this cursor was in is gone: start again")
        start_index = keys.index(position["g"])
    where, params = predicates(f, now, kinds)
    since, until = f.window(now)
    want = limit + 1  # one more than shown tells whether there is a next page
    rows: list[tuple[str, tuple[Any, ...]]] = []
    coverage: Coverage | None = None
    stopped_at: str | None = None
    for i in range(start_index, len(segments)):
        seg = segments[i]
        pos = position if i == start_index else None
        need = want - len(rows)
        try:
            if seg.axis == "index":
                found = _index_rows(seg, where, params, pos, need, deadline)
            elif seg.axis == "subjects":
                found = _subject_rows(seg, where, params, pos, need, deadline)
            elif seg.axis == "seq":
                found = _walk_seq(seg, where, params, pos, need, deadline, since, until)
            else:
                found = _walk_time(seg, where, params, pos, need, deadline, since, until, now)
        except _Stopped as stop:
            rows += [(seg.key, r) for r in stop.rows]
            if len(rows) < want:
                coverage = _coverage(f, seg, stop, names, now)
                stopped_at = encode_cursor(f, seg.key, stop.seq, stop.ts, 0)
            break
        rows += [(seg.key, r) for r in found]
        if len(rows) >= want:
            break
    _names(names, rows)
    items = [_item(r, names) for _, r in rows[:limit]]
    if len(rows) > limit:
        key, row = rows[limit - 1]
        nxt: str | None = _cursor_after(f, key, row)
    else:
        nxt = stopped_at
    page = Page(items, nxt, plan, coverage, (time.monotonic() - started) * 1000)
    if nxt is None and position is None:
        page.exact_total = len(items)
    return page
