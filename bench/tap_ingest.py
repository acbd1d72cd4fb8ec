"""Tap ingest benchmark (issues #4, #11): `make bench` or `.venv/bin/python bench/tap_ingest.py`.

In one run on this machine, in rounds (5 by default), each on a fresh limits stream pre-filled
with `--events` events while no tap runs, it measures in this order:

(c) the tap's observer code (eventbus.observers.WireConsumerObserver: its lean reader, the scanner,
    the binary COPY rows) in this process, into a writer that only counts and keeps the rows;
(d) PostgreSQL alone: those very rows COPYed into flowscope_event (under a stream row of their
    own, marked deleted), in batches of the tap's writer (`Writer().batch_size` events, one
    transaction each, `Writer().lanes` connections at once, eventbus.writer.COPY_SQL): the
    ceiling the database sets, with no tap;
(a) nats-py alone consuming the stream with the tap's kind of consumer (ephemeral ack-none pull
    consumer, pull requests pipelined as the tap does), counting only;
(b) the real tap (`python manage.py tap`, a subprocess) from an empty checkpoint into PostgreSQL;
    then the tap is stopped and (a) runs once more. The round's baseline is the mean of the two
    (a) runs, which bracket (b), so that the machine's drift between them counts for neither side.

Every rate is timed over the same window of the same stream: from the first moment the
measurement sees its progress at or past 10% of the stream's events to the first moment it sees
it at or past 75%, events = progress at the second moment - progress at the first, over the
perf_counter time between the two moments. Progress is: (a) messages counted in the callback,
(c) events handed to the writer, (d) events in committed COPY transactions, (b) the tap's
checkpoint, read from the digest it publishes right after each commit (the time is when this
process receives it). So start-up, the first fill of buffers and the final drain are outside
every window alike; (b) and (d) move a batch at a time, (a) and (c) a message or a socket read.

Ratios: (b)/(a) per round, and the median of the rounds is the headline; (c)/(a); (b)/(d).
Then, with the tap started once more and caught up: publish-to-row latency (p50/p99/max, a
steady publisher; "row" = the tap's digest for the committed batch arrived), the tap's memory
(VmRSS through the first round's ingest, VmHWM), and whether every stream's rows are stored
exactly once.

Targets (issue #4): median (b)/(a) >= 0.9; median (b) >= 50,000 events/s for 200-byte events;
the tap's memory flat through the ingest; every stream's rows exactly once. Publish-to-row
latency has no stated target and is printed only. The run ends with a table of each figure, its
baseline, ratio, target and PASS/FAIL, and exits 1 if a target was missed (`--no-targets`: exit
0 all the same), 2 if the benchmark could not run.

Unless NATS_URL / DATABASE_URL are set it starts its own nats-server and PostgreSQL in a
temporary directory, migrates, and removes everything at exit (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import psycopg  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js.api import DeliverPolicy  # noqa: E402

from bench.verdict import exit_status  # noqa: E402
from eventbus import scan  # noqa: E402
from eventbus.embedded import EmbeddedNats, EmbeddedPostgres, terminate  # noqa: E402
from eventbus.observers import ObserverSettings, WireConsumerObserver, is_tap_consumer  # noqa: E402
from eventbus.partitions import Partitions  # noqa: E402
from eventbus.records import COPY_SIGNATURE, COPY_TRAILER, Chunk, Gap  # noqa: E402
from eventbus.registry import js_api  # noqa: E402
from eventbus.writer import COPY_SQL, Item, Writer  # noqa: E402

NS = 1_000_000_000
MIB = 1024 * 1024
SUBJECTS = 8  # the events are spread over this many subjects
WINDOW = (0.10, 0.75)  # every rate is timed from 10% to 75% of the stream's events
TARGET_RATIO = 0.9  # issue #4: median (b)/(a)
TARGET_RATE = 50_000  # issue #4: events/s of 200-byte events
TARGET_RATE_SIZE = 200


def say(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Servers and the tap process: started here, always stopped in `close()`.


class Environment:
    def __init__(self, keep: bool = False, profile: str = "") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="flowscope-bench-"))
        self.keep = keep
        self.profile = profile
        self.profiler: subprocess.Popen[bytes] | None = None
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.tap: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
        self.env.setdefault("FLOWSCOPE_LOG_LEVEL", "WARNING")
        self.external_nats = bool(self.env.get("NATS_URL"))
        self.external_db = bool(self.env.get("DATABASE_URL"))

    @property
    def nats_url(self) -> str:
        return self.env["NATS_URL"]

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    def start(self) -> None:
        if not self.external_nats:
            self.nats = EmbeddedNats(self.tmp / "nats").start()
            self.env["NATS_URL"] = self.nats.url
        if not self.external_db:
            self.pg = EmbeddedPostgres(self.tmp / "postgres").start()
            self.env["DATABASE_URL"] = self.pg.url()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT, env=self.env, check=True,
        )  # fmt: skip

    def start_tap(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / "tap.log", "ab")  # noqa: SIM115 - handed to the child
        self.tap = subprocess.Popen(
            [sys.executable, "manage.py", "tap"],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the tap ourselves
        )  # fmt: skip
        log.close()
        return self.tap

    def tap_log(self, lines: int = 30) -> str:
        path = self.tmp / "tap.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def start_profiler(self, pid: int) -> subprocess.Popen[bytes]:
        """py-spy attached to the tap: `--profile out.svg|out.txt|out.json` (flamegraph, collapsed
        stacks, speedscope). py-spy is not a dependency: `pip install py-spy` where you run this."""
        binary = os.environ.get("PY_SPY") or shutil.which("py-spy")
        if not binary:
            raise RuntimeError("--profile needs py-spy on PATH (or PY_SPY=/path/to/py-spy)")
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(self.profile).suffix, "raw")
        self.profiler = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", "250", "--format", fmt,
             "--output", self.profile, "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        time.sleep(0.3)  # attached before the tap gets going
        return self.profiler

    def stop_profiler(self) -> None:
        proc, self.profiler = self.profiler, None
        terminate(proc, signal.SIGINT, 30)  # py-spy writes its output on SIGINT

    def stop_tap(self) -> None:
        self.stop_profiler()
        proc, self.tap = self.tap, None
        terminate(proc, signal.SIGTERM, 20)

    def close(self) -> None:
        self.stop_tap()
        if self.pg is not None:
            self.pg.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.keep:
            say(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Rate:
    label: str
    events: int
    seconds: float
    cpu: float | None = None  # the working process' CPU time over `seconds` (1.0 = one core)
    shares: dict[str, float] = field(default_factory=dict)  # every watched process' share

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def own_cpu() -> dict[str, float]:
    return {"bench": time.process_time()}


class Window:
    """Progress through a stream of `n` events, timed by the rule every rate here follows.

    A mark is taken the first time progress is seen at or past 10% of `n`, another the first
    time it is seen at or past 75%: the time (perf_counter, when the progress was seen), the
    progress then, and the CPU seconds `cpu()` reports. The rate is the progress between the
    marks over the time between them. `done` is set once progress reaches `n`."""

    def __init__(self, n: int, cpu: Callable[[], dict[str, float]] = own_cpu) -> None:
        self.n = n
        self.thresholds = [math.ceil(f * n) for f in WINDOW] + [n]
        self.next = self.thresholds[0]
        self.progress = 0
        self.marks: list[tuple[float, int, dict[str, float]]] = []
        self.cpu = cpu
        self.done = asyncio.Event()

    def add(self, events: int = 1) -> None:
        """`events` more (this runs once per message: kept short)."""
        self.progress += events
        if self.progress >= self.next:
            self._mark()

    def seen(self, progress: int) -> None:
        """Progress is now `progress` (a checkpoint)."""
        if progress > self.progress:
            self.progress = progress
            if progress >= self.next:
                self._mark()

    def _mark(self) -> None:
        t = time.perf_counter()
        while len(self.marks) < 2 and self.progress >= self.thresholds[len(self.marks)]:
            self.marks.append((t, self.progress, self.cpu()))
        self.next = self.thresholds[len(self.marks)]
        if self.progress >= self.n:
            self.next = sys.maxsize
            self.done.set()

    def rate(self, label: str, main: str = "bench") -> Rate:
        if len(self.marks) < 2 or self.marks[1][0] <= self.marks[0][0]:
            raise RuntimeError(
                f"{label}: progress went past 10% and 75% of the stream in one step; "
                "run with more --events"
            )
        (t0, p0, c0), (t1, p1, c1) = self.marks
        shares = {k: (c1[k] - c0[k]) / (t1 - t0) for k in c1}
        return Rate(label, p1 - p0, t1 - t0, shares.get(main), shares)


@dataclass
class MemorySample:
    t: float
    checkpoint: int
    rss_kib: int
    hwm_kib: int


@dataclass
class TapRun:
    rate: Rate  # the window: checkpoint 10% -> 75% of the stream
    whole: Rate  # first delivery to the tap -> last commit
    startup: float  # spawn -> first delivery to the tap's consumer
    first_commit: int  # the checkpoint at the first committed batch
    to_first_commit: float  # first delivery -> first committed batch
    samples: list[MemorySample] = field(default_factory=list)


def proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, (0, 0) if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    """User + system CPU time of these processes (and their live children), in seconds."""
    wanted = set(pids)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(entry.name) in wanted or (children and int(fields[1]) in wanted):  # [1]: ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def payload_of(size: int) -> bytes:
    pattern = b'{"order":12345,"customer":"c-000042","items":[1,2,3],"note":"benchmark event"}'
    return (pattern * (size // len(pattern) + 1))[:size]


async def publish(
    nc: Client, subject_base: str, count: int, size: int, headers: bool
) -> tuple[Rate, dict[int, float]]:
    """Publish `count` events with pipelined acks. Returns the rate and seq -> publish time."""
    js = nc.jetstream(publish_async_max_pending=8_000)
    data = payload_of(size)
    sent_at: dict[int, float] = {}
    pending: list[asyncio.Future[Any]] = []
    t0 = time.perf_counter()
    for i in range(count):
        hdrs = _headers(i) if headers else None
        t = time.perf_counter()
        fut = await js.publish_async(f"{subject_base}.{i % SUBJECTS}", data, headers=hdrs)
        fut.add_done_callback(_remember(sent_at, t))
        pending.append(fut)
        if len(pending) >= 10_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return Rate(
        "pre-fill: nats-py publish_async (pipelined acks)", count, time.perf_counter() - t0
    ), (sent_at)


def _headers(i: int) -> dict[str, str]:
    return {
        "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        "Flowscope-Service": f"svc-{i % 4}",
    }


def _remember(sent_at: dict[int, float], t: float) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            sent_at[int(fut.result().seq)] = t

    return done


async def raw_pull(nc: Client, stream: str, n: int, settings: ObserverSettings) -> Rate:
    """nats-py alone, the tap's kind of consumer, counting only (the apples-to-apples ceiling)."""
    name = f"bench_raw_{uuid.uuid4().hex[:8]}"
    await js_api(
        nc,
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        {
            "stream_name": stream,
            "action": "create",
            "config": {
                "name": name, "ack_policy": "none", "deliver_policy": "all",
                "replay_policy": "instant", "inactive_threshold": 15 * NS, "mem_storage": True,
                "num_replicas": 1, "max_waiting": 16,
            },
        },
    )  # fmt: skip
    inbox = nc.new_inbox()
    requests: deque[int] = deque()  # messages still due per outstanding pull request
    wake = asyncio.Event()
    window = Window(n)
    done = window.done

    async def on_msg(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status"):
            if msg.headers["Status"] != "100" and requests:
                requests.popleft()
                wake.set()
            return
        window.add()
        if requests:
            requests[0] -= 1
            if requests[0] <= 0:
                requests.popleft()
                wake.set()

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    request = json.dumps(
        {"batch": settings.batch, "expires": int(settings.expires * NS),
         "max_bytes": settings.max_request_bytes}
    ).encode()  # fmt: skip
    try:
        while not done.is_set():
            while len(requests) < settings.inflight:
                requests.append(settings.batch)
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", request, inbox)
            wake.clear()
            waiter = asyncio.ensure_future(wake.wait())
            finished = asyncio.ensure_future(done.wait())
            await asyncio.wait([waiter, finished], return_when=asyncio.FIRST_COMPLETED, timeout=5)
            waiter.cancel()
            finished.cancel()
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js_api(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
    return window.rate(
        f"nats-py pull, ack none, {settings.inflight}x{settings.batch} in flight, count only"
    )


async def raw_ordered(nc: Client, subject: str, n: int) -> Rate:
    """nats-py's ordered push consumer, callback counting only (reference)."""
    js = nc.jetstream()
    window = Window(n)

    async def on_msg(msg: Msg) -> None:
        window.add()

    sub = await js.subscribe(
        subject, cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        pending_msgs_limit=0, pending_bytes_limit=0,
    )  # fmt: skip
    try:
        await asyncio.wait_for(window.done.wait(), timeout=max(60, n / 5_000))
    finally:
        await sub.unsubscribe()
    return window.rate("nats-py ordered push consumer, count only (reference)")


class CountingWriter(Writer):
    """A writer that only counts, and keeps the chunks (their COPY rows) for `copy_ceiling`:
    the tap's observer without the database."""

    def __init__(self, n: int) -> None:
        super().__init__("postgresql://unused")
        self.window = Window(n)
        self.chunks: list[Chunk] = []
        self.gaps = 0

    def offer(self, item: Item) -> bool:
        if isinstance(item, Gap):
            self.gaps += 1
        else:
            self.chunks.append(item)
            self.window.add(item.count)
        return True

    async def put(self, item: Item) -> None:
        self.offer(item)

    def free(self) -> int:
        return self.buffer_size


async def observer_only(
    nc: Client, stream: str, stream_id: int, n: int
) -> tuple[Rate, list[Chunk]]:
    """(c) The tap's observer (its lean reader, the scanner, the COPY rows) into a writer that
    counts; returns the rate and the chunks, which carry `stream_id`."""
    writer = CountingWriter(n)
    observer = WireConsumerObserver(
        nc, writer, stream, stream_id, 1, ObserverSettings(), tap_id=f"bench{uuid.uuid4().hex[:6]}"
    )
    observer.start()
    try:
        await asyncio.wait_for(writer.window.done.wait(), timeout=max(60, n / 5_000))
    finally:
        await observer.stop()
    if writer.gaps or sum(c.count for c in writer.chunks) != n:
        raise RuntimeError(
            f"the observer read {writer.window.progress:,} events, {writer.gaps} gaps"
        )
    return writer.window.rate(
        "tap observer code, writer counting only (no database)"
    ), writer.chunks


async def ceiling_stream(db: psycopg.AsyncConnection[Any], stream: str) -> int:
    """A stream row for `copy_ceiling`'s rows: marked deleted, so the tap and the pages skip it."""
    cur = await db.execute(
        "INSERT INTO flowscope_stream (name, created, retention, subjects, config, observed_by, "
        "observation_note, discovered_at, updated_at, deleted_at, messages, bytes, first_seq, "
        "last_seq, consumer_count) VALUES (%s, now(), 'limits', '[]', '{}', 'none', "
        "'bench/tap_ingest.py: PostgreSQL COPY ceiling', now(), now(), now(), 0, 0, 0, 0, 0) "
        "RETURNING id",
        (stream,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def copy_ceiling(environment: Environment, chunks: list[Chunk], n: int) -> Rate:
    """(d) PostgreSQL alone: the chunks' rows COPYed as the tap's writer sends them (batches of
    up to `batch_size` events of whole chunks, one transaction each, `lanes` at once), without
    the checkpoint updates, the digests or the tap."""
    defaults = Writer("postgresql://unused")
    batches: list[list[Chunk]] = []
    events = defaults.batch_size
    for chunk in chunks:
        if events >= defaults.batch_size:
            batches.append([])
            events = 0
        batches[-1].append(chunk)
        events += chunk.count
    pg = environment.pg.proc.pid if environment.pg and environment.pg.proc else None

    def cpu() -> dict[str, float]:
        return {"postgres": cpu_seconds([pg], children=True)} if pg else {}

    window = Window(n, cpu)
    conns = [
        await psycopg.AsyncConnection.connect(environment.database_url)
        for _ in range(defaults.lanes)
    ]
    try:
        days = set().union(*(c.days() for c in chunks))
        await Partitions().ensure(conns[0], days)
        await conns[0].commit()
        todo = iter(batches)  # shared: each lane takes the next batch

        async def lane(conn: psycopg.AsyncConnection[Any]) -> None:
            for batch in todo:
                async with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                    await copy.write(COPY_SIGNATURE)
                    for chunk in batch:
                        await copy.write(chunk.rows)
                    await copy.write(COPY_TRAILER)
                window.add(sum(c.count for c in batch))

        await asyncio.gather(*(lane(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    return window.rate(
        f"PostgreSQL alone: COPY of (c)'s rows, {defaults.lanes} x {defaults.batch_size:,}-event "
        "transactions",
        "postgres",
    )


async def tap_consumer(nc: Client, stream: str) -> dict[str, Any] | None:
    """The info of the tap's consumer on `stream`, None while there is none."""
    with contextlib.suppress(Exception):
        resp = await js_api(nc, f"$JS.API.CONSUMER.LIST.{stream}")
        for info in resp.get("consumers") or []:
            if is_tap_consumer(info.get("name", "")):
                return dict(info)
    return None


async def run_tap(
    environment: Environment, nc: Client, stream: str, n: int, prefix: str, profile: bool
) -> TapRun:
    """(b) Start the real tap on the pre-filled stream; time it until its checkpoint reaches n.

    The rate is over the window (`Window`), its progress the checkpoint in the digest the tap
    publishes right after each commit. Also measured: from the first delivery to the tap's
    consumer (polled every few ms) to the last commit."""
    proc_pids: dict[str, list[int]] = {}

    def cpu_now() -> dict[str, float]:
        return {k: cpu_seconds(v, k == "postgres") for k, v in proc_pids.items()}

    window = Window(n, cpu_now)
    commits: list[tuple[float, int]] = []

    async def on_digest(msg: Msg) -> None:
        t = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            last = json.loads(msg.data)["streams"].get(stream, {}).get("last_seq")
            if last:
                commits.append((t, int(last)))
                window.seen(int(last))

    sub = await nc.subscribe(f"{prefix}.digest.events", cb=on_digest)
    await nc.flush()
    t_spawn = time.perf_counter()
    proc = environment.start_tap()
    profiler = environment.start_profiler(proc.pid) if profile else None
    proc_pids.update(tap=[proc.pid], bench=[os.getpid()])
    if environment.nats and environment.nats.proc:
        proc_pids["nats-server"] = [environment.nats.proc.pid]
    if environment.pg and environment.pg.proc:
        proc_pids["postgres"] = [environment.pg.proc.pid]  # the postmaster and its backends
    samples: list[MemorySample] = []
    t_delivered = 0.0
    delivered0 = 0
    deadline = time.monotonic() + max(120, n / 5_000)
    next_sample = 0.0
    try:
        while not window.done.is_set():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the tap exited with {proc.returncode}:\n{environment.tap_log()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the tap did not catch up in time:\n{environment.tap_log()}")
            now = time.perf_counter()
            if not t_delivered:
                info = await tap_consumer(nc, stream)
                delivered = int(info.get("delivered", {}).get("stream_seq", 0)) if info else 0
                if delivered:
                    t_delivered, delivered0 = now, delivered
            if now >= next_sample:
                rss, hwm = proc_memory(proc.pid)
                samples.append(MemorySample(now - t_spawn, window.progress, rss, hwm))
                next_sample = now + 0.25
            await asyncio.sleep(0.003 if not t_delivered else 0.02)
    finally:
        await sub.unsubscribe()
    end = commits[-1][0]
    rss, hwm = proc_memory(proc.pid)
    samples.append(MemorySample(end - t_spawn, window.progress, rss, hwm))
    if profiler is not None:
        environment.stop_profiler()
    t_commit, first_cp = commits[0]
    return TapRun(
        rate=window.rate("tap -> PostgreSQL (the checkpoint in its digests)", "tap"),
        whole=Rate(
            "tap, first delivery to the tap -> last commit", n - delivered0, end - t_delivered
        ),
        startup=t_delivered - t_spawn,
        first_commit=first_cp,
        to_first_commit=t_commit - t_delivered,
        samples=samples,
    )


@dataclass
class Latency:
    rate: int
    seconds: float
    events: int
    p50: float
    p99: float
    max: float
    achieved: float


async def latency(
    nc: Client, stream: str, subject_base: str, rate: int, seconds: float, size: int,
    headers: bool, prefix: str,
) -> Latency:  # fmt: skip
    """Publish at a steady rate while the tap is caught up; seq -> time its batch was announced."""
    announced: list[tuple[float, int]] = []  # (receipt time, last committed seq)

    async def on_digest(msg: Msg) -> None:
        t = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            body = json.loads(msg.data)
            last = body["streams"].get(stream, {}).get("last_seq")
            if last:
                announced.append((t, int(last)))

    sub = await nc.subscribe(f"{prefix}.digest.events", cb=on_digest)
    await nc.flush()
    js = nc.jetstream(publish_async_max_pending=8_000)
    data = payload_of(size)
    sent_at: dict[int, float] = {}
    futures: list[asyncio.Future[Any]] = []
    total = int(rate * seconds)
    t0 = time.perf_counter()
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            t = time.perf_counter()
            fut = await js.publish_async(
                f"{subject_base}.{i % SUBJECTS}", data, headers=_headers(i) if headers else None
            )
            fut.add_done_callback(_remember(sent_at, t))
            futures.append(fut)
            i += 1
        await asyncio.sleep(0.002)
    achieved = total / (time.perf_counter() - t0)
    await asyncio.gather(*futures)
    last_seq = max(sent_at)
    deadline = time.monotonic() + 30
    while not announced or announced[-1][1] < last_seq:
        if time.monotonic() > deadline:
            raise TimeoutError("the tap did not announce the latency events in 30 s")
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    lat: list[float] = []
    done_upto = min(sent_at) - 1
    for t, upto in sorted(announced, key=lambda a: a[1]):
        for seq in range(done_upto + 1, upto + 1):
            if seq in sent_at:
                lat.append(t - sent_at[seq])
        done_upto = max(done_upto, upto)
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

    return Latency(rate, seconds, len(lat), pct(0.50), pct(0.99), lat[-1] if lat else 0, achieved)


# --------------------------------------------------------------------------------------------
# The run


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def rss_at(samples: list[MemorySample], checkpoint: float) -> MemorySample | None:
    return next((s for s in samples if s.checkpoint >= checkpoint), None)


async def versions(nc: Client, db: psycopg.AsyncConnection[Any]) -> str:
    cur = await db.execute("SHOW server_version")
    row = await cur.fetchone()
    pg = str(row[0]).split()[0] if row else "?"
    from importlib.metadata import version

    v = nc.connected_server_version
    return (
        f"nats-server {v.major}.{v.minor}.{v.patch}, PostgreSQL {pg}, "
        f"nats-py {version('nats-py')}, psycopg {psycopg.__version__}; "
        f"the tap's scanner: {scan.IMPLEMENTATION} (eventbus/scan.py)"
    )


@dataclass
class Round:
    """One fresh pre-filled stream: (c), (d), then (a) before and after (b)."""

    observer: Rate  # (c)
    ceiling: Rate  # (d)
    before: Rate  # (a), just before the tap
    tap: TapRun  # (b)
    after: Rate  # (a), just after the tap

    @property
    def baseline(self) -> float:
        """nats-py alone: the mean of the two runs around the tap's."""
        return (self.before.per_second + self.after.per_second) / 2

    @property
    def ratio(self) -> float:
        return self.tap.rate.per_second / self.baseline

    @property
    def observer_ratio(self) -> float:
        return self.observer.per_second / self.baseline

    @property
    def ceiling_ratio(self) -> float:
        return self.tap.rate.per_second / self.ceiling.per_second


@dataclass
class Check:
    """A line of the final table; `passed` is None where no target is stated."""

    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    passed: bool | None


async def create_stream(nc: Client, stream: str, subject_base: str) -> None:
    await js_api(
        nc, f"$JS.API.STREAM.CREATE.{stream}",
        {"name": stream, "subjects": [f"{subject_base}.>"], "retention": "limits",
         "storage": "file", "num_replicas": 1},
    )  # fmt: skip


async def stored_rows(db: psycopg.AsyncConnection[Any], stream: str) -> tuple[int, int, int, int]:
    cur = await db.execute(
        "SELECT count(*), count(DISTINCT e.seq), min(e.seq), max(e.seq) FROM flowscope_event e "
        "JOIN flowscope_stream s ON s.id = e.stream_id WHERE s.name = %s",
        (stream,),
    )
    row = await cur.fetchone()
    assert row is not None
    count, distinct, lo, hi = (int(v or 0) for v in row)
    return count, distinct, lo, hi


async def wait_observed(environment: Environment, nc: Client, stream: str) -> None:
    """Until the (re)started tap has its consumer on `stream`."""
    deadline = time.monotonic() + 60
    while await tap_consumer(nc, stream) is None:
        tap = environment.tap
        if tap is None or tap.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the tap did not observe {stream}:\n{environment.tap_log()}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # its first pull requests are out


async def bench(args: argparse.Namespace, environment: Environment) -> list[Check]:
    n = args.events
    token = uuid.uuid4().hex[:8]
    streams = [f"BENCH_{token}_{r + 1}" for r in range(args.rounds)]
    ceilings = [f"{stream}_COPY" for stream in streams]
    prefix = os.environ.get("FLOWSCOPE_SUBJECT_PREFIX", "flowscope")
    nc = await nats.connect(environment.nats_url, name="flowscope-bench")
    db = await psycopg.AsyncConnection.connect(environment.database_url, autocommit=True)
    settings = ObserverSettings()
    rounds: list[Round] = []
    references: list[Rate] = []
    try:
        for r, stream in enumerate(streams):
            subject_base = f"bench.{token}.{r + 1}"
            await create_stream(nc, stream, subject_base)
            say(
                f"round {r + 1}/{args.rounds}: pre-filling {stream} with {n:,} events of "
                f"{args.size} B"
            )
            prefill, _ = await publish(nc, subject_base, n, args.size, args.headers)
            if not r:
                first_prefill = prefill
                if not args.quick:
                    say("ordered push consumer (reference)")
                    references.append(await raw_ordered(nc, f"{subject_base}.>", n))
            say("(c) the tap's observer into a counting writer")
            stream_id = await ceiling_stream(db, ceilings[r])
            observer, chunks = await observer_only(nc, stream, stream_id, n)
            say("(d) PostgreSQL alone: COPY of the observer's rows")
            ceiling = await copy_ceiling(environment, chunks, n)
            del chunks
            say("(a) nats-py alone")
            before = await raw_pull(nc, stream, n, settings)
            say("(b) the tap: python manage.py tap, from an empty checkpoint")
            tap = await run_tap(environment, nc, stream, n, prefix, bool(args.profile) and not r)
            environment.stop_tap()
            say("(a) nats-py alone, again")
            after = await raw_pull(nc, stream, n, settings)
            rnd = Round(observer, ceiling, before, tap, after)
            rounds.append(rnd)
            say(
                f"(b) tap {tap.rate.per_second:,.0f}/s, (a) nats-py alone {rnd.baseline:,.0f}/s: "
                f"{rnd.ratio:.2f}"
            )
        say(f"the tap once more; latency at {args.latency_rate:,}/s for {args.latency_seconds:g} s")
        environment.start_tap()
        await wait_observed(environment, nc, streams[-1])
        lat = await latency(
            nc, streams[-1], f"bench.{token}.{len(streams)}", args.latency_rate,
            args.latency_seconds, args.size, args.headers, prefix,
        )  # fmt: skip
        assert environment.tap is not None
        end_mem = proc_memory(environment.tap.pid)
        environment.stop_tap()
        stored = []
        for k, stream in enumerate(streams):
            expected = n + (lat.events if k == len(streams) - 1 else 0)
            stored.append((stream, *await stored_rows(db, stream), expected))
        for name in ceilings:
            stored.append((name, *await stored_rows(db, name), n))
        return report(
            args, first_prefill, rounds, references, lat, end_mem, stored, await versions(nc, db)
        )
    finally:
        environment.stop_tap()
        if environment.external_db:  # leave no benchmark rows in someone's database
            with contextlib.suppress(Exception):
                for name in streams + ceilings:
                    await db.execute(
                        "DELETE FROM flowscope_event WHERE stream_id IN "
                        "(SELECT id FROM flowscope_stream WHERE name = %s)",
                        (name,),
                    )
                    await db.execute("DELETE FROM flowscope_stream WHERE name = %s", (name,))
        await db.close()
        for stream in streams:
            with contextlib.suppress(Exception):
                await js_api(nc, f"$JS.API.STREAM.DELETE.{stream}")
        with contextlib.suppress(Exception):
            await nc.close()


def per_s(rate: float) -> str:
    return f"{rate:,.0f}/s"


def columns(cells: Sequence[str], widths: Sequence[int]) -> str:
    """The first cell left-aligned, the others right-aligned."""
    return " ".join(
        f"{c:>{w}}" if i else f"{c:<{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def shares(rate: Rate) -> str:
    return ", ".join(f"{name} {share:.0%}" for name, share in rate.shares.items())


def report(
    args: argparse.Namespace,
    prefill: Rate,
    rounds: list[Round],
    references: list[Rate],
    lat: Latency,
    end_mem: tuple[int, int],
    stored: list[tuple[str, int, int, int, int, int]],
    versions: str,
) -> list[Check]:
    n = args.events
    lo, hi = (f"{f:.0%}" for f in WINDOW)
    load = os.getloadavg()
    print()
    print(
        f"Flowscope tap ingest benchmark: {n:,} events of {args.size} B"
        f"{' with traceparent + service headers' if args.headers else ''}, one limits stream per "
        f"round, {len(rounds)} round(s); every rate is over the window {lo} -> {hi} of the "
        f"stream ({math.ceil(WINDOW[0] * n):,} -> {math.ceil(WINDOW[1] * n):,} events)"
    )
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load {load[0]:.2f}/{load[1]:.2f}; {versions}"
    )
    print(
        f"pre-fill of round 1 (nats-py publish_async, pipelined acks): {per_s(prefill.per_second)}"
    )
    for ref in references:
        print(f"{ref.label}, round 1: {per_s(ref.per_second)}")
    print()
    head = ("events/s", "(a) before", "(b) tap", "(a) after", "(a) mean", "(b)/(a)",
            "(c) observer", "(c)/(a)", "(d) COPY", "(b)/(d)")  # fmt: skip
    widths = (9, 11, 9, 10, 9, 8, 13, 8, 9, 8)
    print(columns(head, widths))
    pull = ObserverSettings()
    for k, rnd in enumerate(rounds):
        numbers = (rnd.before.per_second, rnd.tap.rate.per_second, rnd.after.per_second,
                   rnd.baseline, rnd.ratio, rnd.observer.per_second, rnd.observer_ratio,
                   rnd.ceiling.per_second, rnd.ceiling_ratio)  # fmt: skip
        cells = [f"{x:.2f}" if x < 100 else f"{x:,.0f}" for x in numbers]
        print(columns([f"round {k + 1}", *cells], widths))
    print(
        f"(a) nats-py alone: ephemeral ack-none pull consumer, {pull.inflight} x "
        f"{pull.batch:,}-message pull requests in flight, counting only; before and after (b), "
        "(a) mean = their mean.\n"
        "(b) the tap process into PostgreSQL, progress = the checkpoint in its digests. "
        "(c) the tap's observer code here, writer counting only.\n"
        "(d) PostgreSQL alone: COPY of (c)'s rows into flowscope_event as the tap's writer "
        "batches them, no tap."
    )
    print("CPU in the window (CPU time / wall time; 100% = one core):")
    for k, rnd in enumerate(rounds):
        a = f"{rnd.before.cpu or 0:.0%} / {rnd.after.cpu or 0:.0%}"
        print(
            f"  round {k + 1}: (b) {shares(rnd.tap.rate)}; (d) {shares(rnd.ceiling) or '?'}; "
            f"(a) {a}; (c) {rnd.observer.cpu or 0:.0%}"
        )
    tap = rounds[0].tap
    print(
        f"round 1: tap start-up (spawn -> first delivery) {tap.startup:.2f} s; first delivery -> "
        f"first commit (checkpoint {tap.first_commit:,}) {tap.to_first_commit:.2f} s; "
        f"first delivery -> last commit {per_s(tap.whole.per_second)}"
    )
    s = tap.samples
    points = [rss_at(s, f * n) for f in (0.25, 0.5, 0.75, 1.0)]
    quarter = points[0].rss_kib if points[0] else 0
    growth = (points[-1].rss_kib if points[-1] else 0) - quarter
    allowed = max(5 * 1024, quarter // 20)
    print(
        "round 1: tap memory (VmRSS, MiB): "
        + ", ".join(
            f"{label} {mib(p.rss_kib) if p else '?'}"
            for label, p in zip(("25%", "50%", "75%", "100%"), points, strict=True)
        )
        + f"; peak (VmHWM) {mib(max((x.hwm_kib for x in s), default=0))}; after the latency run "
        f"RSS {mib(end_mem[0])}, VmHWM {mib(end_mem[1])}"
    )
    print(
        f"publish -> row latency: {lat.events:,} events at {lat.achieved:,.0f}/s for "
        f"{lat.seconds:g} s (row = the tap's digest for its committed batch arrived)"
    )
    once = 0
    for stream, count, distinct, first, last, expected in stored:
        ok = count == distinct == expected and first == 1 and last == expected
        once += ok
        if not ok:
            print(
                f"rows stored for {stream}: {count:,} (distinct seq {distinct:,}, {first}..{last}; "
                f"expected {expected:,}): MISMATCH"
            )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    tap_rate = median([r.tap.rate.per_second for r in rounds])
    base = median([r.baseline for r in rounds])
    ratio = median([r.ratio for r in rounds])
    rate_applies = args.size == TARGET_RATE_SIZE
    checks = [
        Check("(b)/(a) tap vs nats-py alone", per_s(tap_rate), f"(a) {per_s(base)}",
              f"{ratio:.2f}", f">= {TARGET_RATIO}", ratio >= TARGET_RATIO),
        Check("(b) tap -> PostgreSQL", per_s(tap_rate), "", "",
              f">= {TARGET_RATE:,}/s" if rate_applies else f"n/a: {TARGET_RATE_SIZE} B only",
              tap_rate >= TARGET_RATE if rate_applies else None),
        Check("(c)/(a) observer, counting writer",
              per_s(median([r.observer.per_second for r in rounds])), f"(a) {per_s(base)}",
              f"{median([r.observer_ratio for r in rounds]):.2f}", "none stated", None),
        Check("(b)/(d) tap vs PostgreSQL alone (COPY)", per_s(tap_rate),
              f"(d) {per_s(median([r.ceiling.per_second for r in rounds]))}",
              f"{median([r.ceiling_ratio for r in rounds]):.2f}", "none stated", None),
        Check("publish -> row latency p50/p99/max",
              f"{lat.p50 * 1000:.0f} / {lat.p99 * 1000:.0f} / {lat.max * 1000:.0f} ms", "", "",
              "none stated", None),
        Check("tap memory: VmRSS 25% -> 100% of round 1", f"{growth / 1024:+.1f} MiB",
              f"{mib(quarter)} MiB at 25%", "", f"flat: <= +{allowed / 1024:.1f} MiB",
              growth <= allowed),
        Check("rows stored exactly once", f"{once} of {len(stored)} streams", "", "",
              "every stream", once == len(stored)),
    ]  # fmt: skip
    print()
    head = ("figure", "value", "baseline", "ratio", "target", "result")
    widths = (40, 16, 16, 6, 20, 6)
    rule = " ".join("-" * w for w in widths)
    print(" ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)))
    print(rule)
    for c in checks:
        result = "-" if c.passed is None else "PASS" if c.passed else "FAIL"
        cells = (c.figure, c.value, c.baseline, c.ratio, c.target, result)
        print(" ".join(f"{x:<{w}}" for x, w in zip(cells, widths, strict=True)).rstrip())
    print(
        f"(a) to (d): value and baseline are the medians of {len(rounds)} round(s), ratio the "
        "median of the rounds' own ratios (each against its own round's baseline)."
    )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events per stream (200,000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per event (200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each on a fresh stream (5)")
    parser.add_argument(
        "--headers", action="store_true", help="events carry traceparent and service headers"
    )
    parser.add_argument("--latency-rate", type=int, default=5_000, help="events/s (5,000)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="seconds (10)")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 60,000 events, latency for 2 s"
    )
    parser.add_argument(
        "--no-targets", action="store_true", help="exit 0 even when a target is missed"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        default="",
        metavar="FILE",
        help="py-spy the tap during the ingest into FILE (.svg flamegraph, .json speedscope, "
        "else collapsed stacks); needs py-spy",
    )
    args = parser.parse_args()
    if args.quick:
        args.events = min(args.events, 60_000)
        args.latency_seconds = min(args.latency_seconds, 2.0)
        args.rounds = min(args.rounds, 2)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    environment = Environment(
        keep=args.keep, profile=os.path.abspath(args.profile) if args.profile else ""
    )
    checks: list[Check] = []
    try:
        say(
            "starting servers"
            if not (environment.external_nats and environment.external_db)
            else "migrating"
        )
        environment.start()
        checks = asyncio.run(bench(args, environment))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:  # exit 2, never 1 (a missed target), whatever went wrong
        expected = (RuntimeError, TimeoutError, OSError, psycopg.Error, subprocess.SubprocessError)
        if not isinstance(exc, expected):
            traceback.print_exc()
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        environment.close()
    missed = [c.figure for c in checks if c.passed is False]
    return exit_status(missed, args.no_targets)


if __name__ == "__main__":
    sys.exit(main())
