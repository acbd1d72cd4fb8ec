"""The tap's heartbeat: its row in flowscope_tap says, every second, that it is alive and what
it has really done, so the dashboard can tell a working tap from one that only looks alive.

- `last_commit_at`: when a batch was last committed;
- `held_events`: events taken from NATS and not committed yet (buffer, batches in flight,
  observers' pending), so "holds events but commits nothing" is visible as stalled;
- `written`, `events_per_second` (over the last 10 s);
- `writer_state`: ok, `down` (PostgreSQL refuses its batches) or `restarting` (it failed and the
  supervisor restarts it); `restarts` and `last_error` from the supervisor.
Messages a subject subscription dropped are added to their stream's checkpoint row (`dropped`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from eventbus.aio import wait_event
from eventbus.observers import SubjectObserver

if TYPE_CHECKING:
    from eventbus.tap import Tap

log = logging.getLogger("flowscope.heartbeat")
RATE_WINDOW = 10.0  # seconds the events/s figure is measured over
STALLED_AFTER = 15.0  # seconds without a commit while holding events: the dashboard's rule


def is_stalled(held_events: int, last_commit_age: float | None, threshold: float) -> bool:
    """A tap that holds events and has not committed for `threshold` seconds is stalled."""
    return held_events > 0 and (last_commit_age is None or last_commit_age >= threshold)


class Rate:
    """Events per second over a sliding window, from a running total."""

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, total: int) -> float:
        self.samples.append((now, total))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


class Heartbeat:
    def __init__(self, tap: Tap):
        self.tap = tap
        self.rate = Rate()
        self.ok = True
        self.last_ok: float | None = None  # time.monotonic() of the last heartbeat written

    def status(self) -> dict[str, Any]:
        tap = self.tap
        writer = tap.writer
        pending = sum(o.pending_events() for o in tap.observers.values())
        entry = tap.supervisor.tasks.get("writer")
        if not tap.writer_running:
            state = "restarting"
        elif writer.db_down_since is not None:
            state = "down"
        else:
            state = "ok"
        restarts = sum(e.restarts for e in tap.supervisor.tasks.values())
        errors = [
            f"{e.name}: {e.last_error}" for e in tap.supervisor.tasks.values() if e.last_error
        ]
        return {
            "last_commit_at": (
                datetime.fromtimestamp(writer.last_commit, UTC) if writer.last_commit else None
            ),
            "held_events": writer.holding() + pending,
            "written": writer.written,
            "events_per_second": round(self.rate.update(time.monotonic(), writer.written), 1),
            "writer_state": state if entry is not None else "starting",
            "restarts": restarts,
            "last_error": "; ".join(errors)[:1000],
        }

    def dropped(self) -> tuple[dict[int, int], list[tuple[SubjectObserver, int]]]:
        """Drops counted since the last stored heartbeat: per stream id, and the counts to
        mark as reported once stored."""
        found: dict[int, int] = {}
        marks: list[tuple[SubjectObserver, int]] = []
        for observer in self.tap.observers.values():
            if isinstance(observer, SubjectObserver):
                new = observer.dropped - observer.dropped_reported
                if new:
                    found[observer.stream_id] = found.get(observer.stream_id, 0) + new
                    marks.append((observer, observer.dropped))
        return found, marks

    async def beat(self) -> bool:
        """Write the row; False when the lease has no connection to write it on (yet)."""
        dropped, marks = self.dropped()
        if await self.tap.lease.heartbeat(self.status(), dropped):
            for observer, count in marks:
                observer.dropped_reported = count
            return True
        return False

    async def run(self) -> None:
        interval = self.tap.config.heartbeat_interval
        while not self.tap.stop.is_set():
            try:
                if await self.beat():
                    self.last_ok = time.monotonic()
                if not self.ok:
                    log.warning("heartbeat: written again")
                self.ok = True
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self.ok:
                    log.error("heartbeat: PostgreSQL unavailable (%s): the lease is lost", exc)
                self.ok = False
                self.tap.wake.set()  # discovery takes the locks again (or gives up the streams)
            if await wait_event(self.tap.stop, interval):
                return
