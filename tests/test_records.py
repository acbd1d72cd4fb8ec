"""Pure logic of the tap: parsing what NATS sends, choosing how to observe a stream."""

from datetime import UTC, datetime, timedelta

from eventbus.lease import share, stream_key
from eventbus.observers import choose_observer, republish_pattern
from eventbus.partitions import parse_retention, partition_name
from eventbus.records import (
    ack_position,
    build_record,
    parse_ack_subject,
    parse_nats_time,
    parse_traceparent,
)

TS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


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
    rec = build_record(stream_id=1, seq=5, ts=TS, subject="a.b", data=data, headers=None,
                       preview_bytes=1000, service_header="Flowscope-Service")  # fmt: skip
    assert rec.size == 2560 and rec.payload == data[:1000] and rec.truncated
    small = build_record(stream_id=1, seq=6, ts=TS, subject="a.b", data=b"\xff\xfe", headers=None,
                         preview_bytes=1000, service_header="Flowscope-Service")  # fmt: skip
    assert small.payload == b"\xff\xfe" and not small.truncated


def test_record_reads_headers_case_insensitively_and_strips_nul():
    headers = {
        "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "nats-msg-id": "order-1",
        "flowscope-service": "orders",
        "X-Odd": "a\x00b",
    }
    rec = build_record(stream_id=1, seq=1, ts=TS, subject="s\x00", data=b"", headers=headers,
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


def test_ns_to_datetime_is_utc_to_the_microsecond():
    from datetime import UTC, datetime

    from eventbus.records import ns_to_datetime

    got = ns_to_datetime(1764000000123456789)
    assert abs(got - datetime(2025, 11, 24, 16, 0, 0, 123457, tzinfo=UTC)).total_seconds() <= 1e-6
    assert ns_to_datetime(1764000001000000000) == datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)
    assert ns_to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert ns_to_datetime(1764000000123456789).tzinfo is UTC
