"""`make run`: the whole of Flowscope on one machine, started and stopped as one.

Starts embedded NATS and PostgreSQL unless NATS_URL / DATABASE_URL are set, migrates, makes the
first admin, then runs the tap, the demo services and Daphne as child processes. Ctrl-C (or
SIGTERM) stops the children first, then the servers, and leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from eventbus import logs
from eventbus.embedded import EmbeddedNats, EmbeddedPostgres, free_port

log = logging.getLogger("flowscope.stack")
ROOT = Path(__file__).resolve().parent.parent


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


class Stack:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = dict(os.environ)

    def start_servers(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.env.get("NATS_URL"):
            self.nats = EmbeddedNats(
                self.state_dir / "nats", port=envint("FLOWSCOPE_NATS_PORT", 4322)
            ).start()
            self.env["NATS_URL"] = self.nats.url
            (self.run_dir / "nats.url").write_text(self.nats.url)
            log.info("embedded nats-server: %s", self.nats.url)
        else:
            log.info("using NATS at %s", self.env["NATS_URL"])
        if not self.env.get("DATABASE_URL"):
            self.pg = EmbeddedPostgres(
                self.state_dir / "postgres", port=envint("FLOWSCOPE_PG_PORT", 5433)
            ).start()
            self.env["DATABASE_URL"] = self.pg.url()
            (self.run_dir / "postgres.url").write_text(self.pg.url())
            log.info("embedded PostgreSQL: %s", self.pg.url())
        else:
            log.info("using PostgreSQL at %s", _redact(self.env["DATABASE_URL"]))

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True)

    def spawn(self, name: str, cmd: list[str]) -> None:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, start_new_session=True)
        self.children.append((name, proc))
        log.info("started %s (pid %d)", name, proc.pid)

    def metrics_port(self, setting: str, default: int) -> int:
        """The tap's or the demo's metrics port: the configured one (default `default`), or a
        free one when that is taken; 0 stays 0 (off). Written into the children's environment."""
        value = self.env.get(setting, "").strip()
        port = int(value) if value else default
        if port:
            port = free_port(port)
        self.env[setting] = str(port)
        return port

    def start_processes(self) -> None:
        port = os.environ.get("PORT", "8000")
        urls = [f"web http://127.0.0.1:{port}/metrics"]
        tap_port = self.metrics_port("FLOWSCOPE_TAP_METRICS_PORT", 9470)
        if tap_port:
            urls.append(f"tap http://127.0.0.1:{tap_port}/metrics")
        self.spawn("tap", [sys.executable, "manage.py", "tap"])
        if self.env.get("FLOWSCOPE_DEMO", "1").strip().lower() not in ("0", "false", "no", "off"):
            demo_port = self.metrics_port("FLOWSCOPE_DEMO_METRICS_PORT", 9471)
            if demo_port:
                urls.append(f"demo http://127.0.0.1:{demo_port}/metrics")
            self.spawn("demo", [sys.executable, "manage.py", "demo", "--wait-for-tap", "30"])
        self.spawn(
            "web",
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", port,
             "dashboard.asgi:application"],
        )  # fmt: skip
        log.info("Flowscope is at http://127.0.0.1:%s/ (Ctrl-C stops everything)", port)
        log.info("metrics: %s (each also answers /healthz and /readyz)", ", ".join(urls))

    def wait(self, stop: list[bool]) -> int:
        while not stop:
            for name, proc in self.children:
                if proc.poll() is not None:
                    log.error("%s exited (status %s): stopping everything", name, proc.returncode)
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        # Web and demo first (the tap records the demo's last events), then the tap (it flushes
        # what it holds), the servers last.
        later = [(n, p) for n, p in self.children if n == "tap"]
        first = [(n, p) for n, p in self.children if n != "tap"]
        for group in (first, later):
            for _name, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            for name, proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time: killing it", name)
                    proc.kill()
                    proc.wait()
        if self.pg:
            self.pg.stop()
        if self.nats:
            self.nats.stop()
        for f in ("nats.url", "postgres.url"):
            (self.run_dir / f).unlink(missing_ok=True)
        log.info("stopped")


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url


def main() -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    logs.configure()  # as the children log (eventbus/logs.py), before Django is loaded
    state_dir = Path(os.environ.get("FLOWSCOPE_STATE_DIR", ROOT / ".state"))
    stack = Stack(state_dir)
    stop: list[bool] = []

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        stack.start_servers()
        if not stop:
            stack.manage("migrate", "--noinput", "-v", "0")
            stack.manage("ensure_admin")
            stack.start_processes()
            status = stack.wait(stop)
    except subprocess.CalledProcessError as exc:
        log.error("%s failed with status %d", " ".join(map(str, exc.cmd)), exc.returncode)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
