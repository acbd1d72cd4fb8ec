"""The overview's taps: what each heartbeat row says, shown honestly (issue #11 point 3)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.models import Checkpoint, Stream, TapInstance
from dashboard.taps import tap_state
from eventbus.heartbeat import Rate, is_stalled


def tap_row(**fields: object) -> TapInstance:
    now = timezone.now()
    base: dict[str, object] = {
        "id": "t1", "hostname": "h", "pid": 1, "started_at": now - timedelta(minutes=5),
        "heartbeat_at": now, "streams": [], "last_commit_at": now, "held_events": 0,
        "written": 100, "events_per_second": 12.5, "writer_state": "ok",
    }  # fmt: skip
    base.update(fields)
    return TapInstance(**base)


def test_a_tap_that_holds_events_and_commits_nothing_is_stalled():
    now = timezone.now()
    stalled = tap_row(held_events=300, last_commit_at=now - timedelta(seconds=20))
    assert tap_state(stalled, 0, now)[0] == "stalled"
    never = tap_row(held_events=1, last_commit_at=None)
    assert tap_state(never, 0, now)[0] == "stalled"
    idle = tap_row(held_events=0, last_commit_at=now - timedelta(hours=2))
    assert tap_state(idle, 0, now)[0] == "ok"  # nothing to write is not a stall
    busy = tap_row(held_events=5000, last_commit_at=now - timedelta(seconds=1))
    assert tap_state(busy, 0, now)[0] == "ok"


def test_other_tap_states():
    now = timezone.now()
    assert tap_state(tap_row(heartbeat_at=now - timedelta(seconds=30)), 0, now)[0] == "silent"
    assert tap_state(tap_row(writer_state="restarting"), 0, now)[0] == "restarting"
    assert tap_state(tap_row(writer_state="down"), 0, now)[0] == "writer down"
    assert tap_state(tap_row(), 12, now)[0] == "behind"


def test_is_stalled_and_rate():
    assert is_stalled(1, None, 15) and is_stalled(1, 15.0, 15)
    assert not is_stalled(0, None, 15) and not is_stalled(1, 14.9, 15)
    rate = Rate(window=10)
    assert rate.update(0.0, 0) == 0.0
    assert rate.update(1.0, 100) == 100.0
    for t in range(2, 30):
        r = rate.update(float(t), t * 100)
    assert r == pytest.approx(100.0)  # steady 100/s, measured over the last 10 s only


@pytest.mark.django_db
def test_the_overview_shows_each_tap_with_its_state_and_what_it_is_behind(client, alice):
    now = timezone.now()
    stream = Stream.objects.create(
        name="ORDERS", created=now, retention="limits", observed_by="consumer", last_seq=1500
    )
    Checkpoint.objects.create(stream=stream, last_seq=1200, recorded=1200)
    TapInstance.objects.bulk_create(
        [
            tap_row(id="good", streams=["ORDERS"]),
            tap_row(id="stuck", held_events=300, last_commit_at=now - timedelta(seconds=40)),
            tap_row(id="gone", heartbeat_at=now - timedelta(minutes=2)),
        ]
    )
    client.login(username=alice[0], password=alice[1])
    html = client.get("/").content.decode()
    assert 'data-tap="good" data-state="behind"' in html  # 1500 stored, 1200 recorded
    assert '300 <small class="muted">events</small>' in html
    assert 'data-tap="stuck" data-state="stalled"' in html
    assert 'data-tap="gone" data-state="silent"' in html
    assert 'data-field="recorded" data-label="Recorded">1,200<' in html  # grouped by thousands


@pytest.mark.django_db
def test_without_a_tap_the_overview_says_nothing_is_recorded(client, alice):
    client.login(username=alice[0], password=alice[1])
    assert "No tap is running: nothing is being recorded" in client.get("/").content.decode()
