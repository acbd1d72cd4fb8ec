"""An admin turns on RePublish for a work-queue stream: the tap then records it with sequences,
and the application still gets every job."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import nats
from nats.js.api import RetentionPolicy

from eventbus.republish import republish_config
from tests.taputil import ROOT, eventually, gaps, query, tap_running


def manage(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(os.environ, NATS_URL=nats_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _mode(database_url: str, stream: str) -> str | None:
    rows = await query(
        database_url,
        "SELECT observed_by FROM flowscope_stream WHERE name = %s AND deleted_at IS NULL",
        stream,
    )
    return rows[0][0] if rows else None


async def _seqs(database_url: str, stream: str) -> list[int | None]:
    rows = await query(
        database_url,
        "SELECT e.seq FROM flowscope_event e JOIN flowscope_stream s ON s.id = e.stream_id "
        "WHERE s.name = %s ORDER BY e.id",
        stream,
    )
    return [r[0] for r in rows]


async def test_republish_command_switches_a_work_queue_stream_to_sequenced_observation(
    nats_server, database_url, unique
):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream, subject = f"WQRP_{unique}", f"wqrp.{unique}"
    await js.add_stream(name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
    app = await js.pull_subscribe(subject, durable="worker")
    async with tap_running(nats_server.url, database_url) as tap:
        await eventually(lambda: _observing(tap, stream, "subject"), what="subject observer")
        for i in range(5):
            await js.publish(subject, f"job {i}".encode())
        await eventually(lambda: _has(database_url, stream, 5), what="5 jobs by subject")

        done = await asyncio.to_thread(manage, nats_server.url, "republish", stream)
        assert done.returncode == 0, done.stderr
        assert f"republishing to flowscope.republish.{stream}.>" in done.stdout
        await eventually(lambda: _is_mode(database_url, stream, "republish"), what="republish")
        await eventually(lambda: _observing(tap, stream, "republish"), what="republish observer")
        for i in range(5, 15):
            await js.publish(subject, f"job {i}".encode())
        await eventually(lambda: _has(database_url, stream, 15), what="15 jobs")
        seqs = await _seqs(database_url, stream)
        stream_gaps = await gaps(database_url, stream)
        jobs = [m.data for m in await app.fetch(15, timeout=5)]

        off = await asyncio.to_thread(manage, nats_server.url, "republish", stream, "--off")
        assert off.returncode == 0 and "RePublish is off" in off.stdout
        await eventually(lambda: _is_mode(database_url, stream, "subject"), what="back")
    await nc.close()
    assert seqs == [None] * 5 + list(range(6, 16))  # subject mode has no sequences
    # 1-5 were recorded (by subject, without sequences) before RePublish: not a gap
    assert stream_gaps == []
    assert jobs == [f"job {i}".encode() for i in range(15)]  # the worker still got every job


async def test_republish_command_refuses_to_replace_someone_elses_republish(nats_server, unique):
    nc = await nats.connect(nats_server.url)
    stream = f"THEIRS_{unique}"
    config = {"name": stream, "subjects": [f"theirs.{unique}"], "storage": "file",
              "republish": {"src": ">", "dest": f"app.copy.{unique}.>"}}  # fmt: skip
    resp = await nc.request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode())
    assert "error" not in json.loads(resp.data)
    await nc.close()
    done = await asyncio.to_thread(manage, nats_server.url, "republish", stream)
    assert done.returncode == 1
    assert f"already republishes to 'app.copy.{unique}.>'" in done.stderr
    missing = await asyncio.to_thread(manage, nats_server.url, "republish", f"NOPE_{unique}")
    assert missing.returncode == 1 and "stream not found" in missing.stderr


def test_republish_config_targets_the_taps_subject():
    assert republish_config("ORDERS", "fs", True) == {
        "src": ">",
        "dest": "fs.republish.ORDERS.>",
        "headers_only": True,
    }


async def _observing(tap, stream: str, mode: str) -> bool:
    observer = tap.observers.get(stream)
    return observer is not None and observer.mode == mode and observer.ready.is_set()


async def _is_mode(database_url: str, stream: str, mode: str) -> bool:
    return await _mode(database_url, stream) == mode


async def _has(database_url: str, stream: str, n: int) -> bool:
    return len(await _seqs(database_url, stream)) >= n
