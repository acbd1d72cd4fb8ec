"""The tap's hottest loop: a run of plain deliveries, straight from the socket's bytes into
binary COPY rows.

A pull consumer's deliveries arrive as `MSG <subject> <sid> <reply> <size>\\r\\n<payload>\\r\\n`,
the reply being the 9-token ack subject `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>
.<consumer seq>.<timestamp ns>.<pending>`. `scan` reads as many consecutive such deliveries as
it can, starting at `pos`, and writes each as `Chunk.add_plain` would. It stops, leaving the
frame to the general path (eventbus.wire + the observer), at the first frame that is anything
else or anything less usual:

- not `MSG` (headers, PING, INFO, ...) or not all of it has arrived yet;
- a subject that is not plain (`plain_subject`), a control line not separated by single spaces;
- a reply that is not the 9-token form with decimal sequence and timestamp;
- a sequence other than `next_seq` (a gap or a re-delivery: the observer records those).

So it only ever does the common case, and the general path stays the reference for all others.
Two implementations with the same contract: `eventbus._scan` (C, built by `make`; see
setup.py), about 15 times as fast (0.3 against 4-5 µs a delivery, replayed without a socket; the
whole tap process then spends about 1.5 µs of CPU per event instead of 7), and `scan_py` here,
used when the C one is not built, is of older source, or `FLOWSCOPE_SCAN=python`. Tests hold
them to the same results byte for byte. The C one also reads headed deliveries (`HMSG`) of the
common form: no status line, `Name: value` headers of printable ASCII that JSON needs not
escape, no name twice; it writes them as `Chunk.add_headed` does, and tests hold it to the
general path's rows for every case it takes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from eventbus.records import (
    _DAY_US,
    NEWEST,
    Recent,
    ns_to_pg_micros,
    plain_subject,
    write_plain_row,
)

# (pos after the last frame read, frames read, next_seq, day of the last event, newest events)
ScanResult = tuple[int, int, int, int, list[Recent]]
Scan = Callable[
    [bytes, int, int, int, int, int, bytearray, dict[bytes | str, int], set[int], bytes | None],
    ScanResult,
]

_INT64_MAX = 2**63 - 1
_CRLF = b"\r\n"


def _number(token: bytes, digits: int) -> int:
    """A decimal token of at most `digits` digits that fits int64, else -1."""
    if not token.isdigit() or len(token) > digits:
        return -1
    value = int(token)
    return value if value <= _INT64_MAX else -1


def scan_py(
    data: bytes,
    pos: int,
    stream_id: int,
    next_seq: int,
    preview: int,
    day: int,
    rows: bytearray,
    subjects: dict[bytes | str, int],
    days: set[int],
    service_header: bytes | None = None,
) -> ScanResult:
    """Read plain deliveries from `data[pos:]` into `rows` (binary COPY), counting them per
    subject in `subjects` and adding each new day (since 2000-01-01) to `days`. (The C scanner
    also reads headed deliveries, naming the service by `service_header`; this one leaves them
    to the general path.)"""
    if pos < 0 or preview < 0:
        raise ValueError("pos and preview must not be negative")
    count = 0
    newest: list[Recent] = []
    end = len(data)
    find, startswith = data.find, data.startswith
    while startswith(b"MSG ", pos):
        eol = find(_CRLF, pos)
        if eol < 0:
            break
        line = data[pos + 4 : eol]
        parts = line.split(b" ")
        if len(parts) != 4 or parts != line.split():  # as the wire splits it: no other whitespace
            break
        subject, _sid, reply, size_token = parts
        if not plain_subject(subject):
            break
        if not reply.startswith(b"$JS.ACK.") or reply.count(b".") != 8:
            break
        _, seq_token, _, ts_token, _ = reply.rsplit(b".", 4)
        seq, ts_ns, size = _number(seq_token, 19), _number(ts_token, 19), _number(size_token, 9)
        if seq != next_seq or ts_ns < 0 or size < 0:
            break
        start = eol + 2
        stop = start + size
        if stop + 2 > end:
            break  # not all here yet
        ts = ns_to_pg_micros(ts_ns)
        write_plain_row(rows, stream_id, seq, ts, subject, data[start:stop], preview)
        subjects[subject] = subjects.get(subject, 0) + 1
        if ts // _DAY_US != day:
            day = ts // _DAY_US
            days.add(day)
        newest.append((seq, ts, subject, size, None, None, None))
        count += 1
        next_seq = seq + 1
        pos = stop + 2
    return pos, count, next_seq, day, newest[-NEWEST:]


def source_sha256() -> str | None:
    """The SHA-256 of eventbus/_scan.c as it is now (None where the source is not shipped)."""
    source = Path(__file__).with_name("_scan.c")
    return hashlib.sha256(source.read_bytes()).hexdigest() if source.exists() else None


def _load() -> tuple[Scan, str]:
    if os.environ.get("FLOWSCOPE_SCAN") == "python":  # to compare, or to rule the C one out
        return scan_py, "python"
    try:
        from eventbus import _scan  # type: ignore[attr-defined]
    except ImportError:
        return scan_py, "python"
    if source_sha256() not in (None, _scan.SOURCE_SHA256):
        return scan_py, "python (the C build is of older source: run make)"
    return _scan.scan, "c"


scan, IMPLEMENTATION = _load()
