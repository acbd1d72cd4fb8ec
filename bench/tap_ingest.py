"""Tap ingest benchmark (issue #4): `make bench` or `.venv/bin/python bench/tap_ingest.py`.

In one run on this machine it measures, in rounds (3 by default), each on a fresh stream
pre-filled while no tap runs:

(a) the raw rate at which nats-py alone consumes the stream, with the kind of consumer the tap
    uses (ephemeral ack-none pull consumer, pull requests pipelined as the tap does), counting
    only: the ceiling for one Python process;
(b) then the sustained rate of the real tap (`python manage.py tap`, a subprocess) from an empty
    checkpoint into PostgreSQL: the events committed between the checkpoint (polled every 20 ms)
    first reaching 10% and 75% of the stream (or, if lower, the events delivered to the tap in
    that window), over the time in between, so that start-up, the filling of the tap's buffer and
    the final drain are outside the window. Also shown: from the first delivery to the tap's
    consumer to the last commit.

Each round's ratio compares (b) with the (a) measured just before it on the same stream: on a
small shared VM either rate swings by tens of percent from one minute to the next, so the
headline is the median of the rounds' ratios, printed with the lowest one and with the median
tap rate over the best nats-py run of all (one more runs after the tap). For reference also: an
ordered push consumer, and the tap's own observer code with a writer that only counts.

It also prints the publish-to-row latency (p50/p99/max, from a steady publisher while the tap
is caught up; "row" = the tap's digest for the committed batch was received, which is sent right
after the commit), the tap process' memory (VmRSS through the first ingest, VmHWM), and checks
that every stream's rows are stored exactly once.

Unless NATS_URL / DATABASE_URL are set it starts its own nats-server and PostgreSQL in a
temporary directory, migrates, and removes everything at exit (Ctrl-C included). It exits 0: it
is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
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

from eventbus import scan  # noqa: E402
from eventbus.embedded import EmbeddedNats, EmbeddedPostgres, terminate  # noqa: E402
from eventbus.observers import ObserverSettings, WireConsumerObserver, is_tap_consumer  # noqa: E402
from eventbus.records import Gap  # noqa: E402
from eventbus.registry import js_api  # noqa: E402
from eventbus.writer import Item, Writer  # noqa: E402

NS = 1_000_000_000
MIB = 1024 * 1024
SUBJECTS = 8  # the events are spread over this many subjects
TARGET_RATE = 50_000
TARGET_RATIO = 0.9


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
    cpu: float | None = None  # the consuming process' CPU time over `seconds` (1.0 = one core)

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Clock:
    """Wall and CPU time of this process between `start()` and `stop()`."""

    def __init__(self) -> None:
        self.t0 = self.t1 = self.c0 = self.c1 = 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.t1, self.c1 = time.perf_counter(), time.process_time()

    def rate(self, label: str, events: int) -> Rate:
        seconds = self.t1 - self.t0
        return Rate(label, events, seconds, (self.c1 - self.c0) / seconds if seconds else None)


class Tally:
    """Counts events towards `n`: the clock runs from the first to the n-th, then `done` is
    set. The rate is over the n - 1 events after the first."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.clock = Clock()
        self.done = asyncio.Event()

    def add(self, events: int = 1) -> None:
        if self.count == 0:
            self.clock.start()
        self.count += events
        if self.count >= self.n and not self.done.is_set():
            self.clock.stop()
            self.done.set()

    def rate(self, label: str) -> Rate:
        return self.clock.rate(label, self.n - 1)


@dataclass
class MemorySample:
    t: float
    checkpoint: int
    rss_kib: int
    hwm_kib: int


@dataclass
class TapRun:
    rate: Rate  # sustained: checkpoint 10% -> 75% of the stream
    whole: Rate  # first delivery to the tap -> last commit
    startup: float  # spawn -> first delivery to the tap's consumer
    first_commit: int  # the checkpoint at the first committed batch
    to_first_commit: float  # first delivery -> first committed batch
    samples: list[MemorySample] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> share of one core
    held: tuple[int, int] = (0, 0)  # delivered, not yet committed, at the 10% and 75% marks


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
    tally = Tally(n)
    done = tally.done

    async def on_msg(msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status"):
            if msg.headers["Status"] != "100" and requests:
                requests.popleft()
                wake.set()
            return
        tally.add()
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
    return tally.rate(
        f"nats-py pull, ack none, {settings.inflight}x{settings.batch} in flight, count only"
    )


async def raw_ordered(nc: Client, subject: str, n: int) -> Rate:
    """nats-py's ordered push consumer, callback counting only (reference)."""
    js = nc.jetstream()
    tally = Tally(n)

    async def on_msg(msg: Msg) -> None:
        tally.add()

    sub = await js.subscribe(
        subject, cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        pending_msgs_limit=0, pending_bytes_limit=0,
    )  # fmt: skip
    try:
        await asyncio.wait_for(tally.done.wait(), timeout=max(60, n / 5_000))
    finally:
        await sub.unsubscribe()
    return tally.rate("nats-py ordered push consumer, count only")


class CountingWriter(Writer):
    """A writer that only counts: the tap's observer without the database."""

    def __init__(self, n: int) -> None:
        super().__init__("postgresql://unused")
        self.tally = Tally(n)
        self.gaps = 0

    def offer(self, item: Item) -> bool:
        if isinstance(item, Gap):
            self.gaps += 1
        else:
            self.tally.add(item.count)
        return True

    async def put(self, item: Item) -> None:
        self.offer(item)

    def free(self) -> int:
        return self.buffer_size


async def observer_only(nc: Client, stream: str, n: int) -> Rate:
    """The tap's observer (its lean reader, parse, build records) into a writer that counts."""
    writer = CountingWriter(n)
    observer = WireConsumerObserver(
        nc, writer, stream, 1, 1, ObserverSettings(), tap_id=f"bench{uuid.uuid4().hex[:6]}"
    )
    observer.start()
    try:
        await asyncio.wait_for(writer.tally.done.wait(), timeout=max(60, n / 5_000))
    finally:
        await observer.stop()
    return writer.tally.rate("tap observer code, writer counting only (no database)")


async def delivered_to_tap(nc: Client, stream: str) -> int:
    """How far the tap's consumer on `stream` has delivered (0 while there is none)."""
    with contextlib.suppress(Exception):
        resp = await js_api(nc, f"$JS.API.CONSUMER.LIST.{stream}")
        for info in resp.get("consumers") or []:
            if is_tap_consumer(info.get("name", "")):
                return int(info.get("delivered", {}).get("stream_seq", 0))
    return 0


async def run_tap(
    environment: Environment, nc: Client, stream: str, n: int, interval: float, profile: bool
) -> tuple[TapRun, psycopg.AsyncConnection[Any]]:
    """Start the real tap on the pre-filled stream; time it until the checkpoint reaches n.

    The headline rate is the sustained one: events committed between the checkpoint first
    reaching 10% and 75% of the stream (or delivered to the tap, if fewer), over the time in
    between (the tap's start-up, its first connection to PostgreSQL and partition creation, the
    filling of its buffer and the final drain are all outside). Also measured: from the first
    delivery to the tap's consumer (polled every few ms) to the last commit.
    """
    db = await psycopg.AsyncConnection.connect(environment.database_url, autocommit=True)
    t_spawn = time.perf_counter()
    proc = environment.start_tap()
    profiler = environment.start_profiler(proc.pid) if profile else None
    watched = {"tap": [proc.pid], "bench": [os.getpid()]}
    if environment.nats and environment.nats.proc:
        watched["nats-server"] = [environment.nats.proc.pid]
    if environment.pg and environment.pg.proc:
        watched["postgres"] = [environment.pg.proc.pid]  # the postmaster and its backends

    def cpu_now() -> dict[str, float]:
        return {k: cpu_seconds(v, k == "postgres") for k, v in watched.items()}

    samples: list[MemorySample] = []
    t_delivered = t_commit = 0.0
    delivered0 = first_cp = 0
    marks: dict[int, tuple[float, int, dict[str, float]]] = {}  # 10, 75 -> (time, checkpoint, cpu)
    held: dict[int, int] = {}  # 10, 75 -> events delivered to the tap and not yet committed
    deadline = time.monotonic() + max(120, n / 5_000)
    next_sample = 0.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the tap exited with {proc.returncode}:\n{environment.tap_log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the tap did not catch up in time:\n{environment.tap_log()}")
        cp = 0
        if not t_delivered:
            delivered = await delivered_to_tap(nc, stream)
            if delivered:
                t_delivered, delivered0 = time.perf_counter(), delivered
        else:
            cur = await db.execute(
                "SELECT c.last_seq FROM flowscope_checkpoint c JOIN flowscope_stream s "
                "ON s.id = c.stream_id WHERE s.name = %s AND s.deleted_at IS NULL",
                (stream,),
            )
            row = await cur.fetchone()
            cp = int(row[0]) if row else 0
        now = time.perf_counter()
        if cp > 0 and not t_commit:
            t_commit, first_cp = now, cp
        for pct in (10, 75):
            if cp >= pct * n / 100 and pct not in marks:
                marks[pct] = (now, cp, cpu_now())
                held[pct] = await delivered_to_tap(nc, stream) - cp
        if now >= next_sample or cp >= n:
            rss, hwm = proc_memory(proc.pid)
            samples.append(MemorySample(now - t_spawn, cp, rss, hwm))
            next_sample = now + 0.25
        if cp >= n:
            break
        await asyncio.sleep(interval if t_delivered else 0.003)
    end = time.perf_counter()
    if profiler is not None:
        environment.stop_profiler()
    whole = Rate("tap, first delivery to the tap -> last commit", n - delivered0, end - t_delivered)
    (t0, cp0, cpu0), (t1, cp1, cpu1) = marks[10], marks[75]
    if t1 <= t0:  # too few batches for a window (a --quick run): fall back to the whole
        return TapRun(whole, whole, t_delivered - t_spawn, first_cp, t_commit - t_delivered), db
    cpu = {name: (cpu1[name] - cpu0[name]) / (t1 - t0) for name in cpu1}
    events = cp1 - cp0  # committed in the window: what reached PostgreSQL
    sustained = Rate(
        "tap -> PostgreSQL, sustained (checkpoint 10% -> 75%)", events, t1 - t0, cpu["tap"]
    )
    run = TapRun(
        rate=sustained,
        whole=whole,
        startup=t_delivered - t_spawn,
        first_commit=first_cp,
        to_first_commit=t_commit - t_delivered,
        samples=samples,
        cpu=cpu,
        held=(held[10], held[75]),
    )
    return run, db


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
    """One raw nats-py consumption of a fresh pre-filled stream, then the tap's ingest of it."""

    raw: Rate
    tap: TapRun

    @property
    def ratio(self) -> float:
        return self.tap.rate.per_second / self.raw.per_second if self.raw.per_second else 0.0


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


async def bench(args: argparse.Namespace, environment: Environment) -> None:
    n = args.events
    token = uuid.uuid4().hex[:8]
    streams = [f"BENCH_{token}_{r + 1}" for r in range(args.rounds)]
    prefix = os.environ.get("FLOWSCOPE_SUBJECT_PREFIX", "flowscope")
    nc = await nats.connect(environment.nats_url, name="flowscope-bench")
    db: psycopg.AsyncConnection[Any] | None = None
    settings = ObserverSettings()
    rounds: list[Round] = []
    try:
        for r, stream in enumerate(streams):
            subject_base = f"bench.{token}.{r + 1}"
            if r:  # the stream is filled with no tap running, as in the first round
                environment.stop_tap()
            await create_stream(nc, stream, subject_base)
            say(
                f"round {r + 1}/{args.rounds}: pre-filling {stream} with {n:,} events of "
                f"{args.size} B"
            )
            prefill, _ = await publish(nc, subject_base, n, args.size, args.headers)
            say(f"pre-filled at {prefill.per_second:,.0f}/s; raw nats-py pull consumer")
            raw = await raw_pull(nc, stream, n, settings)
            if not r:
                first_prefill = prefill
                references: list[Rate] = []
                if not args.quick:
                    say("ordered push consumer (reference)")
                    references.append(await raw_ordered(nc, f"{subject_base}.>", n))
                    say("tap observer without a database (diagnostic)")
                    references.append(await observer_only(nc, stream, n))
            say("the tap: python manage.py tap, from an empty checkpoint")
            tap, conn = await run_tap(
                environment, nc, stream, n, args.poll, bool(args.profile) and not r
            )
            if db is None:
                db = conn
            else:
                await conn.close()
            rounds.append(Round(raw, tap))
            say(
                f"tap caught up at {tap.rate.per_second:,.0f}/s "
                f"(nats-py alone: {raw.per_second:,.0f}/s)"
            )
        assert db is not None and environment.tap is not None
        say(f"latency at {args.latency_rate:,}/s for {args.latency_seconds:g} s")
        last_base = f"bench.{token}.{len(streams)}"
        lat = await latency(
            nc, streams[-1], last_base, args.latency_rate, args.latency_seconds, args.size,
            args.headers, prefix,
        )  # fmt: skip
        end_rss, end_hwm = proc_memory(environment.tap.pid)
        say("raw nats-py pull consumer again, after the tap")
        raw_after = await raw_pull(nc, streams[0], n, settings)
        raw_after.label += " (after the tap)"
        checks = []
        for k, stream in enumerate(streams):
            expected = n + (lat.events if k == len(streams) - 1 else 0)
            checks.append((stream, *await stored_rows(db, stream), expected))
        report(
            args, first_prefill, rounds, raw_after, references, lat, (end_rss, end_hwm), checks,
            await versions(nc, db),
        )  # fmt: skip
    finally:
        environment.stop_tap()
        if db is not None:
            if environment.external_db:  # leave no benchmark rows in someone's database
                with contextlib.suppress(Exception):
                    for stream in streams:
                        await db.execute(
                            "DELETE FROM flowscope_event WHERE stream_id IN "
                            "(SELECT id FROM flowscope_stream WHERE name = %s)",
                            (stream,),
                        )
                        await db.execute("DELETE FROM flowscope_stream WHERE name = %s", (stream,))
            await db.close()
        for stream in streams:
            with contextlib.suppress(Exception):
                await js_api(nc, f"$JS.API.STREAM.DELETE.{stream}")
        with contextlib.suppress(Exception):
            await nc.close()


def report(
    args: argparse.Namespace,
    prefill: Rate,
    rounds: list[Round],
    raw_after: Rate,
    references: list[Rate],
    lat: Latency,
    end_mem: tuple[int, int],
    checks: list[tuple[str, int, int, int, int, int]],
    versions: str,
) -> None:
    tap = rounds[0].tap  # memory and the details below are the first round's
    load = os.getloadavg()
    print()
    print(
        f"Flowscope tap ingest benchmark: {args.events:,} events of {args.size} B"
        f"{' with traceparent + service headers' if args.headers else ''}, one limits stream per "
        f"round, {len(rounds)} round(s)"
    )
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load {load[0]:.2f}/{load[1]:.2f}; {versions}"
    )
    print()
    print(f"{'':4}{'what':<68}{'events':>10}{'seconds':>9}{'events/s':>11}{'CPU':>6}")

    def line(tag: str, r: Rate) -> None:
        cpu = f"{r.cpu:.0%}" if r.cpu is not None else ""
        print(
            f"{tag:<4}{r.label:<68}{r.events:>10,}{r.seconds:>9.2f}{r.per_second:>11,.0f}{cpu:>6}"
        )

    line("", prefill)
    for k, rnd in enumerate(rounds):
        rnd.raw.label = f"round {k + 1}: " + rnd.raw.label.split(": ")[-1]
        rnd.tap.rate.label = f"round {k + 1}: " + rnd.tap.rate.label.split(": ")[-1]
        line("(a)", rnd.raw)
        line("(b)", rnd.tap.rate)
    line("(a)", raw_after)
    for r in references:
        line("", r)
    if tap.whole is not tap.rate:
        line("", tap.whole)
        print(
            f"{'':4}round 1: the tap held {tap.held[0]:,} / {tap.held[1]:,} events delivered but "
            "not yet committed at the 10% / 75% marks"
        )
    print(
        f"{'':4}tap start-up (spawn -> first delivery): {tap.startup:.2f} s; first delivery -> "
        f"first commit (checkpoint {tap.first_commit:,}): {tap.to_first_commit:.2f} s"
    )
    for k, rnd in enumerate(rounds):
        if rnd.tap.cpu:
            print(
                f"{'':4}CPU during (b), round {k + 1}: "
                + ", ".join(f"{name} {share:.0%}" for name, share in rnd.tap.cpu.items())
            )
    print(f"{'':4}(CPU: the consuming process' CPU time / wall time; 100% = one core)")
    print()
    ratios = sorted(rnd.ratio for rnd in rounds)
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(
        "ratio (b)/(a) per round (each tap run against the nats-py run just before it, on the "
        "same stream): " + ", ".join(f"{rnd.ratio:.2f}" for rnd in rounds)
    )
    best_raw = max([rnd.raw.per_second for rnd in rounds] + [raw_after.per_second])
    rate = statistics.median(rnd.tap.rate.per_second for rnd in rounds)
    print(
        f"ratio, median of the rounds = {ratio:.2f}   target >= {TARGET_RATIO}: {verdict}   "
        f"(lowest {ratios[0]:.2f}; median tap rate against the best nats-py run of all, "
        f"{best_raw:,.0f}/s: {rate / best_raw:.2f})"
    )
    verdict = "met" if rate >= TARGET_RATE else "NOT met"
    print(
        f"tap rate, median of the rounds {rate:,.0f} events/s{'':11}target >= {TARGET_RATE:,}: "
        f"{verdict}"
    )
    print(
        f"publish -> row latency, {lat.events:,} events at {lat.achieved:,.0f}/s for "
        f"{lat.seconds:g} s: p50 {lat.p50 * 1000:.0f} ms, p99 {lat.p99 * 1000:.0f} ms, "
        f"max {lat.max * 1000:.0f} ms (row = the tap's digest for its committed batch arrived)"
    )
    s = tap.samples
    n = args.events
    points = [rss_at(s, f * n) for f in (0.25, 0.5, 0.75, 1.0)]
    committed = next((x for x in s if x.checkpoint > 0), None)
    peak_ingest = max((x.hwm_kib for x in s), default=0)
    quarter = points[0].rss_kib if points[0] else 0
    full = points[-1].rss_kib if points[-1] else 0
    growth = full - quarter
    flat = growth <= max(5 * 1024, quarter * 0.05)
    print(
        "tap memory (VmRSS, MiB): "
        + (f"first commit {mib(committed.rss_kib)}, " if committed else "")
        + ", ".join(
            f"{label} {mib(p.rss_kib) if p else '?'}"
            for label, p in zip(("25%", "50%", "75%", "100%"), points, strict=True)
        )
        + f"; peak (VmHWM) during ingest {mib(peak_ingest)}, after latency run"
        f" RSS {mib(end_mem[0])} / VmHWM {mib(end_mem[1])}"
    )
    print(
        f"memory flat: {'yes' if flat else 'NO'} (RSS 25% -> 100% of the ingest: "
        f"{growth / 1024:+.1f} MiB)"
    )
    for stream, count, distinct, lo, hi, expected in checks:
        ok = count == distinct == expected and lo == 1 and hi == expected
        print(
            f"rows stored for {stream}: {count:,} (distinct seq {distinct:,}, {lo}..{hi}; "
            f"published {expected:,}): {'exactly once' if ok else 'MISMATCH'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events pre-filled (200,000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per event (200)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="raw + tap rounds, each on a fresh stream (3)"
    )
    parser.add_argument(
        "--headers", action="store_true", help="events carry traceparent and service headers"
    )
    parser.add_argument("--latency-rate", type=int, default=5_000, help="events/s (5,000)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--poll", type=float, default=0.02, help="checkpoint poll interval (s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60,000 events, 2 s")
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
        args.rounds = 1

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    environment = Environment(
        keep=args.keep, profile=os.path.abspath(args.profile) if args.profile else ""
    )
    try:
        say(
            "starting servers"
            if not (environment.external_nats and environment.external_db)
            else "migrating"
        )
        environment.start()
        asyncio.run(bench(args, environment))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        environment.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
