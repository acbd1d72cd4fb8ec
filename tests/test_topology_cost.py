"""What the topology's queries cost with a million events recorded (the live partials are
rendered on every push): the window's aggregate reads only the window (BRIN on ts), and the
whole build stays within a few queries."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from dashboard.pages.topology import cache_clear, topology_live_html
from eventbus.partitions import Partitions

pytestmark = pytest.mark.slow


async def _million(database_url: str) -> None:
    """A million events over the last hour (278/s) on 2,000 subjects from 20 services: 1/12 of
    them (~83,000) in the last 5 minutes."""
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await Partitions().ensure(conn, [(now - timedelta(days=d)).date() for d in range(3)])
        cur = await conn.execute(
            "INSERT INTO flowscope_stream (name, created, retention, subjects, config, "
            "observed_by, "
            "observation_note, discovered_at, updated_at, messages, bytes, first_seq, last_seq, "
            "consumer_count) VALUES ('BIG', now(), 'limits', '[\"big.>\"]', '{}', 'consumer', '', "
            "now(), now(), 0, 0, 0, 0, 0) RETURNING id"
        )
        (sid,) = await cur.fetchone()  # type: ignore[misc]
        # ts grows with id (arrival order), as the tap writes it: the BRIN's premise
        await conn.execute(
            "INSERT INTO flowscope_event (stream_id, seq, ts, subject, size, service, payload, "
            "recorded_at) SELECT %s, g, %s::timestamptz + g * interval '3.6 milliseconds', "
            "'big.' || (g %% 200) || '.' || (g %% 10), 100, 'svc' || (g %% 20), '\\x00', now() "
            "FROM generate_series(1, 1000000) g",
            (sid, now - timedelta(hours=1)),
        )
        await conn.execute("ANALYZE flowscope_event")


def test_live_html_with_a_million_events(database_url, django_assert_max_num_queries, capsys):
    asyncio.run(_million(database_url))
    from django.db import connection

    query = (
        "EXPLAIN (ANALYZE, BUFFERS) SELECT stream_id, subject, service, count(*) "
        "FROM flowscope_event WHERE ts >= now() - interval '5 minutes' GROUP BY 1, 2, 3"
    )
    report = []
    for vacuumed in (False, True):
        if vacuumed:  # autovacuum summarizes the BRIN's newest ranges; until then they are read
            with connection.cursor() as cur:
                cur.execute("VACUUM ANALYZE flowscope_event")
        with connection.cursor() as cur:
            cur.execute(query)
            plan = [r[0] for r in cur.fetchall()]
        timings = []
        for _ in range(3):
            cache_clear()
            started = time.perf_counter()
            with django_assert_max_num_queries(8):
                html = topology_live_html()
            timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        topology_live_html()
        cached = time.perf_counter() - started
        report.append(
            f"BRIN {'summarized' if vacuumed else 'tail unsummarized'}: "
            + "; ".join(
                line.strip()
                for line in plan
                if "Rows Removed" in line or "Execution Time" in line or "Heap Blocks" in line
            )
            + f"; topology_live_html {', '.join(f'{t * 1000:.0f} ms' for t in timings)}"
            + f", cached {cached * 1000:.1f} ms"
        )
        assert "BIG" in html and "svc19" in html and "big.&gt;" in html
        # an index finds the window (the BRIN, or the B-tree on ts of migration 0011)
        assert any("Index Scan" in line for line in plan), plan
        assert not any("Seq Scan" in line for line in plan), plan
        # (times printed, not asserted: a test is no benchmark; the plan and the query count
        # above are what keep the page cheap)
    with capsys.disabled():
        print("\n" + "\n".join(report))
