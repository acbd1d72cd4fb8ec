"""What a running tap says on its port (eventbus/httpserver.py): its /readyz checks and the
gauges of its /metrics read at scrape time (the counters are in eventbus/metrics.py).

Both read the tap's own state in memory, no I/O, so they answer at once whatever is down."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from eventbus.metrics import Sample

if TYPE_CHECKING:
    from eventbus.tap import Tap


def checks(tap: Tap) -> dict[str, str]:
    """/readyz: NATS connected; PostgreSQL taking the writer's batches and the heartbeat; the
    heartbeat written within `heartbeat_fresh` seconds; the writer running."""
    nc, beat = tap.nc, tap.heartbeat
    last = beat.last_ok
    fresh = last is not None and time.monotonic() - last < tap.config.heartbeat_fresh
    # the heartbeat, discovery and the writer each say when PostgreSQL refused them
    db_ok = beat.ok and tap.db_ok and tap.writer.db_down_since is None
    return {
        "nats": "ok" if nc is not None and nc.is_connected else "unreachable",
        "database": "ok" if db_ok else "unreachable",
        "heartbeat": "ok" if fresh else ("starting" if last is None else "stale"),
        "writer": "ok" if tap.writer_running else "restarting",
    }


def samples(tap: Tap) -> list[Sample]:
    """The tap's gauges (and the counters it keeps itself) for /metrics."""
    writer = tap.writer
    held = writer.holding() + sum(o.pending_events() for o in tap.observers.values())
    ready = checks(tap)
    found = [
        Sample("flowscope_tap_streams_owned", "Streams this tap observes now.",
               len(tap.observers)),
        Sample("flowscope_tap_held_events", "Events read from NATS and not committed yet.",
               held),
        Sample("flowscope_tap_nats_connected", "1 while the tap's NATS connection is up.",
               ready["nats"] == "ok"),
        Sample("flowscope_tap_database_up", "1 while PostgreSQL takes the tap's writes.",
               ready["database"] == "ok"),
        Sample("flowscope_tap_staged_batches", "Batches written through the staging table "
               "(after a failure or a conflict).", writer.staged_batches, kind="counter"),
    ]  # fmt: skip
    if writer.last_commit:
        found.append(Sample("flowscope_tap_last_commit_timestamp_seconds",
                            "Unix time of the tap's last committed batch.",
                            writer.last_commit))  # fmt: skip
    for name, behind in sorted(tap.behind.items()):
        found.append(Sample("flowscope_tap_stream_behind_messages",
                            "Messages past the tap's last recorded sequence when the stream was "
                            "last sampled (every FLOWSCOPE_LAG_INTERVAL).", behind,
                            {"stream": name}))  # fmt: skip
    for entry in tap.supervisor.tasks.values():
        found.append(Sample("flowscope_tap_task_restarts",
                            "Supervised tasks of the tap that failed and were restarted.",
                            entry.restarts, {"task": entry.name}, kind="counter"))  # fmt: skip
    return found
