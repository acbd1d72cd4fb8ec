"""Pure logic of the tap: parsing what NATS sends, choosing how to observe a stream."""

from datetime import UTC, datetime, timedelta

from eventbus.lease import share, stream_key
from eventbus.observers import choose_observer, republish_pattern
from eventbus.partitions import parse_retention, partition_name
from eventbus.records import (
    Chunk,
    ack_position,
    build_record,
    encode_record,
    ns_to_pg_micros,
    parse_ack_subject,
    parse_nats_time,
    parse_traceparent,
    pg_micros,
    pg_micros_to_datetime,
    plain_subject,
)

TS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TS_PG = pg_micros(TS)


def test_ack_subject_plain_form():
    meta = parse_ack_subject("$JS.ACK.ORDERS.tap.1.42.7.1764000000123456789.3")
    assert meta is not None
    assert (meta.stream, meta.consumer, meta.stream_seq, meta.consumer_seq, meta.pending) == (
        "ORDERS",
        "tap",
        42,
        7,
        3,
    )
    assert meta.timestamp_ns == 1764000000123456789


def test_ack_subject_domain_form():
    meta = parse_ack_subject("$JS.ACK.hub.ACCHASH.ORDERS.tap.2.42.7.1764000000123456789.0.tok")
    assert meta is not None and meta.stream == "ORDERS" and meta.stream_seq == 42
    assert meta.delivered == 2


def test_ack_subject_rejects_anything_else():
    assert parse_ack_subject("_INBOX.abc") is None
    assert parse_ack_subject("$JS.ACK.a.b.c.d.e.f") is None
    assert parse_ack_subject("$JS.ACK.S.c.x.42.7.1.0") is None


def test_traceparent_valid_and_case_insensitive():
    value = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"
    assert parse_traceparent(value) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


def test_traceparent_invalid_values_are_ignored():
    for value in [None, "", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                  "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
                  "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"]:  # fmt: skip
        assert parse_traceparent(value) is None, value


def test_record_keeps_a_bounded_byte_exact_preview():
    data = bytes(range(256)) * 10
    rec = build_record(stream_id=1, seq=5, ts=TS_PG, subject="a.b", data=data, headers=None,
                       preview_bytes=1000, service_header="Flowscope-Service")  # fmt: skip
    assert rec.size == 2560 and rec.payload == data[:1000] and rec.truncated
    small = build_record(stream_id=1, seq=6, ts=TS_PG, subject="a.b", data=b"\xff\xfe",
                         headers=None, preview_bytes=1000,
                         service_header="Flowscope-Service")  # fmt: skip
    assert small.payload == b"\xff\xfe" and not small.truncated


def test_record_reads_headers_case_insensitively_and_strips_nul():
    headers = {
        "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "nats-msg-id": "order-1",
        "flowscope-service": "orders",
        "X-Odd": "a\x00b",
    }
    rec = build_record(stream_id=1, seq=1, ts=TS_PG, subject="s\x00", data=b"", headers=headers,
                       preview_bytes=10, service_header="Flowscope-Service")  # fmt: skip
    assert rec.trace_id == "0af7651916cd43dd8448eb211c80319c" and rec.span_id == "b7ad6b7169203331"
    assert rec.msg_id == "order-1" and rec.service == "orders"
    assert rec.headers is not None and rec.headers["X-Odd"] == "a\ufffdb"
    assert rec.subject == "s\ufffd"


def test_nats_time_with_nanoseconds():
    assert parse_nats_time("2026-01-02T03:04:05.123456789Z") == TS.replace(microsecond=123456)
    assert parse_nats_time("2026-01-02T03:04:05Z") == TS
    assert parse_nats_time("yesterday") is None


def test_observation_mode_per_retention():
    assert choose_observer({"retention": "limits"})[0] == "consumer"
    assert choose_observer({"retention": "interest"})[0] == "consumer"
    mode, note = choose_observer({"retention": "workqueue"})
    assert mode == "subject" and "without the stream sequence" in note
    mode, _ = choose_observer({"retention": "workqueue", "republish": {"src": ">", "dest": "x.>"}})
    assert mode == "republish"


def test_republish_pattern_turns_mappings_into_wildcards():
    assert republish_pattern("flowscope.rp.ORDERS.>") == "flowscope.rp.ORDERS.>"
    assert republish_pattern("rp.{{wildcard(1)}}.x") == "rp.*.x"
    assert republish_pattern("rp.$1") == "rp.*"


def test_retention_and_partition_names():
    assert parse_retention("7d") == timedelta(days=7)
    assert parse_retention("12h") == timedelta(hours=12)
    assert parse_retention("90") == timedelta(seconds=90)
    assert partition_name(TS.date()) == "flowscope_event_p20260102"


def test_lease_share_and_keys():
    assert share(4, 2) == 2 and share(5, 2) == 3 and share(3, 0) == 3
    assert stream_key("ORDERS") == stream_key("ORDERS") != stream_key("ORDERS2")
    assert -(2**31) <= stream_key("x" * 300) < 2**31


def test_ack_position_agrees_with_parse_ack_subject():
    for reply in (
        "$JS.ACK.ORDERS.tap.1.42.7.1764000000123456789.3",
        "$JS.ACK.hub.ACCHASH.ORDERS.tap.2.42.7.1764000000123456789.0.tok",
    ):
        meta = parse_ack_subject(reply)
        assert meta is not None
        assert ack_position(reply.encode()) == (meta.stream_seq, meta.timestamp_ns)
    for bad in (
        "_INBOX.abc",
        "$JS.ACK.a.b.c.d.e.f",
        "$JS.ACK.S.c.1.x.7.1.0",  # no sequence
        "$JS.ACK.S.c.1.42.7.y.0",  # no timestamp
    ):
        assert ack_position(bad.encode()) is None, bad


def test_stream_time_to_postgres_microseconds():
    assert ns_to_pg_micros(1_764_000_000_123_456_789) == pg_micros(
        datetime(2025, 11, 24, 16, 0, 0, 123457, tzinfo=UTC)
    )  # rounded to the microsecond
    assert ns_to_pg_micros(1_764_000_001_000_000_000) == pg_micros(
        datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)
    )
    assert ns_to_pg_micros(946_684_800 * 10**9) == 0  # PostgreSQL's epoch
    assert pg_micros_to_datetime(TS_PG) == TS


def test_plain_rows_match_the_general_encoder():
    """The fast path (no headers, plain subject) writes the very bytes the general one does."""
    for data, preview in ((b"x" * 10, 64), (bytes(range(256)) * 4, 100), (b"", 8)):
        fast = Chunk(7, 41)
        fast.add_plain(41, TS_PG, b"orders.created", data, preview)
        rec = build_record(stream_id=7, seq=41, ts=TS_PG, subject="orders.created", data=data,
                           headers=None, preview_bytes=preview,
                           service_header="Flowscope-Service")  # fmt: skip
        assert bytes(fast.rows) == encode_record(rec)
        assert fast.count == 1 and fast.first_seq == fast.last_seq == 41


def test_chunk_bookkeeping():
    chunk = Chunk(3, 10)
    for i in range(30):
        chunk.add_plain(10 + i, TS_PG + i * 86_400_000_000 // 2, f"s.{i % 3}".encode(), b"p", 64)
    chunk.close()
    assert (chunk.count, chunk.first_seq, chunk.last_seq) == (30, 10, 39)
    assert chunk.subjects == {b"s.0": 10, b"s.1": 10, b"s.2": 10}
    assert [r[0] for r in chunk.recent] == list(range(20, 40))  # the newest, in order
    assert chunk.days() == {TS.date() + timedelta(days=d) for d in range(15)}  # 14.5 days
    sparse = Chunk(3, 1)  # events months apart (a quiet stream): only their own days
    for i, ts in enumerate((TS_PG, TS_PG + 90 * 86_400_000_000, TS_PG - 86_400_000_000)):
        sparse.add_plain(1 + i, ts, b"s", b"", 64)
    assert sparse.days() == {TS.date(), TS.date() + timedelta(days=90), TS.date() - timedelta(1)}


def test_plain_subject():
    assert plain_subject(b"orders.created")
    assert not plain_subject("ordres.\u00e9".encode())  # decoded and cleaned instead
    assert not plain_subject(b"a\x00b")
    assert not plain_subject(b"a" * 1025)


def test_the_writers_buffer_is_bounded_in_events_and_in_bytes():
    from eventbus.records import Gap
    from eventbus.writer import Writer

    def chunk(events: int, payload: int) -> Chunk:
        c = Chunk(1, 1)
        for i in range(events):
            c.add_plain(1 + i, TS_PG, b"s", b"x" * payload, 1 << 20)
        return c

    writer = Writer("postgresql://unused", buffer_size=10, buffer_bytes=10_000)
    assert writer.offer(chunk(6, 10)) and writer.free() == 4
    assert not writer.offer(chunk(5, 10))  # 11 events
    assert writer.offer(chunk(4, 10)) and writer.free() == 0
    assert writer.offer(Gap(1, 1, 2, "gone"))  # holds no event
    writer = Writer("postgresql://unused", buffer_size=10, buffer_bytes=10_000)
    assert writer.offer(chunk(1, 6_000))
    assert not writer.offer(chunk(1, 6_000))  # 12 KB
    writer = Writer("postgresql://unused", buffer_size=10, buffer_bytes=10_000)
    assert writer.offer(chunk(20, 1_000))  # larger than both bounds, into an empty buffer
    assert writer.held == 20 and writer.free() == 0


def test_headers_json_is_the_json_of_the_headers():
    import json

    from eventbus.records import headers_json

    odd = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        'Quote"Back\\slash': 'say "hi"\\n',
        "Ctl": "\x01\x1f\t\r\n",
        "Unicode": "é ✓ \u2028 \U0001f600",
        "Html": "<script>alert(1)</script>",
    }
    assert json.loads(headers_json(odd) or "") == odd
    assert headers_json(None) is None and headers_json({}) is None


def test_header_names_match_exact_first_then_in_any_case():
    headers = {"TraceParent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
               "traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01",
               "NATS-MSG-ID": "a", "nats-msg-id": "b"}  # fmt: skip
    rec = build_record(stream_id=1, seq=1, ts=TS_PG, subject="s", data=b"", headers=headers,
                       preview_bytes=10, service_header="Flowscope-Service")  # fmt: skip
    assert rec.trace_id == "3" * 32  # the exact name
    assert rec.msg_id == "a"  # no exact match: the first in any case


async def test_a_batch_ends_at_its_event_or_byte_bound():
    import asyncio

    from eventbus.writer import Writer

    def chunk(events: int, payload: int) -> Chunk:
        c = Chunk(1, 1)
        for i in range(events):
            c.add_plain(1 + i, TS_PG, b"s", b"x" * payload, 1 << 20)
        return c

    stop = asyncio.Event()
    writer = Writer("postgresql://unused", buffer_size=1000, batch_size=10, linger=0.0)
    for _ in range(5):
        assert writer.offer(chunk(4, 10))
    assert [c.count for c in await writer._collect(stop)] == [4, 4, 4]  # 12 >= 10 events
    writer = Writer("postgresql://unused", buffer_size=1000, buffer_bytes=40_000, linger=0.0)
    for _ in range(6):
        assert writer.offer(chunk(1, 4_000))
    batch = await writer._collect(stop)  # 10,000 bytes a batch: three chunks of 4 KB and more
    assert len(batch) == 3 and writer.held == 3


def test_rows_with_headers_match_the_general_encoder():
    """Chunk.add_headed (the lean reader's path for events with headers) writes the very bytes
    that building a record and encoding it do."""
    cases = [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
         "Flowscope-Service": "orders", "Nats-Msg-Id": "o-1"},
        {"TRACEPARENT": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"},
        {"nats-msg-id": "x" * 2000, "flowscope-service": "s" * 300, "X": 'q"\\\x01'},
        {"Odd": "a\x00b", "k" * 300: "v"},
        {"traceparent": "garbage"},
    ]  # fmt: skip
    for i, headers in enumerate(cases):
        for data, preview in ((b"p" * 10, 64), (bytes(range(256)), 100)):
            fast = Chunk(7, 1)
            fast.add_headed(1, TS_PG, b"orders.created", data, preview, headers,
                            "Flowscope-Service")  # fmt: skip
            rec = build_record(stream_id=7, seq=1, ts=TS_PG, subject="orders.created", data=data,
                               headers=headers, preview_bytes=preview,
                               service_header="Flowscope-Service")  # fmt: skip
            assert bytes(fast.rows) == encode_record(rec), i
            assert fast.recent[-1][4:] == (rec.service, rec.trace_id, rec.msg_id)


def test_a_committed_batch_is_summarized_for_the_digest():
    import json

    from eventbus.digest import events_digest
    from eventbus.records import Gap
    from eventbus.writer import summarize

    batch: list[Chunk | Gap] = []
    for stream_id, first in ((1, 1), (2, 1), (1, 31)):
        chunk = Chunk(stream_id, first)
        for seq in range(first, first + 30):
            chunk.add_plain(seq, TS_PG + seq, f"s{stream_id}.{seq % 2}".encode(), b"p", 64)
        chunk.close()
        batch.append(chunk)
    batch.insert(2, Gap(2, 31, 40, "gone"))
    committed = summarize(batch)
    assert committed.count == 90 and committed.counts == {1: 60, 2: 30}
    assert committed.last_seq == {1: 60, 2: 40}
    assert committed.subjects == {"s1.0": 30, "s1.1": 30, "s2.0": 15, "s2.1": 15}
    assert len(committed.newest) == 60  # the last 20 of each chunk (up to 80 in all)
    body = json.loads(events_digest(committed, {1: "ONE", 2: "TWO"}))
    assert body["total"] == 90 and body["gaps"] == [
        {"stream": "TWO", "first_seq": 31, "last_seq": 40}
    ]
    assert [(e["stream"], e["seq"]) for e in body["newest"][:3]] == [
        ("ONE", 60),
        ("ONE", 59),
        ("ONE", 58),
    ]  # newest first, by stream time
    assert len(body["newest"]) == 20 and body["newest"][0]["subject"] == "s1.0"
