"""The event search (dashboard/search/): subject wildcards, filter parsing, and every filter,
keyset pages and the honest budgeted scan against real PostgreSQL. Events are stored here with
SQL (the tap's recording is tested elsewhere; tests/test_events_page.py searches events a real
tap recorded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from dashboard.models import Stream
from dashboard.search import FilterError, parse_filter, search_events
from dashboard.search.query import decode_cursor
from eventbus import subjects as subj
from tests.test_stream_page_data import ensure_partition

NOW = datetime.now(UTC).replace(microsecond=0)


# --- subject wildcards (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.*.created", "orders.eu.created", True),
        ("orders.*.created", "orders.eu.x.created", False),  # `*` is exactly one token
        ("orders.*.created", "orders.created", False),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.created.v2", True),
        ("orders.>", "orders", False),  # `>` is at least one token
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("*", "orders", True),
        ("*", "orders.eu", False),
        (">", "a.b.c", True),
        ("a.b+c.*", "a.b+c.d", True),  # regex characters in a token are literal
        ("a.b+c.*", "a.bbc.d", False),
    ],
)
def test_it_matches_subjects_as_nats_does(pattern: str, subject: str, expected: bool) -> None:
    import re

    assert subj.matches(pattern, subject) is expected
    assert (re.fullmatch(subj.to_regex(pattern)[1:-1], subject) is not None) is expected


@pytest.mark.parametrize(
    "bad", ["orders.>.x", "orders..x", ".orders", "orders.", "ord*rs", "orders.x>", "a b", ""]
)
def test_it_refuses_subjects_nats_would_refuse(bad: str) -> None:
    with pytest.raises(subj.SubjectError):
        subj.validate(bad)


def test_the_literal_prefix_is_what_every_match_starts_with() -> None:
    assert subj.literal_prefix("orders.*.created") == "orders."
    assert subj.literal_prefix("orders.eu.>") == "orders.eu."
    assert subj.literal_prefix("*.created") == ""
    assert subj.literal_prefix("orders.eu") == "orders.eu"


# --- filter parsing (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"subject": "orders.>.x"}, "subject"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"since": "2026-12-02T10:00:00Z", "until": "2026-12-02T09:00:00Z"}, "until"),
        ({"last": "forever"}, "last"),
        ({"trace_id": "xyz"}, "trace_id"),
        ({"header": "novalue"}, "header"),
        ({"header": "=x"}, "header"),
        ({"json": "a..b=1"}, "json"),
        ({"json": "customer.id"}, "json"),
        ({"min_size": "-1"}, "min_size"),
        ({"max_size": "lots"}, "max_size"),
        ({"min_size": "10", "max_size": "5"}, "max_size"),
        ({"text": "x" * 300}, "text"),
        ({"stream": "a\x00b"}, "stream"),
        ({"kind": "buckets"}, "kind"),
    ],
)
def test_it_says_which_field_is_wrong(params: dict[str, str], field: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_filter(params)
    assert err.value.field == field and err.value.message


def test_a_filter_round_trips_through_its_query_string() -> None:
    from django.http import QueryDict

    f = parse_filter(
        {
            "stream": "ORDERS",
            "subject": "orders.*.created",
            "since": "2026-12-02T10:00:00+01:00",
            "header": "tenant=acme",
            "json": "customer.id=42",
            "text": "refund",
            "min_size": "10",
            "trace_id": "ABCDEF0123456789ABCDEF0123456789",
        }
    )
    assert f.trace_id == "abcdef0123456789abcdef0123456789"
    assert f.json == (("customer", "id"), "42")
    assert parse_filter(QueryDict(f.query_string())) == f


# --- searching stored events ---------------------------------------------------------------------


def store(stream: Stream, events: list[dict[str, Any]]) -> None:
    """Insert events: dicts with seq, ts, subject and optionally payload, headers, msg_id,
    trace_id, service."""
    for day in {e["ts"].date() for e in events}:  # type: ignore[attr-defined]
        ensure_partition(day)
    with connection.cursor() as cur:
        cur.executemany(
            "INSERT INTO flowscope_event (stream_id, seq, ts, subject, size, headers, msg_id,"
            " trace_id, service, payload, truncated, recorded_at)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, false, now())",
            [
                (stream.id, e.get("seq"), e["ts"], e["subject"], len(e.get("payload", b"")),
                 json.dumps(e["headers"]) if e.get("headers") else None, e.get("msg_id"),
                 e.get("trace_id"), e.get("service"), e.get("payload", b""))
                for e in events
            ],
        )  # fmt: skip


def make_stream(name: str, days_ago: float = 3) -> Stream:
    return Stream.objects.create(
        name=name, created=NOW - timedelta(days=days_ago), retention="limits"
    )


@pytest.fixture
def orders(db: None) -> Stream:
    """ORDERS: 300 events, one every 10 s, newest 10 s ago; varied subjects, headers, payloads."""
    stream = make_stream("ORDERS")
    events = []
    for seq in range(1, 301):
        region = ["eu", "us", "ap"][seq % 3]
        kind = "created" if seq % 2 else "paid"
        note = "refund" if seq % 50 == 0 else "ok"
        body = {"order": {"id": seq, "customer": {"id": seq % 7}}, "note": note}
        payload: bytes = json.dumps(body).encode()
        if seq == 77:
            payload = b"\xff\xfe binary \x00 refund"
        events.append({
            "seq": seq, "ts": NOW - timedelta(seconds=10 * (301 - seq)),
            "subject": f"orders.{region}.{kind}" if seq != 5 else f"orders.{region}.x.{kind}",
            "payload": payload, "headers": {"tenant": f"t{seq % 4}", "traceparent": "x"},
            "msg_id": f"m-{seq}", "trace_id": f"{seq % 10:032x}", "service": f"svc{seq % 3}",
        })  # fmt: skip
    store(stream, events)
    return stream


def seqs(params: dict[str, str], **kw: object) -> list[int]:
    kw.setdefault("now", NOW)
    page = search_events(parse_filter(params), **kw)  # type: ignore[arg-type]
    return [item["seq"] for item in page.items]


def test_a_streams_newest_page_comes_newest_first(orders: Stream) -> None:
    page = search_events(parse_filter({"stream": "ORDERS"}), limit=20)
    assert [i["seq"] for i in page.items] == list(range(300, 280, -1))
    assert page.plan == "stream" and page.next and page.coverage is None
    assert page.items[0]["stream"] == "ORDERS" and page.items[0]["headers"]["tenant"] == "t0"


def test_each_filter_finds_exactly_its_events(orders: Stream) -> None:
    every = range(300, 0, -1)
    big = {"limit": 500}
    assert seqs({"subject": "orders.*.created"}, **big) == [s for s in every if s % 2 and s != 5]
    assert seqs({"subject": "orders.eu.>"}, **big) == [s for s in every if s % 3 == 0]
    assert seqs({"subject": "orders.us.paid"}, **big) == [
        s for s in every if s % 3 == 1 and s % 2 == 0
    ]
    assert seqs({"service": "svc1"}, **big) == [s for s in every if s % 3 == 1]
    assert seqs({"trace_id": f"{3:032x}"}, **big) == [s for s in every if s % 10 == 3]
    assert seqs({"msg_id": "m-42"}) == [42]
    assert seqs({"header": "tenant=t2"}, **big) == [s for s in every if s % 4 == 2]
    assert seqs({"text": "refund"}, **big) == [300, 250, 200, 150, 100, 77, 50]
    assert seqs({"json": "customer.id=3"}, **big) == []  # a path starts at the root
    assert seqs({"json": "order.customer.id=3"}, **big) == [
        s for s in every if s % 7 == 3 and s != 77
    ]
    assert seqs({"json": "order.id=42"}) == [42]
    assert seqs({"json": "note=refund"}, **big) == [300, 250, 200, 150, 100, 50]
    since = (NOW - timedelta(seconds=100)).isoformat()
    assert seqs({"since": since}, **big) == list(range(300, 290, -1))
    assert seqs({"stream": "ORDERS", "last": "1m"}, **big) == list(range(300, 294, -1))
    until = (NOW - timedelta(seconds=2900)).isoformat()
    assert (
        seqs({"until": until, "since": (NOW - timedelta(seconds=2950)).isoformat()})
        == [6, 7, 8, 9, 10][::-1]
    )
    size = len(json.dumps({"order": {"id": 100, "customer": {"id": 2}}, "note": "refund"}))
    assert seqs({"min_size": str(size), "max_size": str(size), "text": "refund"}) == [
        300,
        250,
        200,
        150,
        100,
    ]
    assert seqs({"max_size": str(size - 1), "text": "refund"}) == [77, 50]
    # combined: each narrows the others
    combined = {
        "stream": "ORDERS",
        "subject": "orders.eu.*",
        "header": "tenant=t0",
        "service": "svc0",
    }
    assert seqs(combined, **big) == [s for s in every if s % 12 == 0]


def test_keyset_pages_neither_repeat_nor_skip_while_events_arrive(orders: Stream) -> None:
    for params in ({"stream": "ORDERS"}, {"subject": "orders.>"}, {"trace_id": f"{4:032x}"}):
        f = parse_filter(params)
        first = search_events(f, limit=7)
        late = [{"seq": 1000 + i, "ts": NOW + timedelta(seconds=i), "subject": "orders.eu.x",
                 "trace_id": f"{4:032x}"} for i in range(3)]  # fmt: skip
        store(orders, late)
        seen = [i["seq"] for i in first.items]
        cursor = first.next
        while cursor:
            page = search_events(f, limit=7, cursor=cursor)
            seen += [i["seq"] for i in page.items]
            cursor = page.next
        expected = sorted({s for s in seen}, reverse=True)
        assert seen == expected, "a page repeated or reordered an event"
        with connection.cursor() as cur:  # everything older than the first page's top, once
            cur.execute("DELETE FROM flowscope_event WHERE seq >= 1000")
        assert len(seen) == len(seqs(params, limit=500))


def test_a_cursor_only_continues_its_own_filter(orders: Stream) -> None:
    page = search_events(parse_filter({"stream": "ORDERS"}), limit=5)
    assert page.next
    with pytest.raises(FilterError) as err:
        search_events(parse_filter({"subject": "orders.>"}), limit=5, cursor=page.next)
    assert err.value.field == "cursor"
    for bad in ("garbage", "eyJ4IjoxfQ", "", "%%%"):
        with pytest.raises(FilterError):
            search_events(parse_filter({"stream": "ORDERS"}), cursor=bad or "x")
    assert decode_cursor(parse_filter({"stream": "ORDERS"}), page.next)["g"].endswith(":seq")


def test_kind_keeps_kv_buckets_and_object_stores_apart(orders: Stream) -> None:
    """KV buckets and object stores are streams (KV_*, OBJ_*): `kind` searches only the
    application streams, only the buckets or only the stores; a named stream ignores it."""
    # no object store at all: answered at once, complete, not a 2 s walk through everything
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        page = search_events(parse_filter({"kind": "object"}), now=NOW)
    assert page.items == [] and page.next is None and page.exact_total == 0
    assert len(queries) <= 2, [q["sql"] for q in queries]  # the stores asked for; no walk
    old_kv = make_stream("KV_config", days_ago=2)
    make_stream("KV_config", days_ago=1)  # a newer incarnation: the older one's events count
    obj = make_stream("OBJ_files")
    for plain in ("KV", "OBJ", "KV_"):  # no prefix, or nothing after it: application streams
        make_stream(plain)
    base = NOW - timedelta(seconds=5)
    store(old_kv, [{"seq": 1, "ts": base, "subject": "$KV.config.a"}])
    store(obj, [{"seq": 1, "ts": base, "subject": "$O.files.C.x"}])
    store(Stream.objects.get(name="KV"), [{"seq": 1, "ts": base, "subject": "kv.plain"}])
    store(Stream.objects.get(name="KV_"), [{"seq": 1, "ts": base, "subject": "kv_.plain"}])

    def subjects_of(**params: str) -> list[str]:
        page = search_events(parse_filter(params), limit=500, now=NOW)
        return [i["subject"] for i in page.items]

    every = subjects_of()
    assert "$KV.config.a" in every and "$O.files.C.x" in every and len(every) == 304
    assert subjects_of(kind="all") == every
    streams = subjects_of(kind="stream")
    assert (
        len(streams) == 302
        and {"kv.plain", "kv_.plain"} <= set(streams)
        and not any(s.startswith("$") for s in streams)
    )
    assert subjects_of(kind="kv") == ["$KV.config.a"]
    assert subjects_of(kind="object") == ["$O.files.C.x"]
    assert subjects_of(kind="kv", subject="$KV.>") == ["$KV.config.a"]
    assert subjects_of(kind="stream", subject="$KV.>") == []
    assert subjects_of(kind="stream", stream="KV_config") == ["$KV.config.a"]
    assert parse_filter({"kind": "stream", "stream": "ORDERS"}).kind == ""
    assert parse_filter({"kind": "KV"}).kind == "kv"
    # `all` and no kind are the same search: one's cursor serves the other
    assert parse_filter({"kind": "all"}).fingerprint() == parse_filter({}).fingerprint()


def test_an_unknown_stream_or_a_bad_limit_is_an_error_not_an_empty_answer(orders: Stream) -> None:
    with pytest.raises(FilterError) as err:
        search_events(parse_filter({"stream": "NOPE"}))
    assert err.value.field == "stream"
    for limit in (0, -1, 501, 10**9):
        with pytest.raises(FilterError):
            search_events(parse_filter({}), limit=limit)


def test_every_incarnation_of_a_stream_is_searched_newest_first(db: None) -> None:
    old = make_stream("RECREATED", days_ago=2)
    new = make_stream("RECREATED", days_ago=1)
    store(
        old,
        [
            {"seq": s, "ts": NOW - timedelta(days=1, seconds=100 - s), "subject": "x"}
            for s in range(1, 6)
        ],
    )
    store(
        new,
        [{"seq": s, "ts": NOW - timedelta(seconds=100 - s), "subject": "x"} for s in range(1, 4)],
    )
    page = search_events(parse_filter({"stream": "RECREATED"}), limit=4)
    assert [i["seq"] for i in page.items] == [3, 2, 1, 5]
    rest = search_events(parse_filter({"stream": "RECREATED"}), limit=4, cursor=page.next)
    assert [i["seq"] for i in rest.items] == [4, 3, 2, 1] and rest.next is None


def test_events_recorded_without_a_sequence_are_found_by_stream(db: None) -> None:
    stream = make_stream("SUBJECTONLY")
    store(
        stream,
        [{"seq": None, "ts": NOW - timedelta(seconds=s), "subject": f"s.{s}"} for s in range(5)],
    )
    page = search_events(parse_filter({"stream": "SUBJECTONLY"}), limit=3)
    assert [i["subject"] for i in page.items] == ["s.0", "s.1", "s.2"]
    rest = search_events(parse_filter({"stream": "SUBJECTONLY"}), limit=3, cursor=page.next)
    assert [i["subject"] for i in rest.items] == ["s.3", "s.4"]


def test_a_search_out_of_time_says_what_it_covered_and_continues(db: None) -> None:
    stream = make_stream("BIG", days_ago=8)
    # 6 days of events, one a minute; the only match is the oldest
    events = [{"seq": i + 1, "ts": NOW - timedelta(minutes=8640 - i), "subject": "big.x",
               "payload": b"needle" if i == 0 else b"hay"} for i in range(8640)]  # fmt: skip
    store(stream, events)
    with connection.cursor() as cur:  # slow every row down, so the budget runs out mid-walk
        cur.execute(
            "CREATE FUNCTION pg_temp.slow(b bytea) RETURNS bool LANGUAGE plpgsql COST 10000 AS"
            " $$ BEGIN PERFORM pg_sleep(0.0005); RETURN position('needle' in b) > 0; END $$"
        )
    f = parse_filter({"text": "needle"})
    from dashboard.search import query

    slowed = query.predicates

    def slow_predicates(f, now, kinds):  # type: ignore[no-untyped-def]
        return ["pg_temp.slow(payload)"], []  # the text filter, at 0.5 ms a row

    query.predicates = slow_predicates  # type: ignore[assignment]
    try:
        page = search_events(f, budget=0.6)
        assert page.items == [] and page.coverage is not None, "out of time must not look empty"
        cov = page.coverage
        assert cov.oldest is not None and cov.oldest > NOW - timedelta(days=6)
        assert cov.searched is not None and 0 < cov.searched < 8640
        assert page.next
        found: list[str] = []
        cursor: str | None = page.next
        rounds = 0
        while cursor and not found:
            more = search_events(f, budget=0.6, cursor=cursor)
            found = [i["subject"] for i in more.items]
            if more.coverage:  # each continuation goes further back than the last
                assert more.coverage.oldest is not None and more.coverage.oldest < cov.oldest
                cov = more.coverage
            cursor = more.next
            rounds += 1
        assert found == ["big.x"] and rounds > 1
    finally:
        query.predicates = slowed  # type: ignore[assignment]
    complete = search_events(f, budget=30)
    assert [i["seq"] for i in complete.items] == [1] and complete.coverage is None
    assert complete.exact_total == 1


def test_preview_is_text_or_none_for_binary(orders: Stream) -> None:
    page = search_events(parse_filter({"msg_id": "m-77"}))
    assert page.items[0]["preview"] is None
    page = search_events(parse_filter({"msg_id": "m-78"}))
    assert page.items[0]["preview"].startswith('{"order"')


def test_the_json_filter_works_when_postgresql_scans_in_parallel(orders: Stream) -> None:
    """flowscope_try_jsonb() catches errors in a subtransaction, which a parallel worker may
    not start: declared PARALLEL SAFE, a parallel plan failed (bench/search.py found it)."""
    with connection.cursor() as cur:
        for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2",
                        "enable_indexscan = off", "enable_bitmapscan = off"):  # fmt: skip
            cur.execute(f"SET {setting}")
        cur.execute(
            "EXPLAIN SELECT 1 FROM flowscope_event WHERE convert_from(payload, 'UTF8') <> ''"
        )
        assert "Gather" in " ".join(r[0] for r in cur.fetchall())  # parallel plans happen here
    try:
        assert seqs({"json": "order.id=42"}) == [42]
    finally:
        with connection.cursor() as cur:
            cur.execute("RESET ALL")


def test_a_subject_with_few_stored_subjects_is_served_by_its_index(orders: Stream) -> None:
    """Few concrete subjects under a filter's prefix: one index scan each, merged newest first,
    keyset pages across them; the same answer as the time walk gives."""
    from dashboard.search import query

    page = search_events(parse_filter({"subject": "orders.eu.>"}), limit=7, now=NOW)
    assert page.plan == "subject"
    seen = [i["seq"] for i in page.items]
    cursor = page.next
    while cursor:
        more = search_events(parse_filter({"subject": "orders.eu.>"}), limit=7, cursor=cursor)
        seen += [i["seq"] for i in more.items]
        cursor = more.next
    assert seen == [s for s in range(300, 0, -1) if s % 3 == 0]
    assert search_events(parse_filter({"subject": "orders.us.paid"})).plan == "subject"
    assert query.stored_subjects("orders.eu.>") == ["orders.eu.created", "orders.eu.paid"]
    assert query.stored_subjects("nothing.>") == []  # no subject stored: no event, at once
    assert query.stored_subjects("*.eu.>") is None  # no prefix: the time walk
    with_text = search_events(parse_filter({"subject": "orders.eu.>", "text": "refund"}))
    assert with_text.plan == "time"  # other filters: the walk that can say how far it got
    assert [i["seq"] for i in with_text.items] == [300, 150]


def test_subject_prefixes_are_ranges_in_byte_order(db: None) -> None:
    """'orders.' .. 'orders/' in byte order, whatever the database's collation: a linguistic
    one sorts punctuation apart and would let a range miss or take subjects."""
    from dashboard.search import query

    stream = make_stream("PUNCT")
    names = ["orders.a", "orders-b", "ordersc", "orders/x", "orders.z.y", "orders", "Orders.q"]
    store(stream, [{"seq": i + 1, "ts": NOW - timedelta(seconds=i), "subject": n}
                   for i, n in enumerate(names)])  # fmt: skip
    assert query.stored_subjects("orders.>") == ["orders.a", "orders.z.y"]
    assert seqs({"subject": "orders.>"}) == [1, 5]
    assert seqs({"subject": "orders.*"}) == [1]


def test_too_many_subjects_under_a_prefix_go_to_the_time_walk(db: None) -> None:
    from dashboard.search import query

    stream = make_stream("MANY")
    store(stream, [{"seq": i + 1, "ts": NOW - timedelta(seconds=i), "subject": f"m.{i}"}
                   for i in range(query.MAX_SUBJECTS + 1)])  # fmt: skip
    assert query.stored_subjects("m.*") is None
    page = search_events(parse_filter({"subject": "m.*"}), limit=500, now=NOW)
    assert page.plan == "time" and len(page.items) == query.MAX_SUBJECTS + 1
