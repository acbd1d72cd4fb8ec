"""Live transport benchmark (issue #12): `make bench` or `.venv/bin/python bench/live.py`.

It starts its own nats-server and PostgreSQL (temporary directory, migrated), the tap
(`python manage.py tap`) and one web process (Daphne serving dashboard.asgi, DJANGO_DEBUG=0), logs
in once over HTTP, and measures two things in one run:

1. Publish -> browser latency. Twenty pages of the overview open in one real chromium (Playwright,
   one context each, logged in with that session's cookie). A publisher sends 1,000 events/s into
   one fresh limits stream for `--latency-seconds` (30; the first 3 s are warm-up, not counted).
   Every page records, in the page, Date.now() and the stream's "recorded" counter
   (`#streams tr[data-stream] td[data-field=recorded]`) after each push is swapped in
   (`htmx:wsAfterMessage`, which htmx-ext-ws fires right after the out-of-band swaps); the
   publisher starts 5 s after the last page went live. The latency of event `seq` on a page = the
   first time that page showed a counter >= seq, minus the time (time.time(), the same clock as
   Date.now() on this machine) the bench published it; over every (page, event) pair. Baseline in
   the same run: publish -> the tap's digest (this process' own subscriber on
   `<prefix>.digest.events`, the first digest whose last_seq >= seq), and publish -> one script's
   websocket on the same topic beside the pages (as in 2.), so the tap's, the web process' and
   the browser's shares can be told apart; and the digest rate (digests/s).

2. A web process under 200 sockets. The browser is closed; 200 websockets (autobahn's asyncio
   client, the session cookie and an allowed Origin) watch the overview while the publisher sends
   5,000 events/s for `--soak-seconds` (600; 120 with --quick). Sampled every second from /proc:
   Daphne's CPU (utime + stime over wall time, 100% = one core) and VmRSS. Per socket: messages
   received per second (the coalescing caps it at one per FLOWSCOPE_LIVE_INTERVAL, 5 by default,
   whatever the event rate), against the digest rate, and publish -> socket latency (the counter
   parsed from each message).

Targets (issue #12): page p95 < 250 ms; updates per client per second <= 1 /
FLOWSCOPE_LIVE_INTERVAL (5) on every socket; the web process' memory flat: VmRSS grows by at
most 10 MiB from 25% to 100% of the soak. Validity
checks that also fail the run: the publisher held >= 95% of the asked rate, every page and
socket saw the last event, no socket closed. CPU has no stated target and is printed only.
The run ends with a table (figure, value, baseline, ratio, target, PASS/FAIL) and exits 1 when
a target was missed (`--no-targets`: 0 all the same), 2 when it could not run, 130 on Ctrl-C;
everything it started is stopped and its temporary directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import txaio  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from bench.markup import recorded_pattern  # noqa: E402
from bench.verdict import exit_status  # noqa: E402
from dashboard.live import DEFAULT_INTERVAL  # noqa: E402
from eventbus.embedded import (  # noqa: E402
    EmbeddedNats,
    EmbeddedPostgres,
    free_port,
    terminate,
    wait_for_port,
)

txaio.use_asyncio()
txaio.set_global_log_level("error")  # not autobahn's notes on each socket's closing handshake
from autobahn.asyncio.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
)

MIB = 1024
PAGES = 20
PAGE_RATE = 1_000  # events/s while the pages are open
SOCKETS = 200
SOAK_RATE = 5_000  # events/s while the 200 sockets are open
WARMUP = 3.0  # seconds of each publisher run that are not counted
SETTLE = 5.0  # seconds between the last page going live and the publisher starting
TARGET_P95 = 0.250  # seconds: publish -> page, p95
# messages per socket per second: the coalescing's cap, one per FLOWSCOPE_LIVE_INTERVAL
INTERVAL = float(os.environ.get("FLOWSCOPE_LIVE_INTERVAL", DEFAULT_INTERVAL))
TARGET_UPDATES = 1 / INTERVAL
TARGET_FLAT_KIB = 10 * MIB  # VmRSS growth from 25% to 100% of the soak
HELD = 0.95  # the publisher must hold this share of the asked rate
USER = "bench"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Servers, the tap and the web process: started here, always stopped in `close()`.


class Environment:
    def __init__(self, keep: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="flowscope-live-"))
        self.keep = keep
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.password = secrets.token_urlsafe(16)
        self.web_url = ""
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DJANGO_DEBUG": "0",  # as deployed (docker-compose.yml)
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
            "STATIC_ROOT": str(self.tmp / "static"),
            "FLOWSCOPE_LOG_LEVEL": "WARNING",
        }
        self.env.pop("NATS_URL", None)
        self.env.pop("DATABASE_URL", None)

    @property
    def nats_url(self) -> str:
        return self.env["NATS_URL"]

    def start(self) -> None:
        (self.tmp / "static").mkdir()
        self.nats = EmbeddedNats(self.tmp / "nats").start()
        self.env["NATS_URL"] = self.nats.url
        self.pg = EmbeddedPostgres(self.tmp / "postgres").start()
        self.env["DATABASE_URL"] = self.pg.url()
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env,
                       check=True)  # fmt: skip
        subprocess.run(
            [*manage, "createsuperuser", "--noinput", "--username", USER, "--email", ""],
            cwd=ROOT, env={**self.env, "DJANGO_SUPERUSER_PASSWORD": self.password}, check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.spawn("tap", [*manage, "tap"])
        port = free_port()
        web = self.spawn("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                 str(port), "dashboard.asgi:application"])  # fmt: skip
        wait_for_port("127.0.0.1", port, 30, web)
        self.web_url = f"http://127.0.0.1:{port}"

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them ourselves
            )  # fmt: skip
        return self.procs[name]

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)}")

    def log(self, name: str, lines: int = 30) -> str:
        path = self.tmp / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            terminate(proc, signal.SIGTERM, 20)
        if self.pg is not None:
            self.pg.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.keep:
            say(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def log_in(base: str, password: str) -> str:
    """The session cookie's value after logging in through the login form (GET for the CSRF
    cookie, then POST). Cookies are read by hand: with DEBUG off they are `Secure`, which an
    http.cookiejar would not send back over http."""
    parts = urlparse(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", "/login/")
        response = conn.getresponse()
        response.read()
        cookies: SimpleCookie = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookies.load(header)
        csrf = cookies["csrftoken"].value
        body = urlencode({"username": USER, "password": password, "csrfmiddlewaretoken": csrf})
        conn.request("POST", "/login/", body, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}",
            "Origin": base, "Referer": f"{base}/login/",
        })  # fmt: skip
        response = conn.getresponse()
        response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookies.load(header)
        if response.status != 302 or "sessionid" not in cookies:
            raise RuntimeError(f"logging in failed: HTTP {response.status}")
        return cookies["sessionid"].value
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# /proc


def proc_ticks(pids: Iterable[int]) -> int:
    """utime + stime of these processes, in clock ticks (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        total += int(fields[11]) + int(fields[12])
    return total


def descendants(root: int) -> set[int]:
    """Every live process under `root` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def vm_rss(pid: int) -> int:
    """VmRSS in KiB (0 if the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU of named groups of processes between `start()` and `stop()`, as a share of one core;
    the machine's busy share of all its cores alongside (other jobs included)."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the pids (called at both ends)
        self.shares: dict[str, float] = {}

    def _read(self) -> tuple[float, dict[str, int], tuple[int, int]]:
        return (
            time.monotonic(),
            {name: proc_ticks(pids()) for name, pids in self.groups.items()},
            machine_busy(),
        )

    def start(self) -> None:
        self.begin = self._read()

    def stop(self) -> None:
        t1, ticks1, (busy1, all1) = self._read()
        t0, ticks0, (busy0, all0) = self.begin
        wall = max(t1 - t0, 1e-9)
        self.shares = {n: (ticks1[n] - ticks0[n]) / CLOCK_TICKS / wall for n in ticks1}
        self.shares["machine"] = (busy1 - busy0) / max(all1 - all0, 1) * (os.cpu_count() or 1)

    def text(self) -> str:
        parts = [f"{n} {s:.0%}" for n, s in self.shares.items() if n != "machine"]
        return ", ".join(parts) + f"; the whole machine {self.shares.get('machine', 0):.0%}"


# --------------------------------------------------------------------------------------------
# NATS: a steady publisher and a digest watcher


async def create_stream(nc: Client, name: str, subject: str) -> None:
    js = nc.jetstream()
    # the tap reads as they come; the limit only keeps the bench's store small on a long soak
    await js.add_stream(name=name, subjects=[subject], max_msgs=200_000)


@dataclass
class Published:
    sent: array[float]  # seq -> publish time (time.time()), 0 = not ours
    first_seq: int = 0
    last_seq: int = 0
    asked: float = 0.0
    achieved: float = 0.0
    start: float = 0.0  # time.time() at the first publish
    counted_from: int = 0  # the first seq after the warm-up

    def counted(self, most: int) -> range:
        """The events whose latency is measured: after the warm-up, evenly spaced, at most
        `most` of them (every one at 1,000/s; every n-th in a long soak, to bound the work)."""
        span = self.last_seq + 1 - self.counted_from
        return range(self.counted_from, self.last_seq + 1, max(1, -(-span // most)))


async def publish_steady(
    nc: Client, subject: str, rate: int, seconds: float, first_seq: int
) -> Published:
    """`rate` events/s for `seconds`, paced by the clock (a late loop catches up in a burst),
    with pipelined acks; the stream's sequences are first_seq, first_seq + 1, ..."""
    total = int(rate * seconds)
    out = Published(array("d", bytes(8 * (first_seq + total + 1))), asked=rate)
    js = nc.jetstream(publish_async_max_pending=20_000)
    payload = b'{"order":12345,"customer":"c-000042","items":[1,2,3],"note":"live bench"}'
    sent = out.sent

    def remember(t: float) -> Any:
        def done(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                sent[int(fut.result().seq)] = t

        return done

    out.start = time.time()
    t0 = time.monotonic()
    i = 0
    while i < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while i < due:
            fut = await js.publish_async(subject, payload)
            fut.add_done_callback(remember(time.time()))
            i += 1
        await asyncio.sleep(0.005)
    out.achieved = total / (time.monotonic() - t0)
    await js.publish_async_completed()
    ours = [s for s in range(first_seq, first_seq + total) if sent[s]]
    if len(ours) != total:
        raise RuntimeError(f"{total - len(ours)} of {total} publishes were not acknowledged")
    out.first_seq, out.last_seq = first_seq, first_seq + total - 1
    warm = out.start + WARMUP
    out.counted_from = next((s for s in ours if sent[s] >= warm), out.last_seq)
    return out


class DigestWatch:
    """This process' own subscriber to the tap's digests: when each one arrived, and the
    stream's last committed sequence in it."""

    def __init__(self, prefix: str, stream: str) -> None:
        self.prefix = prefix
        self.stream = stream
        self.events: list[float] = []  # arrival of every events digest (any stream)
        self.seen: list[tuple[float, int]] = []  # (arrival, last_seq) of our stream

    async def start(self, nc: Client) -> None:
        async def on_digest(msg: Msg) -> None:
            t = time.time()
            self.events.append(t)
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                last = json.loads(msg.data)["streams"].get(self.stream, {}).get("last_seq")
                if last:
                    self.seen.append((t, int(last)))

        self.sub = await nc.subscribe(f"{self.prefix}.digest.events", cb=on_digest)
        await nc.flush()

    def rate(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.events if t0 <= t < t1) / (t1 - t0) if t1 > t0 else 0.0

    def last(self) -> int:
        return self.seen[-1][1] if self.seen else 0


async def wait_for(check: Any, timeout: float, what: str, env: Environment) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        env.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def first_shown(
    shown: Sequence[tuple[float, int]], sent: array[float], seqs: range
) -> tuple[list[float], int]:
    """(latencies, missed) of the events `seqs` on one observer that showed the counter values
    `shown` (time, value): an event's latency is the first time a value >= its seq was shown,
    minus its publish time; `missed` counts events never shown."""
    frontier: list[tuple[float, int]] = []
    for t, value in sorted(shown):
        if not frontier or value > frontier[-1][1]:
            frontier.append((t, value))
    out: list[float] = []
    k = 0
    for n, seq in enumerate(seqs):
        while k < len(frontier) and frontier[k][1] < seq:
            k += 1
        if k == len(frontier):
            return out, len(seqs) - n
        out.append(frontier[k][0] - sent[seq])
    return out, 0


def longest_gap(times: Iterable[float], window: tuple[float, float]) -> float:
    """The longest stretch without a message inside `window` (its edges count as messages)."""
    inside = [window[0], *(t for t in times if window[0] <= t < window[1]), window[1]]
    return max(b - a for a, b in itertools.pairwise(inside))


@dataclass
class Drift:
    """Latencies of the first and the last third of the counted events: a queue that grows
    (the consumer of the pushes slower than they come) shows as a late p50 far above the early."""

    early: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)

    def add(self, latencies: list[float]) -> None:
        third = len(latencies) // 3
        self.early += latencies[:third]
        self.late += latencies[len(latencies) - third :]

    def text(self) -> str:
        early, late = sorted(self.early), sorted(self.late)
        first, last = (f"{pct(x, 0.5) * 1000:.0f}" for x in (early, late))
        return f"p50 first third {first} ms, last third {last} ms"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def ms(values: list[float], ps: Sequence[float] = (0.5, 0.95)) -> str:
    return " / ".join(f"{pct(values, p) * 1000:.0f}" for p in ps) + " ms"


# --------------------------------------------------------------------------------------------
# 1. Twenty pages in chromium at 1,000 events/s

RECORDER = """(() => {
  const selector = '#streams tr[data-stream="' + %s + '"] td[data-field="recorded"]';
  const bench = window.__bench = {shown: [], pushed: []};
  document.addEventListener("htmx:wsAfterMessage", () => {
    bench.pushed.push(Date.now());
    const cell = document.querySelector(selector);
    if (!cell) return;
    const value = parseInt(cell.textContent.replace(/,/g, ""), 10);  // "12,345"
    const last = bench.shown[bench.shown.length - 1];
    if (!last || last[1] !== value) bench.shown.push([Date.now(), value]);
  });
})();"""


@dataclass
class PageRun:
    published: Published
    latencies: list[float]
    missed: int
    digest_latencies: list[float]
    digest_rate: float
    pushes_per_page: list[float]  # per page, over the counted window
    pages_caught_up: int
    cpu: CpuMeter
    drift: Drift
    silence: float  # the longest time any page went without a push, in the window
    socket_latencies: list[float]  # publish -> a script's socket on the same page's topic
    render_ms: float  # the web process' mean time to render the overview (its /metrics)


async def pages_run(
    env: Environment, nc: Client, cookie: str, args: argparse.Namespace, prefix: str
) -> PageRun:
    from playwright.async_api import async_playwright

    stream = f"LIVE_{uuid.uuid4().hex[:8]}"
    subject = f"live.{stream.lower()}"
    await create_stream(nc, stream, subject)
    watch = DigestWatch(prefix, stream)
    await watch.start(nc)
    await nc.jetstream().publish(subject, b"first")  # seq 1: the stream shows on the pages
    await wait_for(_async(lambda: watch.last() >= 1), 60, "the tap records the stream", env)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        try:
            pages = []
            for _ in range(args.pages):
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                await context.add_cookies(
                    [{"name": "sessionid", "value": cookie, "url": env.web_url}]
                )
                await context.add_init_script(RECORDER % json.dumps(stream))
                page = await context.new_page()
                await page.goto(env.web_url + "/")
                pages.append(page)
            for page in pages:
                await page.wait_for_selector(f'#streams tr[data-stream="{stream}"]', timeout=30_000)
                await page.wait_for_selector('#live-status[data-state="live"]', timeout=30_000)
            # beside the pages, one script's socket on the same topic: the web process' share
            probe = (await open_sockets(env, cookie, stream, 1))[0]
            await asyncio.sleep(SETTLE)  # the pages' loading is over before the publisher starts
            say(f"{args.pages} pages live; {PAGE_RATE:,}/s for {args.latency_seconds:g} s")
            browser_pid = os.getpid()
            known = {env.pid("web"), env.pid("tap")}
            cpu = CpuMeter({
                "web": lambda: [env.pid("web")],
                "tap": lambda: [env.pid("tap")],
                "chromium": lambda: descendants(browser_pid) - known - _servers(env),
                "bench": lambda: [os.getpid()],
            })  # fmt: skip
            cpu.start()
            published = await publish_steady(nc, subject, PAGE_RATE, args.latency_seconds, 2)
            cpu.stop()
            end = time.time()
            last = published.last_seq

            async def caught_up() -> bool:
                values = await asyncio.gather(*(p.evaluate(
                    "(window.__bench.shown.at(-1) || [0, 0])[1]") for p in pages))  # fmt: skip
                return min(values) >= last and watch.last() >= last

            with contextlib.suppress(TimeoutError):
                await wait_for(caught_up, 15, "every page shows the last event", env)
            records = [await p.evaluate("window.__bench") for p in pages]
            render_ms = render_mean(env.web_url, "overview") * 1000
            await close_sockets([probe])
        finally:
            await browser.close()
    await watch.sub.unsubscribe()
    seqs = published.counted(100_000)
    (env.tmp / "pages.json").write_text(json.dumps(records))  # raw, for --keep
    latencies: list[float] = []
    drift = Drift()
    missed = caught = 0
    for record in records:
        shown = [(t / 1000, int(v)) for t, v in record["shown"]]
        lat, miss = first_shown(shown, published.sent, seqs)
        latencies += lat
        drift.add(lat)
        missed += miss
        caught += not miss
    digest_lat, _ = first_shown(watch.seen, published.sent, seqs)
    probe_shown = [(t, v) for t, v in zip(probe.arrived, probe.shown, strict=True) if v >= 0]
    probe_lat, _ = first_shown(probe_shown, published.sent, seqs)
    window = (published.start + WARMUP, end)
    pushes = [sum(window[0] <= t / 1000 < window[1] for t in r["pushed"]) for r in records]
    silence = max(longest_gap([t / 1000 for t in r["pushed"]], window) for r in records)
    return PageRun(
        published, sorted(latencies), missed, sorted(digest_lat), watch.rate(*window),
        sorted(n / (window[1] - window[0]) for n in pushes), caught, cpu, drift, silence,
        sorted(probe_lat), render_ms,
    )  # fmt: skip


def render_mean(base: str, kind: str) -> float:
    """The web process' mean time to render a live topic of `kind`, in seconds, from its
    /metrics (`flowscope_live_render_seconds`, over the process' life)."""
    parts = urlparse(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = dict(
        re.findall(
            rf'^flowscope_live_render_seconds_(sum|count)\{{kind="{kind}"\}} (\S+)$', text, re.M
        )
    )
    count = float(found.get("count", 0))
    return float(found.get("sum", 0)) / count if count else float("nan")


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(check())

    return run


def _servers(env: Environment) -> set[int]:
    pids: set[int] = set()
    for server in (env.nats, env.pg):
        if server is not None and server.proc is not None:
            pids |= {server.proc.pid} | descendants(server.proc.pid)
    return pids


# --------------------------------------------------------------------------------------------
# 2. 200 sockets at 5,000 events/s


class Socket(WebSocketClientProtocol):  # type: ignore[misc]
    """One client of /ws/live/: when each message arrived and the stream's recorded counter in
    it (-1 when the message does not show the stream)."""

    pattern: re.Pattern[bytes]
    clients: list[Socket]

    def __init__(self) -> None:
        super().__init__()
        self.arrived = array("d")
        self.shown = array("q")
        self.closed: str | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.clients.append(self)

    def onOpen(self) -> None:
        self.opened.set_result(None)

    def onMessage(self, payload: bytes, is_binary: bool) -> None:
        self.arrived.append(time.time())
        found = self.pattern.search(payload)
        self.shown.append(int(found.group(1).replace(b",", b"")) if found else -1)

    def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        self.closed = f"{code} {reason or ''}".strip()
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"websocket closed: {self.closed}"))
        if not self.gone.done():
            self.gone.set_result(None)


async def open_sockets(env: Environment, cookie: str, stream: str, n: int) -> list[Socket]:
    parts = urlparse(env.web_url)
    clients: list[Socket] = []
    protocol = type("BenchSocket", (Socket,), {"pattern": recorded_pattern(stream),
                                               "clients": clients})  # fmt: skip
    factory = WebSocketClientFactory(
        f"ws://{parts.netloc}/ws/live/?topics=overview",
        origin=env.web_url, headers={"Cookie": f"sessionid={cookie}"},
    )  # fmt: skip
    factory.protocol = protocol
    factory.setProtocolOptions(utf8validateIncoming=False, autoPingInterval=0)
    loop = asyncio.get_running_loop()
    for start in range(0, n, 20):  # 20 at a time: each connect renders the page's state once
        await asyncio.gather(*(
            loop.create_connection(factory, parts.hostname, parts.port)
            for _ in range(min(20, n - start))
        ))  # fmt: skip
        await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(c.opened for c in clients)), 60)
    return clients


async def close_sockets(clients: list[Socket]) -> None:
    """Close handshakes for 5 s at most, then drop what is left."""
    for c in clients:
        c.sendClose()
    await asyncio.wait([c.gone for c in clients], timeout=5)
    for c in clients:
        if not c.gone.done():
            c.transport.abort()


@dataclass
class Sample:
    t: float  # time.time()
    ticks: int  # the web process' utime + stime
    rss: int  # its VmRSS, KiB


@dataclass
class SoakRun:
    published: Published
    seconds: float
    updates: list[float]  # per socket: messages per second over the counted window
    digest_rate: float
    latencies: list[float]  # publish -> socket, every (socket, event)
    digest_latencies: list[float]
    missed: int
    closed: int
    drift: Drift
    silence: float  # the longest time any socket went without a message, in the window
    samples: list[Sample] = field(default_factory=list)
    cpu: CpuMeter | None = None

    def rss_at(self, f: float) -> int:
        """VmRSS at fraction `f` of the publishing run (the first sample at or after it)."""
        t0, t1 = self.published.start, self.samples[-1].t
        when = t0 + f * (t1 - t0)
        return next((s.rss for s in self.samples if s.t >= when), self.samples[-1].rss)

    def web_cpu(self, seconds: float = 10.0) -> tuple[float, float]:
        """(mean, highest over any `seconds`-long stretch) of the web process, share of a core."""
        s = [x for x in self.samples if x.t >= self.published.start]
        mean = (s[-1].ticks - s[0].ticks) / CLOCK_TICKS / (s[-1].t - s[0].t)
        step = max(1, round(seconds / max((s[-1].t - s[0].t) / (len(s) - 1), 1e-3)))
        peaks = [
            (b.ticks - a.ticks) / CLOCK_TICKS / (b.t - a.t)
            for a, b in zip(s, s[step:], strict=False)
            if b.t > a.t
        ]
        return mean, max(peaks, default=mean)


async def soak_run(
    env: Environment, nc: Client, cookie: str, args: argparse.Namespace, prefix: str
) -> SoakRun:
    stream = f"SOAK_{uuid.uuid4().hex[:8]}"
    subject = f"soak.{stream.lower()}"
    await create_stream(nc, stream, subject)
    watch = DigestWatch(prefix, stream)
    await watch.start(nc)
    await nc.jetstream().publish(subject, b"first")
    await wait_for(_async(lambda: watch.last() >= 1), 60, "the tap records the stream", env)
    say(f"opening {args.sockets} websockets")
    clients = await open_sockets(env, cookie, stream, args.sockets)
    web = env.pid("web")
    samples: list[Sample] = []

    async def sample() -> None:
        while True:
            samples.append(Sample(time.time(), proc_ticks([web]), vm_rss(web)))
            await asyncio.sleep(1.0)

    await asyncio.sleep(2)  # the connect storm's renders are over
    sampler = asyncio.create_task(sample())
    cpu = CpuMeter({
        "web": lambda: [web],
        "tap": lambda: [env.pid("tap")],
        "nats-server + postgres": lambda: _servers(env),
        "bench": lambda: [os.getpid()],
    })  # fmt: skip
    say(f"{args.sockets} sockets open; publishing {SOAK_RATE:,}/s for {args.soak_seconds:g} s")
    await asyncio.sleep(1.5)
    cpu.start()
    try:
        published = await publish_steady(nc, subject, SOAK_RATE, args.soak_seconds, 2)
    finally:
        cpu.stop()
        end = time.time()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    samples.append(Sample(end, proc_ticks([web]), vm_rss(web)))
    last = published.last_seq

    async def caught_up() -> bool:
        return watch.last() >= last and min(max(c.shown, default=0) for c in clients) >= last

    with contextlib.suppress(TimeoutError):
        await wait_for(caught_up, 30, "every socket shows the last event", env)
    await watch.sub.unsubscribe()
    window = (published.start + WARMUP, end)
    updates = []
    silence = max(longest_gap(c.arrived, window) for c in clients)
    latencies: list[float] = []
    missed = 0
    drift = Drift()
    seqs = published.counted(5_000)
    for c in clients:
        times = [t for t in c.arrived if window[0] <= t < window[1]]
        updates.append((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0)
        shown = [(t, v) for t, v in zip(c.arrived, c.shown, strict=True) if v >= 0]
        lat, miss = first_shown(shown, published.sent, seqs)
        latencies += lat
        drift.add(lat)
        missed += miss
    closed = sum(c.closed is not None for c in clients)
    await close_sockets(clients)
    digest_lat, _ = first_shown(watch.seen, published.sent, seqs)
    latencies.sort()
    return SoakRun(
        published, end - published.start, updates, watch.rate(*window), latencies,
        sorted(digest_lat), missed, closed, drift, silence, samples, cpu,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The run and its report


@dataclass
class Check:
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    passed: bool | None  # None: no target stated


async def bench(env: Environment, args: argparse.Namespace) -> list[Check]:
    prefix = env.env.get("FLOWSCOPE_SUBJECT_PREFIX", "flowscope")
    cookie = log_in(env.web_url, env.password)
    nc = await nats.connect(env.nats_url, name="flowscope-live-bench", max_reconnect_attempts=3)
    try:
        say(f"1. {args.pages} chromium pages")
        pages = await pages_run(env, nc, cookie, args, prefix)
        say(f"2. {args.sockets} sockets")
        soak = await soak_run(env, nc, cookie, args, prefix)
        versions = ", ".join(
            f"{name} {metadata.version(name)}"
            for name in ("daphne", "channels", "nats-py", "playwright")
        )
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return report(args, pages, soak, versions)


def report(args: argparse.Namespace, pages: PageRun, soak: SoakRun, versions: str) -> list[Check]:
    load = os.getloadavg()
    p, s = pages.published, soak.published
    push_mean = sum(pages.pushes_per_page) / len(pages.pushes_per_page)
    print()
    print(
        f"Flowscope live transport benchmark: one web process (Daphne, DJANGO_DEBUG=0), the tap, "
        f"nats-server and PostgreSQL on this machine; the first {WARMUP:g} s of each publishing "
        "run are warm-up, not counted"
    )
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load {load[0]:.2f}/{load[1]:.2f}; {versions}"
    )
    print(
        f"1. {args.pages} chromium pages on the overview; publisher {p.achieved:,.0f}/s "
        f"(asked {p.asked:,.0f}) for {args.latency_seconds:g} s, events {p.counted_from:,}.."
        f"{p.last_seq:,} counted x {args.pages} pages = {len(pages.latencies):,} latencies"
    )
    print(
        f"   publish -> page p50/p95/p99/max {ms(pages.latencies, (0.5, 0.95, 0.99, 1.0))}; "
        f"publish -> tap's digest {ms(pages.digest_latencies, (0.5, 0.95, 0.99, 1.0))}; "
        f"page {pages.drift.text()}"
    )
    print(
        "   publish -> a script's socket beside the pages p50/p95/p99/max "
        f"{ms(pages.socket_latencies, (0.5, 0.95, 0.99, 1.0))}"
    )
    print(
        f"   pushes per page per second: mean {push_mean:.2f}, min {pages.pushes_per_page[0]:.2f}, "
        f"max {pages.pushes_per_page[-1]:.2f}, longest silence {pages.silence:.2f} s; "
        f"tap digests {pages.digest_rate:.2f}/s; overview rendered in {pages.render_ms:.1f} ms "
        f"(mean); CPU (100% = one core): {pages.cpu.text()}"
    )
    mean, peak = soak.web_cpu()
    rss = [x.rss for x in soak.samples]
    points = [soak.rss_at(f) for f in (0.0, 0.25, 0.5, 0.75)] + [rss[-1]]
    print(
        f"2. {args.sockets} websockets on the overview; publisher {s.achieved:,.0f}/s (asked "
        f"{s.asked:,.0f}) for {soak.seconds:.0f} s; {soak.closed} closed during the run"
    )
    print(
        "   web VmRSS (MiB) at 0/25/50/75/100%: "
        + " / ".join(f"{x / MIB:.1f}" for x in points)
        + f"; max {max(rss) / MIB:.1f}; web CPU mean {mean:.0%}, highest 10 s {peak:.0%}"
    )
    assert soak.cpu is not None
    print(f"   CPU over the run (100% = one core): {soak.cpu.text()}")
    u = sorted(soak.updates)
    print(
        f"   updates per socket per second: mean {sum(u) / len(u):.2f}, min {u[0]:.2f}, "
        f"max {u[-1]:.2f}, longest silence {soak.silence:.2f} s; "
        f"tap digests {soak.digest_rate:.2f}/s; publish -> socket "
        f"p50/p95/p99 {ms(soak.latencies, (0.5, 0.95, 0.99))}, publish -> tap's digest "
        f"{ms(soak.digest_latencies, (0.5, 0.95, 0.99))}; socket {soak.drift.text()}"
    )
    page95 = pct(pages.latencies, 0.95)
    digest95 = pct(pages.digest_latencies, 0.95)
    growth = points[-1] - points[1]
    mean_u = sum(u) / len(u)
    checks = [
        Check("publish -> page p50 / p95", ms(pages.latencies),
              f"digest {ms(pages.digest_latencies)}",
              f"{page95 / digest95:.1f}", f"p95 < {TARGET_P95 * 1000:.0f} ms",
              page95 < TARGET_P95 and not pages.missed),
        Check("publish -> socket beside the pages p50 / p95", ms(pages.socket_latencies),
              f"digest {ms(pages.digest_latencies)}",
              f"{pct(pages.socket_latencies, 0.95) / digest95:.1f}", "none stated", None),
        Check(f"pushes per page per s ({args.pages} pages), mean", f"{push_mean:.2f}/s",
              f"digests {pages.digest_rate:.2f}/s",
              f"{push_mean / max(pages.digest_rate, 1e-9):.2f}", "none stated", None),
        Check("pages showing the last event", f"{pages.pages_caught_up} of {args.pages}", "", "",
              "every page", pages.pages_caught_up == args.pages),
        Check(f"updates per socket per s ({args.sockets}), mean", f"{mean_u:.2f}/s",
              f"digests {soak.digest_rate:.2f}/s",
              f"{mean_u / max(soak.digest_rate, 1e-9):.2f}", "none stated", None),
        Check(f"updates per socket per s ({args.sockets}), max", f"{u[-1]:.2f}/s", "", "",
              f"<= {TARGET_UPDATES:g}/s", u[-1] <= TARGET_UPDATES),
        Check("web CPU, mean / highest 10 s", f"{mean:.0%} / {peak:.0%}", "", "",
              "none stated", None),
        Check("web VmRSS 25% -> 100% of the soak", f"{growth / MIB:+.1f} MiB",
              f"{points[1] / MIB:.1f} MiB at 25%", "", f"flat: <= +{TARGET_FLAT_KIB / MIB:g} MiB",
              growth <= TARGET_FLAT_KIB),
        Check("publish -> socket p50 / p95", ms(soak.latencies),
              f"digest {ms(soak.digest_latencies)}",
              f"{pct(soak.latencies, 0.95) / pct(soak.digest_latencies, 0.95):.1f}",
              "none stated", None),
        Check("sockets open to the end, showing the last",
              f"{args.sockets - soak.closed} of {args.sockets}",
              "", "", "every socket", not soak.closed and not soak.missed),
        Check("publisher held the rate (1,000 / 5,000)",
              f"{p.achieved:,.0f} / {s.achieved:,.0f}/s", "", "",
              f">= {HELD:.0%} of asked",
              p.achieved >= HELD * p.asked and s.achieved >= HELD * s.asked),
    ]  # fmt: skip
    print()
    head = ("figure", "value", "baseline", "ratio", "target", "result")
    widths = (42, 17, 22, 5, 20, 6)
    print(" ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)))
    print(" ".join("-" * w for w in widths))
    for c in checks:
        result = "-" if c.passed is None else "PASS" if c.passed else "FAIL"
        cells = (c.figure, c.value, c.baseline, c.ratio, c.target, result)
        print(" ".join(f"{x:<{w}}" for x, w in zip(cells, widths, strict=True)).rstrip())
    print(
        "latency: from the bench's publish to the first moment a page (Date.now() in "
        "htmx:wsAfterMessage) or socket (arrival) shows a recorded counter that includes the "
        "event; digest: to this process' receipt of the tap's first digest that includes it; "
        "ratio = p95 / the digest's p95."
    )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help=f"seconds of {PAGE_RATE:,} events/s with the pages (30)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=600.0,
        help=f"seconds of {SOAK_RATE:,} events/s with the sockets (600)",
    )
    parser.add_argument("--pages", type=int, default=PAGES, help=f"chromium pages ({PAGES})")
    parser.add_argument("--sockets", type=int, default=SOCKETS, help=f"websockets ({SOCKETS})")
    parser.add_argument(
        "--quick", action="store_true", help="15 s with the pages, 120 s with the sockets"
    )
    parser.add_argument(
        "--no-targets", action="store_true", help="exit 0 even when a target is missed"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()  # fmt: skip
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 15.0)
        args.soak_seconds = min(args.soak_seconds, 120.0)
    if not os.path.exists(CHROMIUM):
        print(f"benchmark failed: no chromium at {CHROMIUM}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    env = Environment(keep=args.keep)
    checks: list[Check] = []
    try:
        say("starting nats-server, PostgreSQL, the tap and Daphne")
        env.start()
        checks = asyncio.run(bench(env, args))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:  # exit 2, never 1 (a missed target), whatever went wrong
        traceback.print_exc()
        for name in env.procs:
            print(f"--- {name}.log (last lines)\n{env.log(name)}", file=sys.stderr)
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env.close()
    missed = [c.figure for c in checks if c.passed is False]
    return exit_status(missed, args.no_targets)


if __name__ == "__main__":
    sys.exit(main())
