"""The taps as the overview shows them: what each heartbeat row says, read honestly.

A tap writes its row every second (eventbus/heartbeat.py). From it and the streams' state:
- `silent`: no heartbeat for SILENT_AFTER seconds (dead, hung, or cut off from PostgreSQL);
- `stalled`: it holds events and has committed nothing for STALLED_AFTER seconds;
- `writer down` / `restarting`: its writer says so;
- `behind`: the streams it owns hold events past its checkpoints (the server's last sequence,
  sampled by the lag sampler, against the last one recorded);
- `ok` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dashboard.models import Checkpoint, Stream, TapInstance
from eventbus.heartbeat import STALLED_AFTER, is_stalled

SILENT_AFTER = 10.0


@dataclass
class TapView:
    tap: TapInstance
    state: str  # ok, behind, stalled, silent, writer down, restarting
    streams: list[str]
    behind: int  # events stored in its streams and not recorded yet
    last_commit_age: float | None
    heartbeat_age: float

    @property
    def healthy(self) -> bool:
        return self.state in ("ok", "behind")


def tap_state(tap: TapInstance, behind: int, now: datetime) -> tuple[str, float | None, float]:
    """(state, seconds since its last commit, seconds since its last heartbeat)."""
    heartbeat_age = (now - tap.heartbeat_at).total_seconds()
    commit_age = (now - tap.last_commit_at).total_seconds() if tap.last_commit_at else None
    if heartbeat_age >= SILENT_AFTER:
        state = "silent"
    elif tap.writer_state == "restarting":
        state = "restarting"
    elif is_stalled(tap.held_events, commit_age, STALLED_AFTER):
        state = "stalled"
    elif tap.writer_state == "down":
        state = "writer down"
    elif behind > 0:
        state = "behind"
    else:
        state = "ok"
    return state, commit_age, heartbeat_age


def tap_views(now: datetime) -> list[TapView]:
    taps = list(TapInstance.objects.order_by("started_at", "id"))
    live = {
        s.name: s
        for s in Stream.objects.filter(deleted_at__isnull=True).only(
            "id", "name", "last_seq", "observed_by"
        )
    }
    recorded = dict(Checkpoint.objects.values_list("stream_id", "last_seq"))
    views = []
    for tap in taps:
        names = sorted(n for n in tap.streams if isinstance(n, str))
        behind = 0
        for name in names:
            s = live.get(name)
            if s is not None and s.observed_by != "subject":  # no sequences to compare
                behind += max(0, s.last_seq - recorded.get(s.id, 0))
        state, commit_age, heartbeat_age = tap_state(tap, behind, now)
        views.append(TapView(tap, state, names, behind, commit_age, heartbeat_age))
    return views
