"""The tap's hot loop (eventbus.scan): the C and the Python scanner against `Chunk.add_plain`,
the general path's row encoder, and against each other on thousands of mangled inputs."""

import os
import random
import shutil
import struct
import sysconfig
from pathlib import Path

import pytest

from eventbus import scan as scan_module
from eventbus.records import Chunk, ns_to_pg_micros
from eventbus.scan import scan_py

T0 = 1_764_421_200_123_456_789  # ns since 1970
SCANNERS = {"python": scan_py}
try:
    from eventbus._scan import scan as scan_c

    SCANNERS["c"] = scan_c
except ImportError:  # pragma: no cover - `make` builds it; test_the_c_scanner_is_built says so
    pass


def delivery(subject: bytes, seq: int, payload: bytes, ts: int | None = None) -> bytes:
    ts = T0 + seq * 1000 if ts is None else ts
    reply = b"$JS.ACK.ORDERS.flowscope_tap_x.1.%d.%d.%d.%d" % (seq, seq, ts, 1000 - seq)
    return b"MSG %s 7 %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


def run(scanner, data: bytes, pos=0, next_seq=1, preview=64, day=-1):
    rows, subjects, days = bytearray(), dict[bytes | str, int](), set[int]()
    result = scanner(data, pos, 5, next_seq, preview, day, rows, subjects, days, None)
    return result, bytes(rows), subjects, days


def test_the_c_scanner_is_built():
    """`make` builds eventbus/_scan.c wherever it can (a C compiler and Python's headers); the
    tap then spends about a fifth of the CPU per event. A binary of older source is refused."""
    if os.environ.get("FLOWSCOPE_SCAN") == "python":
        pytest.skip("FLOWSCOPE_SCAN=python: the Python scanner is chosen on purpose")
    compiler = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not shutil.which(compiler):
        pytest.skip(f"no C compiler ({compiler}) on this machine: the Python scanner runs")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers (Python.h) on this machine: the Python scanner runs")
    assert scan_module.IMPLEMENTATION == "c", f"{scan_module.IMPLEMENTATION}: run `make`"
    from eventbus import _scan  # type: ignore[attr-defined]

    assert scan_module.source_sha256() == _scan.SOURCE_SHA256  # built from the source as it is


@pytest.mark.parametrize("name", sorted(SCANNERS))
def test_rows_are_those_of_add_plain(name):
    payloads = [b"", b"x", bytes(range(256)), b"\xff\xfe invalid utf-8 \xc3", b"y" * 64, b"y" * 65]
    subjects = [b"orders.created", b"orders.paid", b"orders.created", b"a.b.c~t", b"z", b"z"]
    events = list(enumerate(zip(subjects, payloads, strict=True)))
    data = b"".join(delivery(s, 10 + i, p) for i, (s, p) in events)
    (pos, count, next_seq, day, newest), rows, counts, days = run(SCANNERS[name], data, next_seq=10)
    expected = Chunk(5, 10)
    for i, (s, p) in events:
        expected.add_plain(10 + i, ns_to_pg_micros(T0 + (10 + i) * 1000), s, p, 64)
    expected.close()
    assert (pos, count, next_seq) == (len(data), 6, 16)
    assert rows == bytes(expected.rows)  # 256 and 65 bytes truncated to the preview, 64 not
    assert counts == expected.subjects == {b"orders.created": 2, b"orders.paid": 1,
                                           b"a.b.c~t": 1, b"z": 2}  # fmt: skip
    assert days == expected.day_numbers and day == expected.day
    assert newest == expected.recent


@pytest.mark.parametrize("name", sorted(SCANNERS))
def test_it_stops_where_the_general_path_must_take_over(name):
    scanner = SCANNERS[name]
    good = delivery(b"s", 1, b"p")
    stoppers = {
        "headers": b"HMSG s 7 $JS.ACK.S.c.1.2.2.1.0 12 13\r\nNATS/1.0\r\n\r\np\r\n",
        "gap": delivery(b"s", 3, b"p"),
        "re-delivery": delivery(b"s", 1, b"p"),
        "incomplete": delivery(b"s", 2, b"payload")[:-3],
        "control line cut": b"MSG s 7 $JS.AC",
        "non-ASCII subject": delivery("ü".encode(), 2, b"p"),
        "NUL in subject": delivery(b"a\x00b", 2, b"p"),
        "long subject": delivery(b"s" * 1025, 2, b"p"),
        "domain ack form": b"MSG s 7 $JS.ACK.hub.H.S.c.1.2.2.1.0.tok 1\r\np\r\n",
        "no reply": b"MSG s 7 1\r\np\r\n",
        "two spaces": b"MSG s  7 $JS.ACK.S.c.1.2.2.1.0 1\r\np\r\n",
        "signed sequence": b"MSG s 7 $JS.ACK.S.c.1.+2.2.1.0 1\r\np\r\n",
        "huge sequence": b"MSG s 7 $JS.ACK.S.c.1.99999999999999999999.2.1.0 1\r\np\r\n",
        "PING": b"PING\r\n",
        # the wire splits control lines on any ASCII whitespace: it would not read these as one
        "tab in subject": delivery(b"a\tb", 2, b"p"),
        "VT in sid": b"MSG s 7\x0b8 $JS.ACK.S.c.1.2.2.1.0 1\r\np\r\n",
        "LF in reply": b"MSG s 7 $JS.ACK.S\nX.c.1.2.2.1.0 1\r\np\r\n",
    }
    _, good_rows, _, _ = run(scanner, good)
    for what, tail in stoppers.items():
        (pos, count, next_seq, _, newest), rows, _, _ = run(scanner, good + tail)
        assert (pos, count, next_seq) == (len(good), 1, 2), what
        assert rows == good_rows, what
        assert len(newest) == 1 and newest[0][0] == 1, what


@pytest.mark.parametrize("name", sorted(SCANNERS))
def test_newest_are_the_last_twenty_and_days_change(name):
    day_ns = 86_400 * 10**9
    data = b"".join(delivery(b"s", seq, b"p", T0 + (seq // 30) * day_ns) for seq in range(1, 101))
    (pos, count, next_seq, day, newest), _, _, days = run(SCANNERS[name], data)
    assert (pos, count, next_seq) == (len(data), 100, 101)
    assert [n[0] for n in newest] == list(range(81, 101))
    first = ns_to_pg_micros(T0) // 86_400_000_000
    assert days == {first, first + 1, first + 2, first + 3} and day == first + 3


def test_c_and_python_agree_on_mangled_input():
    if "c" not in SCANNERS:
        pytest.skip("the C scanner is not built")
    rnd = random.Random(4)
    base = b"".join(
        delivery(b"orders.%d" % (i % 3), i, rnd.randbytes(i % 40)) for i in range(1, 40)
    )
    for trial in range(3000):
        mangled = bytearray(base)
        for _ in range(rnd.randint(0, 4)):
            at = rnd.randrange(len(mangled))
            choice = rnd.random()
            if choice < 0.4:
                mangled[at] = rnd.choice(b" .\r\n0123456789$JSACKMG\x00\xff")
            elif choice < 0.7:
                del mangled[at : at + rnd.randint(1, 5)]
            else:
                mangled[at:at] = rnd.choice([b" ", b".", b"\r\n", b"9", b"MSG "])
        cut = rnd.randint(0, len(mangled)) if rnd.random() < 0.3 else len(mangled)
        data = bytes(mangled[:cut])
        pos, next_seq = rnd.choice([(0, 1), (0, 2), (len(data) // 2, 1)])
        preview = rnd.choice([0, 5, 64])
        results = [
            run(scanner, data, pos=pos, next_seq=next_seq, preview=preview)
            for scanner in (SCANNERS["c"], SCANNERS["python"])
        ]
        assert results[0] == results[1], (trial, data)


# --- the C scanner inside the observer, against the observer's general path -----------------

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADER_BLOCKS = [
    b"Nats-Msg-Id: order-1\r\ntraceparent: " + TRACE + b"\r\nFlowscope-Service: orders\r\n",
    b"traceparent: " + TRACE.upper().replace(b"F", b"f", 1) + b"\r\n",  # case: read, lowered
    b"TraceParent:  \t" + TRACE + b" \r\nnats-msg-id: m\r\nflowscope-service: x\r\n",
    b"Nats-Msg-Id: a\r\nNATS-MSG-ID: b\r\n",  # exact name first
    b"nats-msg-id: a\r\nNATS-MSG-ID: b\r\n",  # else the first in any case
    b"traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
    b"traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n",
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01\r\n",
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7\r\n",
    b"traceparent: \r\nNats-Msg-Id:\r\nFlowscope-Service: \r\n",  # empty: None
    b"Content-Type: application/json\r\n",
    b'X-Quote: say "hi"\r\nX-Back: a\\b\r\n',  # JSON escapes: left to Python
    b"X-Utf8: caf\xc3\xa9\r\nX-Bad: \xff\r\n",
    b"X-Ctl: a\tb\r\nX-Nul: a\x00b\r\n",
    b"A: 1\r\nA: 2\r\n",  # twice: the last value, left to Python
    b" Spaced : v\r\nno colon\r\n",
    b"Nats-Msg-Id: " + b"m" * 1025 + b"\r\nFlowscope-Service: " + b"s" * 300 + b"\r\n",
    b"X-Long: " + b"v" * 5000 + b"\r\n",
    b"",  # no headers at all
]


def headed(subject: bytes, seq: int, block: bytes, payload: bytes, status: bytes = b"") -> bytes:
    head = b"NATS/1.0" + status + b"\r\n" + block + b"\r\n"
    reply = b"$JS.ACK.ORDERS.tap.1.%d.%d.%d.0" % (seq, seq, T0 + seq)
    return b"HMSG %s 7 %s %d %d\r\n%s%s\r\n" % (
        subject,
        reply,
        len(head),
        len(head) + len(payload),
        head,
        payload,
    )


async def observe(data: bytes, read_size: int, fast: bool) -> tuple[list[tuple[object, ...]], int]:
    """What a real WireConsumerObserver hands its (real, never started) writer for `data`,
    arriving `read_size` bytes at a time, with the scanner or with the general path only; and
    how many events the scanner read."""
    from eventbus import wire
    from eventbus.observers import ObserverSettings, WireConsumerObserver
    from eventbus.records import Gap
    from eventbus.writer import Writer

    writer = Writer("postgresql://never-connected/", buffer_size=10**9, buffer_bytes=2**40)
    observer = WireConsumerObserver(
        None, writer, "ORDERS", 5, 1, ObserverSettings(preview_bytes=64), tap_id="t"
    )
    protocol = wire._Protocol(observer._on_frames, observer._fast if fast else None)
    for i in range(0, len(data), read_size):
        protocol.data_received(data[i : i + read_size])
    # the rows, joined: where chunks end depends on reads, not on the path taken
    out: list[tuple[object, ...]] = []
    rows = bytearray()
    subjects: dict[object, int] = {}
    recent: list[object] = []
    for item in writer.items:
        if isinstance(item, Gap):
            out.append(("rows", bytes(rows), dict(subjects)))
            out.append(("gap", item.first_seq, item.last_seq))
            rows.clear()
            subjects.clear()
            continue
        rows += item.rows
        for subject, n in item.subjects.items():
            subjects[subject] = subjects.get(subject, 0) + n
        recent += item.recent
        out.append(("days", sorted(item.day_numbers), item.last_seq))
    out.append(("rows", bytes(rows), dict(subjects)))
    out.append(("recent", recent[-3:]))
    out.append(("next", observer.next_seq))
    return out, observer.scanned


async def test_the_scanner_writes_what_the_general_path_writes():
    """With the scanner in use (C, or Python under FLOWSCOPE_SCAN=python) against without."""
    rnd = random.Random(7)
    seq, parts = 0, []
    for _ in range(400):
        seq += 1
        kind = rnd.random()
        payload = rnd.choice([b"", b"{}", rnd.randbytes(rnd.randint(0, 100))])
        subject = rnd.choice([b"orders.created", b"orders.paid", "orders.ü".encode()])
        if kind < 0.3:
            parts.append(delivery(subject, seq, payload))
        elif kind < 0.9:
            parts.append(headed(subject, seq, rnd.choice(HEADER_BLOCKS), payload))
        elif kind < 0.94:
            seq += rnd.randint(1, 3)  # a gap
            parts.append(headed(subject, seq, HEADER_BLOCKS[0], payload))
        elif kind < 0.97:
            parts.append(delivery(subject, seq - 1, payload))  # a re-delivery: skipped
            seq -= 1
        else:
            parts.append(headed(b"_INBOX.x", seq, b"", b"", b" 100 Idle Heartbeat"))
            seq -= 1
    data = b"".join(parts)
    for read_size in (7, 300, 4096, len(data)):
        general, none = await observe(data, read_size, fast=False)
        scanned, by_c = await observe(data, read_size, fast=True)
        assert scanned == general, read_size  # the same rows, gaps, counts, days, newest
        assert scanned[-1] == ("next", seq + 1)
        # C: most plain and common-form headed ones; Python: the plain ones on ASCII subjects
        assert none == 0 and by_c > (150 if scan_module.IMPLEMENTATION == "c" else 60), by_c


def test_edge_numbers_and_positions():
    """Timestamps near int64's end, the last sequence, and positions anywhere (incl. huge)."""
    for name, scanner in SCANNERS.items():
        for ts in (2**63 - 1, 2**63 - 500, 2**63 - 501):
            (_, count, _, _, newest), _, _, _ = run(scanner, delivery(b"s", 1, b"p", ts))
            assert count == 1 and newest[0][1] == ns_to_pg_micros(ts), (name, ts)
        data = delivery(b"s", 2**63 - 1, b"p")
        if name == "c":  # it leaves the last int64 sequence to Python (seq + 1 would overflow)
            assert run(scanner, data, next_seq=2**63 - 1)[0][:3] == (0, 0, 2**63 - 1)
            assert run(scanner, data, next_seq=2**63)[0][:3] == (0, 0, 2**63)
        with pytest.raises(ValueError):
            run(scanner, data, pos=-1)
        good = delivery(b"s", 1, b"p")
        for pos in (len(good), len(good) + 1, 2**62, 2**63 - 5, 2**63 - 1):
            assert run(scanner, good, pos=pos)[0][:2] == (pos, 0), (name, pos)


@pytest.mark.skipif("c" not in SCANNERS, reason="the C scanner is not built")
async def test_header_names_json_escapes_are_left_to_python():
    data = b"".join(
        headed(b"s", i + 1, block, b"p")
        for i, block in enumerate([b'A"B: 1\r\n', b"A\\B: 1\r\n", b"A: 1\r\n"])
    )
    for read_size in (5, len(data)):
        general, _ = await observe(data, read_size, fast=False)
        scanned, _ = await observe(data, read_size, fast=True)
        assert scanned == general


async def test_what_the_scanner_read_is_handed_over_when_the_connection_then_fails():
    """A frame the wire cannot parse fails the connection; the events the scanner read before
    it are past `next_seq` already, so they must reach the writer, not vanish with the read."""
    data = delivery(b"s", 1, b"p") + delivery(b"s", 2, b"q") + b"MSG s 7 x\r\n"
    for fast in (False, True):
        with pytest.raises(ValueError):
            await observe(data, len(data), fast=fast)
    from eventbus import wire
    from eventbus.observers import ObserverSettings, WireConsumerObserver
    from eventbus.writer import Writer

    writer = Writer("postgresql://never-connected/")
    observer = WireConsumerObserver(None, writer, "ORDERS", 5, 1, ObserverSettings(), tap_id="t")
    protocol = wire._Protocol(observer._on_frames, observer._fast)
    with pytest.raises(ValueError):
        protocol.data_received(data)
    assert observer.next_seq == 3 and observer.scanned == 2
    assert [(c.first_seq, c.last_seq, c.count) for c in writer.items] == [(1, 2, 2)]


def _observer(writer=None):
    from eventbus.observers import ObserverSettings, WireConsumerObserver
    from eventbus.writer import Writer

    writer = writer or Writer("postgresql://never-connected/", buffer_size=10**6)
    return WireConsumerObserver(None, writer, "ORDERS", 5, 1, ObserverSettings(), tap_id="t")


async def test_a_frame_that_fails_after_scanned_ones_leaves_rows_and_next_seq_agreeing():
    from eventbus import wire

    observer = _observer()
    protocol = wire._Protocol(observer._on_frames, observer._fast)
    too_late = delivery(b"s", 2, b"q", ts=10**25)  # past int64 µs: no timestamptz holds it
    with pytest.raises(struct.error):
        protocol.data_received(delivery(b"s", 1, b"p") + too_late)
    items = [(c.first_seq, c.last_seq, c.count) for c in observer.writer.items]
    assert items == [(1, 1, 1)] and observer.next_seq == 2 and observer.chunk is None


async def test_pull_requests_are_credited_with_scanned_deliveries_in_order_with_statuses():
    """A 408 ends the oldest pull request: what arrived before it counts towards that one."""
    from collections import deque

    from eventbus import wire

    observer = _observer()
    observer.requests = deque([[5, 1e18], [5, 1e18], [5, 1e18]])
    protocol = wire._Protocol(observer._on_frames, observer._fast)
    head = b"NATS/1.0 408 Request Timeout\r\n\r\n"
    status = b"HMSG _INBOX.x 7 %d %d\r\n%s\r\n" % (len(head), len(head), head)
    protocol.data_received(
        b"".join(delivery(b"s", i, b"p") for i in (1, 2, 3))
        + status
        + b"".join(delivery(b"s", i, b"p") for i in (4, 5))
    )
    assert [r[0] for r in observer.requests] == [3, 5]
    protocol.data_received(delivery(b"s", 6, b"p"))
    assert [r[0] for r in observer.requests] == [2, 5]
    assert observer.arrived == 0 and observer.scanned == 6
