"""Bulk replay benchmark (issue #15): `make bench` or `.venv/bin/python bench/replay.py`.

In one run, with a nats-server and a PostgreSQL of its own (temporary, removed at exit, unless
NATS_URL / DATABASE_URL are set), in rounds (3 by default):

(a) nats-py alone: `publish_async` of N messages of the same size into a stream, all
    acknowledged (windows of 4,000 pending, nats-py's own default bound), timed from the first
    publish to the last acknowledgement: the ceiling one client sets;
(b) a bulk replay of N dead letters (rows made directly in flowscope_deadletter, their payloads
    stored), unthrottled, run by eventbus/replay.py's Runner as a tap's worker runs it: claim,
    read each batch of items, publish each copy with its headers (Nats-Msg-Id, Flowscope-Replay-Of,
    the child traceparent), wait for the acknowledgements, record every result, the dead letters'
    status and the job's counts in one transaction a batch. Timed from the claim to the job's
    state `done`, so everything a worker does is inside.

A round's baseline is (a) measured just before (b), into a fresh stream each. The headline is
the median over the rounds of (b)'s rate and of (b)/(a). Then every copy is checked: N messages
in the target stream, each dead letter's once, all N items published, all N dead letters
`replayed`.

Target (issue #15): (b) >= 5,000 messages/s for 10,000 dead letters, unthrottled. Exits 1 if
missed (`--no-targets`: 0 all the same), 2 if the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import psycopg  # noqa: E402

from bench.verdict import exit_status  # noqa: E402
from eventbus import replay  # noqa: E402
from eventbus.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402

TARGET = 5_000.0
PAYLOAD = 200  # bytes, the size the tap benchmark uses
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def say(text: str) -> None:
    print(text, flush=True)


async def raw_rate(url: str, n: int) -> float:
    """(a): nats-py's publish_async, every acknowledgement awaited."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"RAW_{uuid.uuid4().hex[:6]}"
    await js.add_stream(name=name, subjects=[f"raw.{name}"])
    payload = b"x" * PAYLOAD
    t0 = time.perf_counter()
    futures = [await js.publish_async(f"raw.{name}", payload) for _ in range(n)]
    await asyncio.gather(*futures)
    seconds = time.perf_counter() - t0
    await js.delete_stream(name)
    await nc.close()
    return n / seconds


async def make_job(db_url: str, nats_url: str, n: int) -> tuple[int, str, str]:
    """N dead letters of a stream of their own (their originals in it), and a job for them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"BENCH_{uuid.uuid4().hex[:6]}"
    await js.add_stream(name=stream, subjects=[f"bench.{stream}.>"])
    out = f"OUT_{stream}"
    await js.add_stream(name=out, subjects=[f"out.{stream}"])
    await nc.close()
    now = datetime.now(UTC)
    payload = b"x" * PAYLOAD
    headers = json.dumps({"traceparent": PARENT, "X-Tenant": "t1"})
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        async with (
            db.cursor() as cur,
            cur.copy(
                "COPY flowscope_deadletter (stream_name, seq, consumer, reason, terminate_reason, "
                "deliveries, subject, headers, payload, truncated, payload_source, origin_stream, "
                "died_at, captured_at, status, status_note) FROM STDIN"
            ) as copy,
        ):
            for seq in range(1, n + 1):
                subject = f"bench.{stream}.{seq % 50}"
                await copy.write_row((stream, seq, "worker", "max_deliveries", "", 5, subject,
                                      headers, payload, False, "stream", "", now, now, "new",
                                      ""))  # fmt: skip
        cur2 = await db.execute(
            "INSERT INTO flowscope_replayjob (created_at, username, mode, subject, rate, "
            "selection, state, total, published, failed, cancel_requested, worker, resumed) "
            "VALUES (now(), 'bench', 'copy', %s, NULL, '{}', 'pending', %s, 0, 0, false, '', 0) "
            "RETURNING id",
            (f"out.{stream}", n),
        )
        row = await cur2.fetchone()
        assert row is not None
        job_id = int(row[0])
        await db.execute(
            """
            INSERT INTO flowscope_replayitem (job_id, position, dead_letter_id, attempt, msg_id,
                subject, state, result_stream, result_seq, duplicate, deleted_original, error)
            SELECT %s, row_number() OVER (ORDER BY d.seq), d.id, 0,
                   'flowscope-replay:' || d.id || ':0', %s, 'pending', '', NULL, false, NULL, ''
            FROM flowscope_deadletter d WHERE d.stream_name = %s
            """,
            (job_id, f"out.{stream}", stream),
        )
        await db.execute("ANALYZE flowscope_replayitem")
        await db.execute("ANALYZE flowscope_deadletter")
    return job_id, stream, out


async def replay_rate(db_url: str, nats_url: str, n: int) -> tuple[float, dict[str, Any]]:
    """(b): the worker's Runner on a job of N, unthrottled."""
    job_id, stream, out = await make_job(db_url, nats_url, n)
    nc = await nats.connect(nats_url)
    async with (
        await psycopg.AsyncConnection.connect(db_url) as db,
        await psycopg.AsyncConnection.connect(db_url) as results,
    ):
        runner = replay.Runner(db, nc, "bench-worker", db_record=results)
        t0 = time.perf_counter()
        job = await runner.claim(job_id)
        assert job is not None
        progress = await replay.run_claimed(runner, job)
        seconds = time.perf_counter() - t0
    info = await nc.jetstream().stream_info(out)
    await nc.close()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        cur = await db.execute(
            "SELECT (SELECT state FROM flowscope_replayjob WHERE id = %s), "
            "(SELECT count(*) FROM flowscope_replayitem WHERE job_id = %s "
            " AND state = 'published'), "
            "(SELECT count(*) FROM flowscope_deadletter WHERE stream_name = %s "
            " AND status = 'replayed')",
            (job_id, job_id, stream),
        )
        row = await cur.fetchone()
    assert row is not None
    check = {"state": row[0], "published": int(row[1]), "replayed": int(row[2]),
             "stored": int(info.state.messages), "batches": progress.batches,
             "failed": progress.failed}  # fmt: skip
    return n / seconds, check


def migrate(db_url: str) -> None:
    env = dict(os.environ, DATABASE_URL=db_url, DJANGO_SETTINGS_MODULE="dashboard.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                   env=env, check=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--no-targets", action="store_true")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    folder = Path(tempfile.mkdtemp(prefix="flowscope-bench-replay-"))
    servers: list[Any] = []
    try:
        nats_url = os.environ.get("NATS_URL") or ""
        if not nats_url:
            servers.append(EmbeddedNats(folder / "nats").start())
            nats_url = servers[-1].url
        db_url = os.environ.get("DATABASE_URL") or ""
        if not db_url:
            servers.append(EmbeddedPostgres(folder / "pg", database="flowscope").start())
            db_url = servers[-1].url()
        migrate(db_url)
        n = args.messages
        say(f"bulk replay of {n:,} dead letters ({PAYLOAD}-byte payloads), unthrottled, "
            f"{rounds} rounds; baseline: nats-py publish_async of {n:,}, same round")  # fmt: skip
        raws, reps, ratios = [], [], []
        for r in range(1, rounds + 1):
            raw = asyncio.run(raw_rate(nats_url, n))
            rep, check = asyncio.run(replay_rate(db_url, nats_url, n))
            raws.append(raw)
            reps.append(rep)
            ratios.append(rep / raw)
            say(f"round {r}: nats-py publish_async {raw:,.0f} msg/s · replay {rep:,.0f} msg/s "
                f"· ratio {rep / raw:.2f} · {check}")  # fmt: skip
            ok = (check["state"] == "done" and check["published"] == n
                  and check["replayed"] == n and check["stored"] == n)  # fmt: skip
            if not ok:
                say(f"round {r}: the replay is NOT exact: {check}")
                return 1
        rep, raw, ratio = (statistics.median(x) for x in (reps, raws, ratios))
        say("")
        say(f"{'figure':<44}{'value':>14}{'baseline':>14}{'ratio':>8}{'target':>14}  verdict")
        verdict = "PASS" if rep >= TARGET else "FAIL"
        say(f"{'bulk replay, unthrottled (median)':<44}{rep:>10,.0f} m/s{raw:>10,.0f} m/s"
            f"{ratio:>8.2f}{'>= 5,000 m/s':>14}  {verdict}")  # fmt: skip
        say("every copy stored once, every item and dead letter recorded: PASS")
        missed = [] if rep >= TARGET else [f"bulk replay {rep:,.0f} msg/s < {TARGET:,.0f}"]
        return exit_status(missed, args.no_targets)
    except Exception as exc:  # the benchmark could not run
        say(f"bench/replay.py could not run: {exc!r}")
        raise SystemExit(2) from exc
    finally:
        for server in reversed(servers):
            server.stop()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
