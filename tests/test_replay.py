"""Replaying dead letters (issue #15): real nats-server, real PostgreSQL, real tap processes.

Dead letters come from the tap's capture of a real consumer giving up (tests/test_deadletters.py
tests the capture itself), or, where only the replay is under test, rows made here that point
at real messages of a real stream."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import nats
import nats.js.errors
import pytest
from django.contrib.auth.models import Group, User
from django.db.models import Count
from django.test import RequestFactory
from nats.js.api import AckPolicy, ConsumerConfig, RePublish, RetentionPolicy, StreamConfig

from dashboard import replays
from dashboard.models import AuditEntry, DeadLetter, ReplayItem, ReplayJob
from dashboard.search.filters import FilterError
from eventbus import replay
from eventbus.records import parse_traceparent
from tests.taputil import in_thread, recorded_seqs, tap_process
from tests.test_deadletters import _work

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


# -- pure parts ------------------------------------------------------------------------------
def test_a_copy_carries_what_names_its_original_and_drops_what_the_server_acts_on() -> None:
    original = {
        "X-Order": "1", "Nats-Msg-Id": "old", "Nats-Expected-Last-Subject-Sequence": "0",
        "nats-rollup": "sub", "Nats-TTL": "5s", "Nats-Stream": "DLQ", "traceparent": PARENT,
        "Flowscope-Replay-Of": "OLD:1", "tracestate": "vendor=1",
    }  # fmt: skip
    headers = replay.copy_headers(
        original, stream="ORDERS", seq=7, user="olga", message_id="m:5:0", traceparent="00-x"
    )
    assert headers == {
        "X-Order": "1", "tracestate": "vendor=1", "Nats-Msg-Id": "m:5:0",
        "Flowscope-Replay-Of": "ORDERS:7", "Flowscope-Replayed-By": "olga",
        "traceparent": "00-x",
    }  # fmt: skip


def test_the_copy_continues_the_originals_trace_in_a_span_of_its_own() -> None:
    child, span = replay.child_traceparent(PARENT, "orders.created", "m")
    got = parse_traceparent(child)
    assert got is not None and got[0] == TRACE and got[1] != "00f067aa0ba902b7"
    if span is not None:
        span.end()
    assert replay.child_traceparent(None, "s", "m") == (None, None)
    assert replay.child_traceparent("garbage", "s", "m") == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"subject": "orders.*"}, "subject"),
        ({"subject": "orders..x"}, "subject"),
        ({"subject": "a b"}, "subject"),
        ({"mode": "teleport"}, "mode"),
        ({"rate": "fast"}, "rate"),
        ({"rate": 0.5}, "rate"),
        ({"rate": 10**6}, "rate"),
    ],
)
def test_bad_options_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(FilterError) as caught:
        replays.options(**kwargs)
    assert caught.value.field == field


# -- helpers -----------------------------------------------------------------------------
def _sample(name: str, **labels: str) -> float:
    """A figure of this process' tap registry (/metrics of a tap: eventbus/metrics.py)."""
    from eventbus.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def _nats_for_the_web(request: pytest.FixtureRequest) -> None:
    """The web's replay connects to settings.NATS_URL: this test's own server."""
    if "nats_server" in request.fixturenames:
        settings = request.getfixturevalue("settings")
        settings.NATS_URL = request.getfixturevalue("nats_server").url


def _run(coro: Any) -> Any:
    out: list[Any] = []

    async def go() -> None:
        out.append(await coro)

    in_thread(go())
    return out[0]


def _operator(name: str = "olga") -> Any:
    user = User.objects.create_user(name, password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    request = RequestFactory().post("/")
    request.user = user
    return request


def _wait(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


async def _setup(url: str, stream: str, subject: str, retention: str, **config: Any) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream_config = StreamConfig(name=stream, subjects=[f"{subject}.>"],
                                 retention=RetentionPolicy(retention), **config)  # fmt: skip
    if retention == "workqueue":  # the tap reads it with sequences only through RePublish
        stream_config.republish = RePublish(src=f"{subject}.>", dest=f"tapcopy.{subject}.>")
    await js.add_stream(stream_config)
    await js.add_consumer(stream, ConsumerConfig(durable_name="worker", max_deliver=3, ack_wait=1,
                                                 ack_policy=AckPolicy.EXPLICIT))  # fmt: skip
    await nc.close()


async def _publish(url: str, subject: str, payload: bytes, headers: dict[str, str]) -> int:
    nc = await nats.connect(url)
    ack = await nc.jetstream().publish(subject, payload, headers=headers)
    await nc.close()
    return int(ack.seq)


async def _give_up(url: str, stream: str) -> None:
    """The application of tests/test_deadletters.py: naks `.poison` until max deliveries,
    terminates `.bad`, acks the rest."""
    nc = await nats.connect(url)
    await _work(nc, nc.jetstream(), stream, rounds=10)
    await nc.close()


def _journey_with_replay(trace_id: str) -> Any:
    from dashboard.traces import load_journey

    journey = load_journey(trace_id)
    return journey if journey is not None and any(st.replay for st in journey.steps) else None


async def _probe(url: str, database_url: str, stream: str, subject: str) -> bool:
    """Publish a probe; True once the tap has recorded one (it observes the stream)."""
    seq = await _publish(url, subject, b"probe", {})
    await asyncio.sleep(0.3)
    return seq in await recorded_seqs(database_url, stream)


async def _has_stream(url: str, name: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().stream_info(name)
        return True
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()


async def _get(url: str, stream: str, seq: int | None) -> Any:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().get_msg(stream, seq)
    finally:
        await nc.close()


async def _last_seq(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await nc.close()


async def _next_for_worker(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().pull_subscribe_bind("worker", stream=stream)
        for _ in range(20):
            try:
                for m in await sub.fetch(5, timeout=0.5):
                    await m.ack()
                    if m.headers and "Flowscope-Replay-Of" in m.headers:
                        return m
            except TimeoutError:
                continue
        return None
    finally:
        await nc.close()


# -- capture, then replay, on each retention policy ---------------------------------------------
@pytest.mark.parametrize("retention", ["limits", "interest", "workqueue"])
def test_replay_of_captured_dead_letters(nats_server, database_url, unique, tmp_path, retention):
    url = nats_server.url
    stream, subject = f"RP_{unique}", f"rp.{unique}"
    _run(_setup(url, stream, subject, retention))
    headers = {"traceparent": PARENT, "X-Order": "1", "Nats-Expected-Last-Subject-Sequence": "0"}
    tap = tap_process(url, database_url, tmp_path / "tap.log")
    try:
        _wait(lambda: _run(_has_stream(url, "FLOWSCOPE_ADVISORIES")), what="advisories kept")
        _wait(lambda: _run(_probe(url, database_url, stream, f"{subject}.probe")), what="observed")
        poison = _run(_publish(url, f"{subject}.poison", b'{"n": 1}', headers))
        bad = _run(_publish(url, f"{subject}.bad", b"\xffbinary", {"X-Order": "2"}))
        # recorded before the application gives up (a terminated message leaves interest and
        # work-queue streams: the replay then sends the tap's copy)
        _wait(lambda: {poison, bad} <= set(_run(recorded_seqs(database_url, stream))),
              what="recorded")  # fmt: skip
        _run(_give_up(url, stream))
        _wait(lambda: DeadLetter.objects.filter(stream_name=stream).count() == 2, what="capture")
        d = DeadLetter.objects.get(stream_name=stream, seq=poison)
        request = _operator()
        before = _run(_last_seq(url, stream))
        counted = _sample("flowscope_replays_published_total", result="published")
        job = replays.replay_one(request, d, replays.options())
        assert _sample("flowscope_replays_published_total", result="published") == counted + 1
        assert (job.state, job.total, job.published, job.failed) == ("done", 1, 1, 0)
        item = job.items.get()
        assert (item.state, item.result_stream, item.msg_id) == (
            "published", stream, f"flowscope-replay:{d.id}:0"
        )  # fmt: skip
        assert item.result_seq == before + 1
        d.refresh_from_db()
        assert d.status == "replayed"
        copy = _run(_next_for_worker(url, stream))  # the application gets it again
        assert copy is not None and copy.data == b'{"n": 1}' and copy.subject == d.subject
        assert copy.headers["Flowscope-Replay-Of"] == f"{stream}:{poison}"
        assert copy.headers["Flowscope-Replayed-By"] == "olga"
        assert copy.headers["Nats-Msg-Id"] == item.msg_id and copy.headers["X-Order"] == "1"
        assert "Nats-Expected-Last-Subject-Sequence" not in copy.headers  # it would be refused
        child = parse_traceparent(copy.headers["traceparent"])
        assert child is not None and child[0] == TRACE and child[1] != PARENT.split("-")[2]

        # the copy joins the original's journey (issue #16): recorded by the tap, same trace
        journey = _wait(lambda: _journey_with_replay(TRACE), what="the copy in the journey")
        replayed = next(st for st in journey.steps if st.replay)
        assert (replayed.replay.stream, replayed.replay.seq) == (stream, poison)
        assert replayed.parent is not None and replayed.parent.event.seq == poison
        assert replayed.parent_how == "replay" and replayed.replayed_by == "olga"
        assert [dl.pk for dl in journey.dead_letters] == [d.pk]

        # asked again (a retried request): the same job, no second copy
        again = replays.replay_one(request, d, replays.options())
        assert again.pk == job.pk and _run(_last_seq(url, stream)) == before + 1
        # replayed once more on purpose: a new attempt, a new copy
        third = replays.replay_one(request, d, replays.options(again=True))
        assert third.items.get().msg_id == f"flowscope-replay:{d.id}:1"
        assert third.published == 1 and _run(_last_seq(url, stream)) == before + 2

        # the terminated one, to a subject no stream captures: a clear error, nothing lost
        t = DeadLetter.objects.get(stream_name=stream, seq=bad)
        assert t.reason == "terminated"
        lost = replays.replay_one(request, t, replays.options(subject=f"nowhere.{unique}"))
        assert (lost.state, lost.published, lost.failed) == ("done", 0, 1)
        assert "no stream captures the subject" in lost.items.get().error
        t.refresh_from_db()
        assert t.status == "new"
        ok = replays.replay_one(request, t, replays.options())
        assert ok.published == 1  # its payload came from the tap's copy where the stream dropped it
        assert _run(_get(url, stream, ok.items.get().result_seq)).data == b"\xffbinary"
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.wait(30)
    actions = list(AuditEntry.objects.values_list("action", "result").order_by("id"))
    assert actions.count(("replay.done", "ok")) == 3
    assert ("replay.done", "failed") in actions  # the one to nowhere, on the record


def test_a_double_click_publishes_one_copy(nats_server, database_url, unique):
    url = nats_server.url
    stream, subject = f"DC_{unique}", f"dc.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    seq = _run(_publish(url, f"{subject}.x", b"once", {}))
    d = _letter(stream, seq, f"{subject}.x", b"once")
    request = _operator()
    barrier = threading.Barrier(2)
    jobs: list[ReplayJob] = []

    def click() -> None:
        from django.db import connection

        barrier.wait()
        try:
            jobs.append(replays.replay_one(request, d, replays.options()))
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(jobs) == 2
    assert _run(_last_seq(url, stream)) == seq + 1  # one copy
    items = list(ReplayItem.objects.filter(dead_letter=d).order_by("id"))
    # either the second request saw the first's result, or the server dropped its duplicate
    assert all(i.state == "published" and i.result_seq == seq + 1 for i in items)
    assert len(items) == 1 or [i.duplicate for i in items].count(True) == 1
    if len(items) == 2:  # the server's "duplicate" is counted as such
        assert _sample("flowscope_replays_published_total", result="duplicate") >= 1


def _letter(stream: str, seq: int, subject: str, payload: bytes, **kw: Any) -> DeadLetter:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "stream_name": stream, "seq": seq, "consumer": "worker",
        "reason": DeadLetter.Reason.MAX_DELIVERIES, "deliveries": 3, "subject": subject,
        "headers": {"traceparent": PARENT}, "payload": payload,
        "payload_source": DeadLetter.PayloadSource.STREAM, "died_at": now, "captured_at": now,
    }  # fmt: skip
    values.update(kw)
    return DeadLetter.objects.create(**values)


async def _fill(url: str, subject: str, n: int) -> list[int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    futures = [await js.publish_async(subject, f"m{i}".encode()) for i in range(n)]
    acks = await asyncio.gather(*futures)
    await nc.close()
    return [int(a.seq) for a in acks]


def _letters(url: str, stream: str, subject: str, n: int) -> list[DeadLetter]:
    seqs = _run(_fill(url, f"{subject}.orig", n))
    return [_letter(stream, s, f"{subject}.orig", f"m{i}".encode()) for i, s in enumerate(seqs)]


def _target(url: str, stream: str, subject: str) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name=stream, subjects=[subject])
        await nc.close()

    _run(go())


async def _messages(url: str, stream: str) -> list[Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = [
        await js.get_msg(stream, s) for s in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    await nc.close()
    return out


# -- bulk jobs ---------------------------------------------------------------------------------
def test_a_bulk_job_holds_its_rate_and_survives_its_worker_being_killed(
    nats_server, database_url, unique, tmp_path
):
    url = nats_server.url
    stream, subject = f"BULK_{unique}", f"bulk.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    _target(url, f"OUT_{unique}", f"out.{unique}")
    letters = _letters(url, stream, subject, 120)
    request = _operator()
    rows, _ = replays.selection(params={"stream": stream})
    opts = replays.options(subject=f"out.{unique}", rate=40)
    job = replays.start(request, rows, opts, {"filter": {"stream": stream}})
    first = tap_process(url, database_url, tmp_path / "tap1.log")
    try:
        _wait(lambda: ReplayJob.objects.get(pk=job.pk).published >= 30, what="a quarter done")
        first.send_signal(signal.SIGKILL)  # the worker dies mid-job, nothing flushed
        first.wait(10)
        mid = ReplayJob.objects.get(pk=job.pk)
        assert mid.state == "running" and 30 <= mid.published < 120
    finally:
        if first.poll() is None:
            first.kill()
    second = tap_process(url, database_url, tmp_path / "tap2.log")
    try:
        done = _wait(lambda: ReplayJob.objects.filter(pk=job.pk, state="done").first(),
                     timeout=60, what="the job finished by another worker")  # fmt: skip
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert (done.published, done.failed, done.resumed) == (120, 0, 1)
    copies = _run(_messages(url, f"OUT_{unique}"))
    origins = [m.headers["Flowscope-Replay-Of"] for m in copies]
    assert sorted(origins) == sorted(f"{stream}:{d.seq}" for d in letters)  # each once
    # the rate held: never more than 40 (and a little) copies in any second, on the server's
    # own timestamps (unthrottled, all 120 would be stored within a fraction of a second)
    times = [m.time.timestamp() for m in copies]
    assert max(sum(1 for t in times if t0 <= t < t0 + 1) for t0 in times) <= 44
    assert DeadLetter.objects.filter(stream_name=stream, status="replayed").count() == 120
    assert AuditEntry.objects.filter(action="replay.create").count() == 1
    assert AuditEntry.objects.filter(action="replay.done", result="ok").count() == 1


def test_a_cancelled_job_stops_midway_and_leaves_the_rest_new(
    nats_server, database_url, unique, tmp_path
):
    url = nats_server.url
    stream, subject = f"CAN_{unique}", f"can.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    _letters(url, stream, subject, 100)
    request = _operator()
    rows, _ = replays.selection(params={"stream": stream})
    job = replays.start(request, rows, replays.options(rate=20), {"filter": {"stream": stream}})
    tap = tap_process(url, database_url, tmp_path / "tap.log")
    try:
        _wait(lambda: ReplayJob.objects.get(pk=job.pk).published >= 10, what="started")
        replays.cancel(request, ReplayJob.objects.get(pk=job.pk))
        done = _wait(lambda: ReplayJob.objects.filter(pk=job.pk, state="cancelled").first(),
                     what="cancelled")  # fmt: skip
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.wait(30)
    assert 10 <= done.published < 60
    states = dict(ReplayItem.objects.filter(job=job).values_list("state").annotate(n=Count("id")))
    assert states == {"published": done.published, "cancelled": 100 - done.published}
    assert (
        DeadLetter.objects.filter(stream_name=stream, status="new").count() == 100 - done.published
    )
    assert AuditEntry.objects.filter(action="replay.cancel").count() == 1
    assert AuditEntry.objects.filter(action="replay.cancelled", result="ok").count() == 1


def test_two_workers_never_run_one_job(nats_server, database_url, unique):
    url = nats_server.url
    stream, subject = f"TWO_{unique}", f"two.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    _letters(url, stream, subject, 5)
    rows, _ = replays.selection(params={"stream": stream})
    job = replays.create_job(_operator(), rows, replays.options(), {"filter": {}})

    async def race() -> tuple[Any, Any, Any]:
        import psycopg

        nc = await nats.connect(url)
        async with (
            await psycopg.AsyncConnection.connect(database_url) as a,
            await psycopg.AsyncConnection.connect(database_url) as b,
        ):
            ra, rb = replay.Runner(a, nc, "A"), replay.Runner(b, nc, "B")
            got = await asyncio.gather(ra.claim(), rb.claim())
            held = next(g for g in got if g is not None)
            winner, loser = (ra, rb) if got[0] is not None else (rb, ra)
            # the winner dies silently: once its lease is over, the other takes the job ...
            await a.execute("UPDATE flowscope_replayjob SET lease_until = now() - interval '1s'")
            await a.commit()
            taken = await loser.claim()
            # ... and the first, waking up, finds it no longer holds it and stops
            lost = await replay.run_claimed(winner, held)
            await nc.close()
            return got, taken, lost

    got, taken, lost = _run(race())
    assert [g is None for g in got].count(True) == 1
    assert taken is not None and taken.id == job.pk
    assert lost.lost_lease and lost.published == 0
    j = ReplayJob.objects.get(pk=job.pk)
    assert j.resumed == 1 and j.published == 0 and j.state == "running"


# -- move, gone, deleted, discard -----------------------------------------------------------
def test_move_deletes_the_original_once_the_copy_is_stored(nats_server, database_url, unique):
    url = nats_server.url
    stream, subject = f"MV_{unique}", f"mv.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    _target(url, f"PARK_{unique}", f"park.{unique}")
    d = _letters(url, stream, subject, 1)[0]
    job = replays.replay_one(_operator(), d, replays.options(subject=f"park.{unique}", mode="move"))
    item = job.items.get()
    assert (item.state, item.result_stream, item.deleted_original) == (
        "published", f"PARK_{unique}", True
    )  # fmt: skip
    with pytest.raises(nats.js.errors.NotFoundError):
        _run(_get(url, stream, d.seq))
    assert _run(_get(url, f"PARK_{unique}", item.result_seq)).data == b"m0"


def test_what_cannot_be_replayed_says_why_and_stays_new(nats_server, database_url, unique):
    url = nats_server.url
    stream, subject = f"GONE_{unique}", f"gone.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    seq = _run(_publish(url, f"{subject}.big", b"x" * 5000, {}))
    request = _operator()
    gone = _letter(stream, 999, f"{subject}.a", b"", payload_source="gone")
    preview = _letter(stream, 998, f"{subject}.b", b"xx", truncated=True)  # not in the stream
    whole = _letter(stream, seq, f"{subject}.big", b"x" * 10, truncated=True)
    results = {d.pk: replays.replay_one(request, d, replays.options()) for d in (gone, preview)}
    assert "payload is gone" in results[gone.pk].items.get().error
    assert "only the first 2 bytes were recorded" in results[preview.pk].items.get().error
    # a truncated preview of a message its stream still holds: the whole message is sent
    job = replays.replay_one(request, whole, replays.options())
    assert _run(_get(url, stream, job.items.get().result_seq)).data == b"x" * 5000

    async def drop() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    _run(drop())
    deleted = replays.replay_one(request, _letter(stream, 5, f"{subject}.c", b"c"),
                                 replays.options())  # fmt: skip
    assert "no stream captures the subject" in deleted.items.get().error
    assert set(DeadLetter.objects.exclude(pk=whole.pk).values_list("status", flat=True)) == {"new"}


def test_discard_marks_them_resolved_with_a_reason(db):
    request = _operator()
    made = [_letter("S", i, "s.x", b"x") for i in range(1, 4)]
    with pytest.raises(FilterError) as caught:
        replays.discard(request, DeadLetter.objects.all(), "  ")
    assert caught.value.field == "reason"
    n = replays.discard(request, DeadLetter.objects.filter(pk__in=[made[0].pk, made[1].pk]),
                        "known bug, fixed in 1.2")  # fmt: skip
    assert n == 2
    statuses = dict(DeadLetter.objects.values_list("seq", "status"))
    assert statuses == {1: "discarded", 2: "discarded", 3: "new"}
    assert "olga: known bug" in DeadLetter.objects.get(seq=1).status_note
    entry = AuditEntry.objects.get(action="deadletter.discard")
    assert entry.username == "olga" and entry.detail["count"] == 2
    # a bulk replay of the same filter leaves the discarded ones out unless asked
    rows, skipped = replays.selection(params={"stream": "S"})
    assert (rows.count(), skipped) == (1, 2)


def test_a_dry_run_says_how_many_go_where(nats_server, database_url, unique, settings):
    settings.NATS_URL = nats_server.url
    url = nats_server.url
    stream, subject = f"DRY_{unique}", f"dry.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    for i in range(3):
        _letter(stream, i + 1, f"{subject}.a", b"a")
    _letter(stream, 10, f"other.{unique}", b"b")
    rows, skipped = replays.selection(params={"stream": stream})
    plan = replays.dry_run(rows, replays.options(), skipped)
    assert plan.total == 4 and not plan.error
    assert [(d.subject, d.count, d.stream) for d in plan.destinations] == [
        (f"{subject}.a", 3, stream), (f"other.{unique}", 1, None)
    ]  # fmt: skip
    assert ReplayJob.objects.count() == 0  # nothing was started
