"""One recorded event, as the event page (and the JSON API) shows it: its payload in the view
that fits (pretty JSON, text, a hex dump), its headers, the `nats pub` command that publishes it
again, and the consumers that had delivered it by their lag samples.

The pure pieces (payload_kind, pretty_json, hex_dump, nats_pub_command) take bytes and strings;
load_event and delivered_by read PostgreSQL; fetch_full_payload asks NATS. Nothing here builds
HTML: the template renders every string autoescaped.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import shlex
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings

from dashboard.models import Consumer, ConsumerSample, Event, Stream
from dashboard.templatetags.humanize_bytes import human_bytes
from dashboard.topology_grouping import subject_matches

PayloadKind = Literal["json", "text", "binary"]

TEXT_LIMIT = 4 * 1024 * 1024  # a full payload beyond this is shown cut (the browser stays usable)
HEX_LIMIT = 64 * 1024  # 4,096 lines of hex dump; more is a download, not a page
HIGHLIGHT_LIMIT = 256 * 1024  # highlight.js above this size takes seconds: plain JSON then
CONSUMERS_SHOWN = 50
# The sampler's clock (the tap's) and the stream's clock (the server's) may differ a little: a
# delivery is looked for in samples from this long before the event's stream time.
CLOCK_SKEW = timedelta(minutes=1)

# C0 controls other than tab, newline, carriage return (and form feed): text that holds them is
# binary that happens to be valid UTF-8 (protobuf, msgpack), better read as a hex dump.
_BINARY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


# --- the payload --------------------------------------------------------------------------------


def decode_utf8(data: bytes, truncated: bool = False) -> str | None:
    """The payload as text, or None if it is not UTF-8. A truncated preview may end inside a
    multi-byte character: that incomplete tail is dropped, not held against the payload."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(data, final=not truncated)
    except UnicodeDecodeError:
        return None


def payload_kind(data: bytes, truncated: bool = False) -> PayloadKind:
    """json when the payload is valid UTF-8 JSON, text when it is other UTF-8 text, binary
    otherwise (invalid UTF-8, or UTF-8 with control characters no text carries). A truncated
    preview of a JSON document is cut mid-document: text."""
    return _classify(data, truncated)[0]


def _classify(data: bytes, truncated: bool) -> tuple[PayloadKind, str | None, str | None]:
    """(kind, the payload as text or None, pretty JSON or None): each computed once."""
    text = decode_utf8(data, truncated)
    if text is None or _BINARY_CONTROLS.search(text):
        return "binary", text, None
    pretty = None if truncated else pretty_json(text)
    return ("json" if pretty is not None else "text"), text, pretty


class _Number(str):
    """A JSON number as written (1.10 stays 1.10, 1e400 stays 1e400)."""


_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


def pretty_json(text: str) -> str | None:
    """`text` indented by two spaces, or None if it is not one JSON value. Numbers keep their
    spelling and objects keep repeated keys and their order: what is shown is what was sent,
    only laid out. Invisible format characters in strings are written as \\u escapes."""
    try:
        value = json.loads(
            text, object_pairs_hook=_Pairs, parse_float=_Number, parse_int=_Number,
            parse_constant=_Number,
        )  # fmt: skip
        out: list[str] = []
        _write(value, "", out)
    except (ValueError, RecursionError):
        return None
    return _escape_invisible("".join(out))


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, repeated keys included."""


def _write(value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, _Pairs):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{\n")
        for i, (k, v) in enumerate(value):
            out.append(f"{inner}{_JSON_STRING(k)}: ")
            _write(v, inner, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(indent + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[\n")
        for i, v in enumerate(value):
            out.append(inner)
            _write(v, inner, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(indent + "]")
    elif isinstance(value, _Number):
        out.append(str.__str__(value))
    elif isinstance(value, str):
        out.append(_JSON_STRING(value))
    else:  # True, False, None
        out.append(json.dumps(value))


def _escape_invisible(text: str) -> str:
    """Format characters (bidi overrides, zero-width joiners) as \\uXXXX: in JSON strings that
    is the same value, and on screen a key cannot pass for another one."""
    if text.isascii():
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in text)


def shown_text(text: str) -> str:
    """Text for the screen: control and format characters other than tab and line breaks as
    escapes (a terminal-style payload cannot hide a line or reorder one)."""
    if text.isprintable():
        return text
    return "".join(
        f"\\u{ord(c):04x}" if c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf") else c
        for c in text
    )


@dataclass(frozen=True)
class HexLine:
    offset: str  # 8 hex digits
    hex: str  # 16 bytes as pairs, an extra space after the eighth; padded to full width
    ascii: str  # printable ASCII as itself, anything else as "."


_ASCII = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))  # printable, else "."


def hex_dump(data: bytes, width: int = 16) -> list[HexLine]:
    """The classic `hexdump -C` columns: offset, bytes in hex, bytes as ASCII."""
    lines = []
    half = width // 2
    full = 3 * width  # "xx " per byte, one extra space mid-way, no trailing space
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        left, right = chunk[:half].hex(" "), chunk[half:].hex(" ")
        hexes = f"{left}  {right}" if right else left
        text = chunk.translate(_ASCII).decode("ascii")
        lines.append(HexLine(f"{start:08x}", hexes.ljust(full), text))
    return lines


@dataclass(frozen=True)
class PayloadView:
    """A payload in each view the page offers; `kind` is the one shown first."""

    kind: PayloadKind
    size: int  # bytes of the whole message payload
    shown: int  # bytes these views cover
    json: str | None  # pretty JSON, when the payload is JSON
    text: str  # as text (invalid UTF-8 replaced by U+FFFD)
    hex: list[HexLine]
    hex_cut: bool  # the hex dump covers the first HEX_LIMIT bytes only
    text_cut: bool  # the views cover the first TEXT_LIMIT bytes only
    highlight: bool  # small enough for highlight.js

    @property
    def views(self) -> list[tuple[str, str]]:
        """(key, label) of the tabs, in order."""
        tabs = [("json", "JSON")] if self.json is not None else []
        return [*tabs, ("text", "Text"), ("hex", "Hex")]

    @property
    def hex_text(self) -> str:
        """The dump as one preformatted block (one string for the template to escape: a loop
        over 4,096 lines costs the page more than everything else on it)."""
        return "".join(f"{h.offset}  {h.hex}  |{h.ascii}|\n" for h in self.hex)

    @property
    def active(self) -> str:
        return "hex" if self.kind == "binary" else self.kind


def payload_view(data: bytes, size: int | None = None, truncated: bool = False) -> PayloadView:
    """Every view of `data`, the first `size` bytes of a payload (all of it unless truncated)."""
    size = len(data) if size is None else size
    text_cut = len(data) > TEXT_LIMIT
    if text_cut:
        data, truncated = data[:TEXT_LIMIT], True
    kind, text, pretty = _classify(data, truncated)
    return PayloadView(
        kind=kind,
        size=size,
        shown=len(data),
        json=pretty,
        text=shown_text(text if text is not None else data.decode("utf-8", "replace")),
        hex=hex_dump(data[:HEX_LIMIT]),
        hex_cut=len(data) > HEX_LIMIT,
        text_cut=text_cut,
        highlight=pretty is not None and len(pretty) <= HIGHLIGHT_LIMIT,
    )


# --- `nats pub` ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PubCommand:
    command: str | None  # None when no pasteable command can publish this payload
    reason: str = ""  # why not, when command is None
    caveats: list[str] = field(default_factory=list)  # what the command cannot reproduce


def _literal_template(value: str) -> str:
    """`value` as a Go template that renders to itself: the nats CLI passes header values (and,
    without --no-templates, body and subject) through text/template, where `{{` opens an
    action; `{{"{{"}}` writes it literally."""
    return '{{"{{"}}'.join(value.split("{{"))


def nats_pub_command(
    subject: str, headers: list[tuple[str, str]], payload: bytes, truncated: bool = False
) -> PubCommand:
    """The `nats pub` command that publishes this message again, every part shell-quoted.
    `--no-templates` keeps subject and body literal; `--` ends the options, so a body that
    starts with `-` stays the body."""
    if truncated:
        return PubCommand(
            None,
            "Only a preview of the payload is stored: load the full payload from the stream "
            "to copy a command that publishes all of it.",
        )
    text = decode_utf8(payload)
    if text is None or "\x00" in text:
        return PubCommand(
            None,
            "The payload is binary: it cannot be pasted into a shell as text. "
            "Publish it from a file instead: nats pub SUBJECT < payload.bin",
        )
    caveats = []
    parts = ["nats", "pub", "--no-templates"]
    for name, value in headers:
        if value != value.strip():
            caveats.append(f"the nats CLI trims the spaces around the value of {name}")
        parts += ["-H", f"{name}:{_literal_template(value)}"]
    parts += ["--", subject, text]
    return PubCommand(" ".join(shlex.quote(p) for p in parts), caveats=caveats)


# --- headers ------------------------------------------------------------------------------------


def header_rows(headers: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) pairs in the stored order; a header with several values (stored as a list)
    gives one row per value."""
    rows: list[tuple[str, str]] = []
    for name, value in (headers or {}).items():
        values = value if isinstance(value, list) else [value]
        rows += [(str(name), "" if v is None else str(v)) for v in values]
    return rows


# --- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    consumer: str
    filters: list[str]  # the consumer's filter subjects; empty: the whole stream
    delivered: bool  # its delivered stream sequence reached the event's
    delivered_seen: datetime | None  # the first lag sample that showed it
    acked: bool  # its ack floor reached the event's sequence
    acked_seen: datetime | None
    deleted: bool  # the consumer no longer exists


def consumer_filters(config: dict[str, Any]) -> list[str]:
    many = config.get("filter_subjects") or []
    one = config.get("filter_subject") or ""
    return [str(s) for s in many] or ([str(one)] if one else [])


def _first_sample(stream: Stream, consumer: str, since: datetime, **reached: int) -> Any:
    # The (stream, consumer, ts) index, from the event's time on: only later samples are read.
    return (
        ConsumerSample.objects.filter(stream=stream, consumer=consumer, ts__gte=since, **reached)
        .order_by("ts")
        .values_list("ts", flat=True)
        .first()
    )


def delivered_by(stream: Stream, seq: int, subject: str, ts: datetime) -> list[Delivery]:
    """The consumers of this stream incarnation whose filter takes `subject`, each with whether
    (and from which lag sample on) its delivered sequence and its ack floor reached `seq`. A
    sequence reached means delivered for a consumer that started at or before it: the samples
    cannot tell a consumer that skipped older messages (deliver policy `new`)."""
    consumers = Consumer.objects.filter(stream=stream).order_by("name")[:CONSUMERS_SHOWN]
    since = ts - CLOCK_SKEW
    found = []
    for c in consumers:
        filters = consumer_filters(c.config)
        if filters and not any(subject_matches(f, subject) for f in filters):
            continue
        delivered_seen = _first_sample(stream, c.name, since, delivered_stream_seq__gte=seq)
        acked_seen = _first_sample(stream, c.name, since, ack_floor_stream_seq__gte=seq)
        found.append(
            Delivery(
                consumer=c.name,
                filters=filters,
                delivered=delivered_seen is not None or c.delivered_stream_seq >= seq,
                delivered_seen=delivered_seen,
                acked=acked_seen is not None or c.ack_floor_stream_seq >= seq,
                acked_seen=acked_seen,
                deleted=c.deleted_at is not None,
            )
        )
    return found


# --- the event ----------------------------------------------------------------------------------


@dataclass
class EventDetail:
    """Everything the event page shows."""

    event: Event
    stream: Stream  # the incarnation that holds the event
    live: bool  # that incarnation is the stream as it is now (not deleted, not re-created)
    headers: list[tuple[str, str]]
    payload: PayloadView
    preview_note: str  # "showing the first 64 KiB of 1.2 MiB", or ""
    can_fetch: bool  # the stream may still hold the full payload: worth asking
    pub: PubCommand
    deliveries: list[Delivery] | None  # None: no sequence to compare with

    @property
    def seq(self) -> int | None:
        return self.event.seq


def preview_note(stored: int, size: int) -> str:
    return f"showing the first {human_bytes(stored)} of {human_bytes(size)}"


def find_event(stream: str, seq: int | None = None, event_id: int | None = None) -> Event | None:
    """By sequence: in the newest incarnation of `stream` that holds that sequence (each lookup
    one probe of the (stream_id, seq, ts) index). By id: the event of that id, if it is one of
    `stream`'s."""
    if event_id is not None:
        return (
            Event.objects.select_related("stream").filter(id=event_id, stream__name=stream).first()
        )
    if seq is None:
        return None
    for incarnation in Stream.objects.filter(name=stream).order_by("-created"):
        found = Event.objects.filter(stream=incarnation, seq=seq).first()
        if found is not None:
            found.stream = incarnation
            return found
    return None


def is_live(incarnation: Stream) -> bool:
    """The incarnation is the stream that exists now: not deleted, no newer one."""
    if incarnation.deleted_at is not None:
        return False
    return not Stream.objects.filter(
        name=incarnation.name, created__gt=incarnation.created
    ).exists()


def load_event(
    stream: str, seq: int | None = None, event_id: int | None = None
) -> EventDetail | None:
    event = find_event(stream, seq, event_id)
    if event is None:
        return None
    incarnation = event.stream
    payload = bytes(event.payload)
    headers = header_rows(event.headers)
    live = is_live(incarnation)
    held = incarnation.messages == 0 or event.seq is None or event.seq >= incarnation.first_seq
    return EventDetail(
        event=event,
        stream=incarnation,
        live=live,
        headers=headers,
        payload=payload_view(payload, event.size, event.truncated),
        preview_note=preview_note(len(payload), event.size) if event.truncated else "",
        can_fetch=event.truncated and event.seq is not None and live and held,
        pub=nats_pub_command(event.subject, headers, payload, event.truncated),
        deliveries=(
            None
            if event.seq is None
            else delivered_by(incarnation, event.seq, event.subject, event.ts)
        ),
    )


# --- the full payload from the stream -----------------------------------------------------------


@dataclass(frozen=True)
class FullPayload:
    data: bytes | None  # None: not available, `message` says why
    message: str = ""


def matches_event(event: Event, subject: str, data: bytes) -> bool:
    """The stream's message at the event's sequence is that event: same subject, same size, and
    it starts with the stored preview (a stream deleted and created again reuses sequences)."""
    preview = bytes(event.payload)
    return subject == event.subject and len(data) == event.size and data.startswith(preview)


async def fetch_full_payload(event: Event, stream: Stream, timeout: float = 3.0) -> FullPayload:
    """The whole payload of a sequenced event, asked of the stream per request: a direct get
    (STREAM.MSG.GET when the stream does not allow direct gets). Short timeouts: a person waits."""
    import nats
    from nats.errors import Error as NatsError
    from nats.errors import NoRespondersError
    from nats.js.errors import NotFoundError

    from eventbus.natsconn import servers

    assert event.seq is not None

    async def quiet(exc: Exception) -> None:  # the answer says it; no traceback per attempt
        pass

    options: dict[str, Any] = {
        "name": "flowscope-web-get",
        "connect_timeout": timeout,
        "allow_reconnect": False,
        # each server tried twice, then NoServersError (0 would mean: try for ever)
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "error_cb": quiet,
    }
    if settings.NATS_CREDS:
        options["user_credentials"] = settings.NATS_CREDS
    gone = FullPayload(
        None,
        f"The stream no longer holds sequence {event.seq}: its retention removed it (or it was "
        "purged). Only the stored preview is left.",
    )
    try:
        nc = await asyncio.wait_for(nats.connect(servers(settings.NATS_URL), **options),
                                    2 * timeout)  # fmt: skip
    except Exception as exc:  # nats-py raises several kinds (OSError, NoServersError, ...)
        return FullPayload(None, f"NATS is unreachable ({type(exc).__name__}): try again later.")
    try:
        js = nc.jetstream(timeout=timeout)
        direct = bool(stream.config.get("allow_direct"))
        try:
            msg = await js.get_msg(stream.name, seq=event.seq, direct=direct)
        except NotFoundError:
            return gone
        except TimeoutError:
            return FullPayload(None, f"NATS did not answer within {timeout:g} s: try again.")
        except NoRespondersError:
            return FullPayload(None, f"NATS has no stream {stream.name} any more: only the "
                               "stored preview is left.")  # fmt: skip
        except NatsError as exc:
            if "not found" in str(exc).lower():
                return gone
            return FullPayload(None, f"NATS refused the request: {exc}")
        data = msg.data or b""
        if not matches_event(event, msg.subject or "", data):
            return FullPayload(None, f"The stream's message at sequence {event.seq} is not this "
                               "event any more (the stream was re-created): only the stored "
                               "preview is left.")  # fmt: skip
        return FullPayload(data)
    finally:
        await nc.close()
