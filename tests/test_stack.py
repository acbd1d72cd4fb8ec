"""`make run`'s supervisor as a user meets it: it starts everything, serves the login page,
Ctrl-C leaves no process behind, and a second start finds what the first one recorded."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventbus.embedded import free_port
from tests.taputil import ROOT


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def _ready(url: str, within: float = 20.0) -> None:
    """The probe answers 200 within `within` seconds. (A probe may say 503 for a moment on a
    loaded machine, a check that ran out of its time budget: an orchestrator asks again too.)
    Fails with the last answer's checks, which name what was not ready."""
    deadline = time.monotonic() + within
    answer = ""
    while True:
        try:
            status, body = _get(url)
            if status == 200:
                return
            answer = f"{status} {body}"
        except urllib.error.HTTPError as exc:
            answer = f"{exc.code} {exc.read().decode(errors='replace')}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready within {within:.0f} s: {answer}")
        time.sleep(0.5)


class Run:
    """`python -m eventbus.stack` (what `make run` runs) in its own process group, as a
    terminal runs it, with its state in a temporary folder."""

    def __init__(self, state: Path, port: int, demo: bool = False):
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "NATS_URL", "FLOWSCOPE_DEMO")
        }
        if not demo:
            env["FLOWSCOPE_DEMO"] = "0"
        env.update(
            FLOWSCOPE_STATE_DIR=str(state),
            PORT=str(port),
            FLOWSCOPE_DEMO_RATE="5",
            FLOWSCOPE_DEMO_FAILURE_RATE="0",  # every order ships: the checks below need that
            FLOWSCOPE_NATS_PORT=str(free_port()),
            FLOWSCOPE_PG_PORT=str(free_port()),
            FLOWSCOPE_ADMIN_PASSWORD="first-run-password",
            # as a user's shell has them: unset, so the stack picks 9470/9471 or free ones
            FLOWSCOPE_TAP_METRICS_PORT="",
            FLOWSCOPE_DEMO_METRICS_PORT="",
        )
        self.log = state.parent / f"stack-{time.monotonic_ns()}.log"
        self.port = port
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventbus.stack"],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.text()[-3000:]
            try:
                if _get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("not ready: " + self.text()[-3000:])

    def pids(self) -> dict[str, int]:
        """Every process it started: children from its log, the servers from pid file and /proc."""
        found = {
            name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", self.text())
        }
        pg = self.state / "postgres" / "postmaster.pid"
        if pg.exists():
            found["postgres"] = int(pg.read_text().split()[0])
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"nats-server" in cmdline and str(self.state).encode() in cmdline:
                found["nats-server"] = int(proc.name)
        return found

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
        return self.proc.wait(60)

    def urls(self) -> tuple[str, str]:
        run = self.state / "run"
        return (run / "nats.url").read_text(), (run / "postgres.url").read_text()


async def _publish_one(nats_url: str, stream: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=["stack.check"])
    await js.publish("stack.check", b"recorded by the first run")
    await nc.close()


def _recorded(database_url: str, stream: str) -> list[tuple[int, bytes]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT e.seq, e.payload FROM flowscope_event e JOIN flowscope_stream s "
            "ON s.id = e.stream_id WHERE s.name = %s ORDER BY e.seq",
            (stream,),
        ).fetchall()
    return [(seq, bytes(p)) for seq, p in rows]


def _wait_recorded(database_url: str, stream: str, timeout: float = 30) -> list[tuple[int, bytes]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _recorded(database_url, stream)
        if rows:
            return rows
        time.sleep(0.3)
    raise AssertionError("the tap recorded nothing")


@pytest.mark.slow
def test_run_serves_login_stops_cleanly_on_ctrl_c_and_keeps_its_state(tmp_path):
    state = tmp_path / "state"
    port = free_port()
    first = Run(state, port)
    try:
        first.wait_ready()
        status, body = _get(f"http://127.0.0.1:{port}/login/")
        assert status == 200 and 'name="password"' in body
        assert "Created user 'admin'" in first.text()
        assert "first-run-password" not in first.text()  # taken from the env, not printed
        nats_url, database_url = first.urls()
        asyncio.run(_publish_one(nats_url, "STACKCHECK"))
        assert _wait_recorded(database_url, "STACKCHECK") == [(1, b"recorded by the first run")]
        pids = first.pids()
        assert set(pids) >= {"tap", "web", "postgres", "nats-server"}, pids
        assert "demo" not in pids  # FLOWSCOPE_DEMO=0
    finally:
        code = first.ctrl_c()
    assert code == 0, first.text()[-3000:]
    assert not [name for name, pid in pids.items() if _alive(pid)], first.text()[-2000:]
    assert not (state / "run" / "nats.url").exists()

    second = Run(state, port, demo=True)  # as `make run` starts by default
    try:
        second.wait_ready()
        _, database_url2 = second.urls()
        assert _recorded(database_url2, "STACKCHECK") == [(1, b"recorded by the first run")]
        assert "Created user 'admin'" not in second.text()  # made once, on the first start
        # the demo services' traffic, recorded by the tap: an order saga's steps (the interest
        # streams' first events may be gone before the tap's consumer exists: waited for)
        saga = {"orders.created", "inventory.reserved", "payments.authorized", "orders.shipped"}
        _wait_subjects(database_url2, saga)
        # The demo placed its first order only once the tap watched every demo stream: nothing
        # of it went by unrecorded, not even on the interest and work-queue streams.
        first_order = _first_order(database_url2)
        _wait_order_recorded(database_url2, first_order, saga | {"shipping.requests"})
        assert _demo_gaps(database_url2) == []
        pids = second.pids()
        assert "demo" in pids, pids
        # each process's metrics port, printed by the stack, parses and is ready
        urls = dict(re.findall(r"(tap|demo) (http://\S+)/metrics", second.text()))
        assert set(urls) == {"tap", "demo"}, second.text()[-3000:]
        for base in (f"http://127.0.0.1:{port}", urls["tap"], urls["demo"]):
            _ready(base + "/readyz")
            assert "process_cpu_seconds_total" in _metrics(base + "/metrics"), base
        assert "flowscope_tap_events_ingested_total" in _metrics(urls["tap"] + "/metrics")
        assert "flowscope_demo_messages_handled_total" in _metrics(urls["demo"] + "/metrics")
    finally:
        assert second.ctrl_c() == 0
    assert not [name for name, pid in pids.items() if _alive(pid)], second.text()[-2000:]


def _metrics(url: str) -> set[str]:
    """The sample names of a /metrics, parsed by prometheus_client."""
    return {s.name for f in text_string_to_metric_families(_get(url)[1]) for s in f.samples}


def _first_order(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT e.payload FROM flowscope_event e JOIN flowscope_stream s ON s.id = e.stream_id"
            " WHERE s.name = 'ORDERS' AND e.seq = 1"
        ).fetchone()
    assert row is not None, "ORDERS seq 1 not recorded"
    return str(json.loads(bytes(row[0]))["order_id"])


def _wait_order_recorded(database_url: str, order_id: str, subjects: set[str]) -> None:
    deadline = time.monotonic() + 30
    seen: set[str] = set()
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT DISTINCT subject FROM flowscope_event WHERE msg_id LIKE %s",
                (order_id + ".%",),
            ).fetchall()
        seen = {r[0] for r in rows}
        if subjects <= seen:
            return
        time.sleep(0.5)
    raise AssertionError(f"first order {order_id}: recorded only {sorted(seen)}")


def _demo_gaps(database_url: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(database_url) as conn:
        return [
            (name, first, last)
            for name, first, last in conn.execute(
                "SELECT s.name, g.first_seq, g.last_seq FROM flowscope_gap g "
                "JOIN flowscope_stream s ON s.id = g.stream_id"
            ).fetchall()
        ]


def _wait_subjects(database_url: str, wanted: set[str], timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT DISTINCT subject FROM flowscope_event WHERE service IS NOT NULL"
            ).fetchall()
        seen = {r[0] for r in rows}
        if wanted <= seen:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"demo traffic never recorded: saw {sorted(seen)}")
