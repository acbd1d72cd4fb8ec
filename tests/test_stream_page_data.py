"""The data behind the stream and consumer pages: chart ranges from the lag samples, the ack rate,
subject rates, configuration facts. Real PostgreSQL; no tap needed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection

from dashboard.models import ConsumerSample, Event, Stream, StreamSample
from dashboard.pages import charts
from dashboard.pages.charts import ack_rate, ack_rates
from dashboard.pages.facts import consumer_config_facts, duration, stream_config_facts
from dashboard.pages.streams import subject_rates
from eventbus.partitions import partition_name

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def ensure_partition(day: date) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with connection.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF flowscope_event "
            "FOR VALUES FROM (%s) TO (%s)",
            [start, start + timedelta(days=1)],
        )


# --- the ack rate -------------------------------------------------------------------------------


def test_ack_rate_is_the_ack_floors_rise_per_second():
    assert ack_rate(100.0, 50, 110.0, 150) == 10.0
    assert ack_rate(100.0, 50, 100.5, 51) == 2.0
    assert ack_rate(100.0, 50, 110.0, 50) == 0.0  # nothing acked: a rate of zero, not unknown


def test_ack_rate_is_unknown_when_no_time_passed_or_the_floor_went_back():
    assert ack_rate(100.0, 50, 100.0, 60) is None
    assert ack_rate(100.0, 50, 90.0, 60) is None
    assert ack_rate(100.0, 500, 110.0, 3) is None  # consumer recreated, stream purged


def test_ack_rates_give_each_sample_the_rate_since_the_one_before():
    times = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    floors = [10, 60, 60, 10, None, 30]
    assert ack_rates(times, floors) == [None, 10.0, 0.0, None, None, None]
    assert ack_rates([], []) == []


# --- chart ranges -------------------------------------------------------------------------------


def _samples(db: None) -> Stream:
    """Consumer `app`: a raw sample every 5 s for the last 25 h (lag < 1000, as the sampler
    leaves them), one downsampled sample a minute from 7 days to 24 h ago (lag >= 1000), and one
    sample 8 days old. The sampler keeps raw samples for 24 h (eventbus/lag.py downsample)."""
    stream = Stream.objects.create(
        name="CHART", created=NOW - timedelta(days=9), retention="limits"
    )
    rows = [ConsumerSample(ts=NOW - timedelta(days=8), stream=stream, consumer="app",
                           num_pending=5000, downsampled=True)]  # fmt: skip
    t = NOW - timedelta(days=7) + timedelta(seconds=30)
    while t < NOW - timedelta(hours=24):
        rows.append(ConsumerSample(ts=t, stream=stream, consumer="app", num_pending=1000,
                                   num_ack_pending=t.minute, downsampled=True))  # fmt: skip
        t += timedelta(minutes=1)
    for i in range(25 * 720):  # every 5 s, newest first
        ts = NOW - timedelta(seconds=5 * i)
        rows.append(ConsumerSample(ts=ts, stream=stream, consumer="app", num_pending=i % 500,
                                   num_ack_pending=1, ack_floor_stream_seq=1_000_000 - 10 * i,
                                   ack_floor_consumer_seq=100_000 - i,
                                   downsampled=ts < NOW - timedelta(hours=24)))  # fmt: skip
        rows.append(ConsumerSample(ts=ts, stream=stream, consumer="other", num_pending=7))
    ConsumerSample.objects.bulk_create(rows, batch_size=5000)
    return stream


@pytest.mark.parametrize("range_key", list(charts.RANGES))
def test_each_chart_range_returns_its_samples_bucketed_to_at_most_600_points(db, range_key):
    stream = _samples(db)
    chart = charts.lag_chart(stream.id, ["app"], range_key, NOW)
    span = charts.RANGES[range_key].total_seconds()
    assert None not in chart.series["app"]
    lags = [v for v in chart.series["app"] if v is not None]
    assert set(chart.series) == {"app"}  # only the consumers asked for
    assert 2 <= len(chart.t) <= charts.MAX_POINTS
    assert chart.t == sorted(chart.t)
    assert NOW.timestamp() - span - charts.bucket_seconds(range_key) <= chart.t[0]
    assert chart.t[-1] <= NOW.timestamp()
    day_ago = NOW.timestamp() - 86400 - charts.bucket_seconds(range_key)  # a bucket may straddle
    older = [lag for t, lag in zip(chart.t, lags, strict=True) if t < day_ago]
    if range_key == "7d":
        # days 2..7 come from the downsampled samples; the 8-day-old one is outside the range
        assert len(older) > 0.8 * len(lags) and all(1000 <= lag < 5000 for lag in older)
        assert max(lags) < 5000
    else:
        assert not older and max(lags) < 1000
    if range_key == "15m":  # a raw sample every 5 s: one point each, its own value
        assert len(chart.t) == 180
        assert lags[-1] == 0 + 1 and lags[-2] == 1 + 1
        assert 4 <= chart.t[-1] - chart.t[-2] <= 6  # bucket starts (2 s buckets) of 5 s samples
    else:  # each point is the highest lag of its bucket: the 0..499 saw-tooth peaks show
        last_day = day_ago + 2 * charts.bucket_seconds(range_key)
        assert max(lag for t, lag in zip(chart.t, lags, strict=True) if t > last_day) == 500


def test_a_chart_has_one_series_per_consumer_aligned_on_time(db):
    stream = _samples(db)
    chart = charts.lag_chart(stream.id, ["app", "other", "gone"], "15m", NOW)
    assert list(chart.series) == ["app", "other", "gone"]
    assert chart.series["other"] == [7] * len(chart.t)
    assert chart.series["gone"] == [None] * len(chart.t)
    assert charts.lag_chart(stream.id, [], "1h", NOW).t == []


def test_the_consumer_charts_carry_its_counters_and_ack_rate(db):
    stream = _samples(db)
    drawn = charts.consumer_charts(stream.id, "app", "15m", NOW)
    # each on an axis of its own: redelivered (which keeps the given-up messages) does not
    # flatten the lag, and pull requests are not messages
    assert [(c.key, list(c.chart.series), c.chart.unit) for c in drawn] == [
        ("lag", ["pending", "ack pending"], "messages"),
        ("redelivered", ["redelivered"], "messages"),
        ("waiting", ["waiting"], "requests"),
        ("acks", ["acks"], "msg/s"),
    ]
    lag, rates = drawn[0].chart, drawn[-1].chart
    assert lag.series["pending"][-1] == 0 and lag.series["ack pending"][-1] == 1
    assert rates.series["acks"][0] is None
    # 1 delivery acked per 5 s, while the floor's stream sequence passes 10 (other subjects')
    assert rates.series["acks"][1:] == [pytest.approx(0.2)] * (len(rates.t) - 1)
    assert charts.recent_ack_rate(stream.id, "app", NOW) == pytest.approx(0.2)
    assert charts.recent_ack_rate(stream.id, "nobody", NOW) is None
    # samples from before the consumer sequence was kept: unknown, not a rate from nothing
    assert charts.recent_ack_rate(stream.id, "other", NOW) is None


def test_an_unknown_range_falls_back_to_the_default():
    assert charts.parse_range("24h") == "24h"
    assert charts.parse_range("1y") == charts.parse_range(None) == charts.DEFAULT_RANGE == "1h"


# --- subject rates ------------------------------------------------------------------------------


def test_subject_rates_count_the_last_minute_and_five_minutes_per_subject(db):
    for day in {(NOW - timedelta(minutes=30)).date(), NOW.date()}:
        ensure_partition(day)
    stream = Stream.objects.create(
        name="RATES", created=NOW - timedelta(days=1), retention="limits"
    )
    StreamSample.objects.create(stream=stream, ts=NOW - timedelta(minutes=7), last_seq=10)
    seq = 0

    def publish(subject: str, ago: timedelta, sequenced: bool = True) -> None:
        nonlocal seq
        seq += 1
        Event.objects.create(stream=stream, seq=seq if sequenced else None, ts=NOW - ago,
                             subject=subject, size=1, payload=b"", recorded_at=NOW)  # fmt: skip

    for _ in range(10):
        publish("old", timedelta(minutes=20))  # seq 1..10: before the floor
    for _ in range(3):
        publish("orders.b", timedelta(minutes=3))
        publish("orders.a", timedelta(minutes=3))
    for _ in range(6):
        publish("orders.a", timedelta(seconds=30))
    publish("nosq", timedelta(seconds=10), sequenced=False)
    # below the sampled floor: not read at all (a recent time stamp on it changes nothing)
    Event.objects.create(stream=stream, seq=3, ts=NOW - timedelta(seconds=5), subject="below",
                         size=1, payload=b"", recorded_at=NOW)  # fmt: skip
    publish("nosq", timedelta(minutes=10), sequenced=False)
    got = [(r.subject, r.last_minute, r.last_5_minutes) for r in subject_rates(stream, NOW)]
    assert got == [("orders.a", 6, 9), ("orders.b", 0, 3), ("nosq", 1, 1)]
    assert subject_rates(stream, NOW)[0].per_second_1m == 0.1


def test_subject_rates_read_only_the_streams_recent_index_entries(db):
    """The plan: index scans of this stream's recent entries, no sequential scan of the event
    table."""
    ensure_partition(NOW.date())
    stream = Stream.objects.create(name="PLAN", created=NOW, retention="limits")
    with connection.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        try:
            from django.test.utils import CaptureQueriesContext

            with CaptureQueriesContext(connection) as q:
                subject_rates(stream, NOW)
            cur.execute("EXPLAIN " + q.captured_queries[-1]["sql"])
            plan = "\n".join(r[0] for r in cur.fetchall())
        finally:
            cur.execute("RESET enable_seqscan")
    # this stream's entries of (stream_id, seq, ts), or the last minutes of the B-tree on ts
    # (migration 0011), as the planner prefers: either way no sequential scan
    assert any(i in plan for i in ("flowscope_event_stream_seq", "stream_id_seq_ts", "_ts_idx")), (
        plan
    )
    assert "Seq Scan" not in plan, plan


# --- configuration facts ------------------------------------------------------------------------


def test_durations_and_limits_read_as_words():
    assert duration(90 * 60 * 10**9) == "1 h 30 min"
    assert duration(2 * 60 * 10**9) == "2 min"
    assert duration(7 * 86400 * 10**9 + 5 * 10**9) == "7 d"
    assert duration(500_000_000) == "500 ms"
    assert duration(0) == duration(None) == "none"
    facts = dict(stream_config_facts({
        "subjects": ["a.>", "b"], "retention": "workqueue", "storage": "memory",
        "num_replicas": 3, "max_age": 3600 * 10**9, "max_bytes": -1, "max_msgs": 10,
        "max_msg_size": 1024, "max_msgs_per_subject": -1, "discard": "new",
        "duplicate_window": 120 * 10**9, "allow_direct": True,
    }))  # fmt: skip
    assert facts == {
        "Subjects": "a.>, b", "Retention": "workqueue", "Storage": "memory", "Replicas": "3",
        "Max age": "1 h", "Max bytes": "unlimited", "Max messages": "10",
        "Max message size": "1.0 KiB", "Max per subject": "unlimited", "Discard": "new",
        "Duplicate window": "2 min", "Allow direct": "yes",
    }  # fmt: skip
    assert dict(stream_config_facts({}))["Max age"] == "unlimited"


def test_consumer_configuration_names_filters_acks_backoff_and_pause():
    facts = dict(consumer_config_facts({
        "durable_name": "billing", "filter_subjects": ["orders.*", "refunds.>"],
        "ack_policy": "explicit", "ack_wait": 30 * 10**9, "max_deliver": 5,
        "backoff": [10**9, 5 * 10**9, 60 * 10**9], "deliver_policy": "by_start_sequence",
        "opt_start_seq": 42, "pause_until": "2026-11-21T00:00:00Z",
    }))  # fmt: skip
    assert facts["Filter subjects"] == "orders.*, refunds.>"
    assert facts["Durable"] == "yes" and facts["Kind"] == "pull"
    assert (facts["Ack wait"], facts["Max deliver"]) == ("30 s", "5")
    assert facts["Backoff"] == "1 s, 5 s, 1 min"
    assert facts["Deliver policy"] == "from sequence 42"
    assert facts["Paused until"] == "2026-11-21T00:00:00Z"
    eph = dict(consumer_config_facts({"filter_subject": "x", "deliver_subject": "_INBOX.1"}))
    assert (eph["Durable"], eph["Kind"], eph["Filter subjects"]) == ("no (ephemeral)", "push", "x")
    assert eph["Max deliver"] == "unlimited" and "Paused until" not in eph
