"""Dead letters (issue #15, capture): advisories and DLQ streams become one row each."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RePublish, RetentionPolicy, StreamConfig

from eventbus.deadletters import (
    ADVISORY_CONSUMER,
    ADVISORY_STREAM,
    BadAdvisory,
    dlq_letter,
    parse_advisory,
)
from eventbus.tap import Tap
from tests.taputil import config, eventually, query, recorded_seqs, tap_running

# Captured from nats-server 2.15 (a work-queue stream, a consumer with MaxDeliver 3).
MAX_DELIVER = (
    b'{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"BmZRXPm1ZyZL2KgvCcMOyW",'
    b'"timestamp":"2026-12-02T15:25:56.573183132Z","stream":"WQ","consumer":"worker",'
    b'"stream_seq":1,"deliveries":3}'
)
TERMINATED = (
    b'{"type":"io.nats.jetstream.advisory.v1.terminated","id":"t7GIw2WLGzrfewhWJH59QO",'
    b'"timestamp":"2026-12-02T15:25:53.42856961Z","stream":"WQ","consumer":"worker",'
    b'"consumer_seq":2,"stream_seq":2,"deliveries":1,"reason":"bad payload"}'
)

ROWS = (
    "SELECT seq, consumer, reason, terminate_reason, deliveries, subject, headers, payload, "
    "truncated, payload_source, status, stream_id IS NOT NULL FROM flowscope_deadletter "
    "WHERE stream_name = %s ORDER BY seq, consumer"
)


def test_it_parses_the_servers_advisories() -> None:
    d = parse_advisory(MAX_DELIVER)
    assert (d.reason, d.stream, d.seq, d.consumer, d.deliveries, d.terminate_reason) == (
        "max_deliveries", "WQ", 1, "worker", 3, ""
    )  # fmt: skip
    assert d.died_at == datetime(2026, 12, 2, 15, 25, 56, 573183, tzinfo=UTC)
    t = parse_advisory(TERMINATED)
    assert (t.reason, t.seq, t.deliveries, t.terminate_reason) == (
        "terminated", 2, 1, "bad payload"
    )  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"type":"io.nats.jetstream.advisory.v1.nak","stream":"S","consumer":"c","stream_seq":1}',
        MAX_DELIVER.replace(b'"stream_seq":1,', b""),
        MAX_DELIVER.replace(b'"stream":"WQ",', b""),
        MAX_DELIVER.replace(b'"consumer":"worker",', b'"consumer":"",'),
        MAX_DELIVER.replace(b'"stream_seq":1', b'"stream_seq":true'),
        MAX_DELIVER.replace(b'"stream_seq":1', b'"stream_seq":"1"'),
    ],
)
def test_it_refuses_advisories_that_name_no_dead_letter(data: bytes) -> None:
    with pytest.raises(BadAdvisory):
        parse_advisory(data)


def test_it_reads_an_advisory_without_time_or_count() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = MAX_DELIVER.replace(b'"timestamp":"2026-12-02T15:25:56.573183132Z",', b"")
    d = parse_advisory(body.replace(b'"deliveries":3', b'"deliveries":"x"'), now=now)
    assert (d.died_at, d.deliveries) == (now, 0)


def test_a_dlq_message_names_its_origin() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    headers = {"Nats-Stream": "ORDERS", "Nats-Sequence": "42", "Nats-Subject": "orders.new"}
    death, original = dlq_letter("DLQ", 7, "dlq.orders", headers, b"x", ts)
    assert (death.stream, death.seq, death.consumer, death.reason) == ("DLQ", 7, "", "dlq_stream")
    assert (death.origin_stream, death.origin_seq, original.subject) == ("ORDERS", 42, "orders.new")
    death, original = dlq_letter("DLQ", 8, "dlq.x", {"Nats-Sequence": "n/a"}, b"", ts)
    assert (death.origin_stream, death.origin_seq, original.subject) == ("", None, "dlq.x")


async def _stream(js: Any, name: str, subject: str, retention: str) -> None:
    config = StreamConfig(
        name=name, subjects=[f"{subject}.>"], retention=RetentionPolicy(retention)
    )
    if retention == "workqueue":  # the tap reads it with sequences only through RePublish
        config.republish = RePublish(src=f"{subject}.>", dest=f"tapcopy.{subject}.>")
    await js.add_stream(config)
    await js.add_consumer(
        name,
        ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT, max_deliver=3,
                       ack_wait=2),
    )  # fmt: skip


async def _work(nc: Any, js: Any, stream: str, rounds: int = 8) -> None:
    """The application: naks every `.poison` message, terminates every `.bad` one (reason
    given), acks the rest."""
    sub = await js.pull_subscribe_bind("worker", stream=stream)
    for _ in range(rounds):
        try:
            msgs = await sub.fetch(20, timeout=0.5)
        except TimeoutError:  # nats-py raises asyncio's or its own
            continue
        for m in msgs:
            if m.subject.endswith(".poison"):
                await m.nak()
            elif m.subject.endswith(".bad"):
                await nc.publish(m.reply, b"+TERM schema mismatch")
            else:
                await m.ack()
    await sub.unsubscribe()


async def _rows(database_url: str, stream: str, count: int) -> list[tuple[Any, ...]]:
    async def check() -> list[tuple[Any, ...]] | None:
        rows = await query(database_url, ROWS, stream)
        return rows if len(rows) >= count else None

    await eventually(check, what=f"{count} dead letters")
    await asyncio.sleep(0.5)  # none more comes
    return await query(database_url, ROWS, stream)


@pytest.mark.parametrize("retention", ["limits", "interest", "workqueue"])
async def test_it_captures_each_dead_letter_once(nats_server, database_url, unique, retention):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"DL_{unique}", f"dl.{unique}"
    await _stream(js, stream, subject, retention)
    async with tap_running(nats_server.url, database_url) as tap:
        await eventually(lambda: _observing(tap, stream))  # RePublish copies are not replayed
        await js.publish(f"{subject}.poison", b'{"n": 1}', headers={"X-Order": "1"})
        await js.publish(f"{subject}.bad", b"\x00binary", headers={"X-Order": "2"})
        await js.publish(f"{subject}.fine", b"ok")
        await eventually(lambda: _has(recorded_seqs(database_url, stream), [1, 2, 3]))
        await _work(nc, js, stream)
        rows = await _rows(database_url, stream, 2)
        assert tap.deadletters is not None and tap.deadletters.written == 2
        assert ADVISORY_STREAM not in tap.observers  # Flowscope's own: not an application's
    await nc.close()
    assert await query(database_url, "SELECT 1 FROM flowscope_stream WHERE name = %s",
                       ADVISORY_STREAM) == []  # fmt: skip
    removed = retention != "limits"  # a terminated message leaves interest and work-queue streams
    assert rows == [
        (1, "worker", "max_deliveries", "", 3, f"{subject}.poison", {"X-Order": "1"},
         b'{"n": 1}', False, "stream", "new", True),
        (2, "worker", "terminated", "schema mismatch", 1, f"{subject}.bad", {"X-Order": "2"},
         b"\x00binary", False, "recorded" if removed else "stream", "new", True),
    ]  # fmt: skip


async def _observing(tap: Any, stream: str) -> bool:
    observer = tap.observers.get(stream)
    return observer is not None and bool(observer.ready.is_set())


async def _has(rows: Any, want: list[int]) -> bool:
    return bool(await rows == want)


async def test_dead_letters_wait_while_the_tap_is_down(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"DOWN_{unique}", f"down.{unique}"
    await _stream(js, stream, subject, "limits")
    async with tap_running(nats_server.url, database_url):  # creates the advisories' stream
        await eventually(lambda: _stream_exists(js, ADVISORY_STREAM))
    for i in range(3):
        await js.publish(f"{subject}.poison", f"p{i}".encode())
        await js.publish(f"{subject}.bad", f"b{i}".encode())
    await _work(nc, js, stream)
    assert await query(database_url, ROWS, stream) == []
    async with tap_running(nats_server.url, database_url):
        rows = await _rows(database_url, stream, 6)
    await nc.close()
    assert sorted((r[2], bytes(r[7])) for r in rows) == sorted(
        [("max_deliveries", f"p{i}".encode()) for i in range(3)]
        + [("terminated", f"b{i}".encode()) for i in range(3)]
    )


async def _stream_exists(js: Any, name: str) -> bool:
    try:
        await js.stream_info(name)
        return True
    except nats.js.errors.NotFoundError:
        return False


async def test_two_taps_write_each_dead_letter_once(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"TWO_{unique}", f"two.{unique}"
    await _stream(js, stream, subject, "limits")
    stop = asyncio.Event()  # one for both (tap_running checks connections as each ends)
    a, b = (Tap(config(nats_server.url, database_url), stop) for _ in range(2))
    running = asyncio.gather(a.run(), b.run())
    try:
        await eventually(lambda: _bound_by(js, 2))  # both taps pull
        for i in range(20):
            await js.publish(f"{subject}.bad", f"b{i}".encode())
        await _work(nc, js, stream)
        rows = await _rows(database_url, stream, 20)
        assert a.deadletters is not None and b.deadletters is not None
        assert a.deadletters.written + b.deadletters.written == 20
        info = await eventually(lambda: _drained(js), what="every advisory acked")
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    await nc.close()
    assert sorted(r[0] for r in rows) == list(range(1, 21))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_recreated_streams_same_sequence_dying_again_is_another_dead_letter(
    nats_server, database_url, unique
):
    """A stream deleted and created again numbers its messages from 1 again: its seq 1 dying
    for a consumer of the same name is another death, of another incarnation, and is kept
    beside the first (each under its own incarnation, with its own payload and naks)."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"AGAIN_{unique}", f"again.{unique}"
    rows_sql = (
        "SELECT d.seq, d.payload, d.stream_id, s.created, "
        "(SELECT count(*) FROM flowscope_nak n WHERE n.stream_name = d.stream_name"
        " AND n.seq = d.seq AND n.consumer = d.consumer) "
        "FROM flowscope_deadletter d LEFT JOIN flowscope_stream s ON s.id = d.stream_id "
        "WHERE d.stream_name = %s ORDER BY d.died_at"
    )

    async def deaths(count: int) -> list[tuple[Any, ...]]:
        async def check() -> list[tuple[Any, ...]] | None:
            rows = await query(database_url, rows_sql, stream)
            return rows if len(rows) >= count and all(r[2] for r in rows) else None

        found: list[tuple[Any, ...]] = await eventually(check, what=f"{count} dead letters")
        return found

    async with tap_running(nats_server.url, database_url) as tap:
        for round_ in (1, 2):
            await _stream(js, stream, subject, "limits")
            await eventually(lambda: _observing(tap, stream))
            await js.publish(f"{subject}.poison", f"round {round_}".encode())
            await _work(nc, js, stream)
            rows = await deaths(round_)
            if round_ == 1:
                await js.delete_stream(stream)
                await eventually(lambda: _gone(tap, stream), what="the tap let it go")
        await eventually(lambda: _drained(js), what="every advisory acked")
    await nc.close()
    assert [(r[0], bytes(r[1])) for r in rows] == [(1, b"round 1"), (1, b"round 2")]
    assert rows[0][2] != rows[1][2] and rows[0][3] < rows[1][3]  # two incarnations
    assert [r[4] for r in rows] == [6, 6]  # the 3 naks of each death, each kept once


async def _gone(tap: Any, stream: str) -> bool:
    return stream not in tap.observers


async def _drained(js: Any) -> Any:
    info = await js.consumer_info(ADVISORY_STREAM, ADVISORY_CONSUMER)
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def test_odd_advisories_are_acked_and_capture_goes_on(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"ODD_{unique}", f"odd.{unique}"
    await _stream(js, stream, subject, "limits")
    async with tap_running(nats_server.url, database_url) as tap:
        await eventually(lambda: _stream_exists(js, ADVISORY_STREAM))
        odd = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.X.y"
        for data in (b"garbage{", b"{}", json.dumps({"type": REASON_MAX, "stream": "X"}).encode()):
            await nc.publish(odd, data)
        await js.publish(f"{subject}.bad", b"after the garbage")
        await _work(nc, js, stream)
        rows = await _rows(database_url, stream, 1)
        assert tap.deadletters is not None and tap.deadletters.bad == 3
        assert tap.supervisor.tasks["dead letters"].restarts == 0
        await eventually(lambda: _drained(js), what="the odd advisories acked")
    await nc.close()
    assert [(r[2], bytes(r[7])) for r in rows] == [("terminated", b"after the garbage")]


REASON_MAX = "io.nats.jetstream.advisory.v1.max_deliver"


async def test_each_message_of_a_dlq_stream_is_a_dead_letter(nats_server, database_url, unique):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    dlq = f"DLQ_{unique}"
    await js.add_stream(name=dlq, subjects=[f"dlq.{unique}"])
    headers = {"Nats-Stream": "ORDERS", "Nats-Sequence": "42", "Nats-Subject": "orders.new"}
    await js.publish(f"dlq.{unique}", b"first", headers=headers)
    async with tap_running(nats_server.url, database_url, dlq_streams=("DLQ_*",)):
        await js.publish(f"dlq.{unique}", b"second")
        rows = await _rows(database_url, dlq, 2)
        origins = await query(
            database_url,
            "SELECT seq, origin_stream, origin_seq FROM flowscope_deadletter "
            "WHERE stream_name = %s ORDER BY seq",
            dlq,
        )
    async with tap_running(nats_server.url, database_url, dlq_streams=("DLQ_*",)):
        await asyncio.sleep(2)  # restarted: nothing is read twice
        assert len(await query(database_url, ROWS, dlq)) == 2
    await nc.close()
    assert [(r[0], r[1], r[2], r[5], bytes(r[7]), r[9]) for r in rows] == [
        (1, "", "dlq_stream", "orders.new", b"first", "stream"),
        (2, "", "dlq_stream", f"dlq.{unique}", b"second", "stream"),
    ]
    assert origins == [(1, "ORDERS", 42), (2, "", None)]


async def test_an_advisory_delivered_twice_is_one_dead_letter(nats_server, database_url, unique):
    """A redelivered advisory (its ack lost) finds its row, and so does the server's own repeat
    of it with a new time (it sends it again after a restart or a leader change)."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"TWICE_{unique}", f"twice.{unique}"
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    await js.publish(f"{subject}.x", b"payload")
    digests = await nc.subscribe("flowscope.digest.deadletters")
    async with tap_running(nats_server.url, database_url) as tap:
        await eventually(lambda: _stream_exists(js, ADVISORY_STREAM))

        def advisory(at: datetime) -> bytes:
            stamp = at.isoformat().replace("+00:00", "Z").encode()
            return MAX_DELIVER.replace(b'"WQ"', json.dumps(stream).encode()).replace(
                b"2026-12-02T15:25:56.573183132Z", stamp
            )

        now = datetime.now(UTC)
        for copy in (advisory(now), advisory(now), advisory(now + timedelta(seconds=2))):
            await nc.publish(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.worker", copy)
        rows = await _rows(database_url, stream, 1)
        await eventually(lambda: _drained(js), what="every copy acked")
        assert tap.deadletters is not None and tap.deadletters.written == 1
        digest = json.loads((await digests.next_msg(timeout=5)).data)
    await nc.close()
    assert [(r[2], r[9], bytes(r[7])) for r in rows] == [("max_deliveries", "stream", b"payload")]
    assert digest == {
        "kind": "deadletters",
        "counts": [{"stream": stream, "consumer": "worker", "reason": "max_deliveries",
                    "count": 1}],
        "total": 1,
    }  # fmt: skip


async def test_capture_waits_out_nats_and_postgresql_going_away(nats_server, database_url, unique):
    """NATS restarted, the capture's database connection killed five times: no failure of the
    task (five in a row would end the tap), and every dead letter is there."""
    async with tap_running(nats_server.url, database_url) as tap:
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        await eventually(lambda: _bound_by(js, 1))
        nats_server.stop()
        await asyncio.sleep(3)
        nats_server.start()
        stream, subject = f"BACK_{unique}", f"back.{unique}"
        await eventually(lambda: _can_add(js, stream, subject), what="NATS back")
        for i in range(5):
            await eventually(lambda: _kill(database_url), what="the capture's connection")
            await js.publish(f"{subject}.bad", f"after {i}".encode())
            await _work(nc, js, stream, rounds=2)
            await _rows(database_url, stream, i + 1)
        assert tap.supervisor.tasks["dead letters"].restarts == 0
        assert tap.supervisor.fatal is None
        rows = await query(database_url, ROWS, stream)
    await nc.close()
    assert [(r[2], bytes(r[7])) for r in rows] == [
        ("terminated", f"after {i}".encode()) for i in range(5)
    ]


async def _kill(database_url: str) -> bool:
    rows = await query(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'flowscope-tap-deadletters' AND datname = current_database()",
    )
    return bool(rows)


async def _bound_by(js: Any, taps: int) -> bool:
    try:
        info = await js.consumer_info(ADVISORY_STREAM, ADVISORY_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return bool(info.num_waiting >= taps)


async def _can_add(js: Any, stream: str, subject: str) -> bool:
    try:
        await _stream(js, stream, subject, "limits")
        return True
    except (nats.errors.Error, TimeoutError):
        return False
