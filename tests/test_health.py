"""/healthz and /readyz from a real Daphne (and the tap's own port): what an anonymous caller
learns when the database, NATS or the tap is not ready (a word per check), what only the
server's log says (the servers' own errors), and how fast readiness follows NATS stopping and
coming back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import yaml

from eventbus.embedded import free_port
from tests.metricsutil import probe, stop, tap_process
from tests.taputil import ROOT
from tests.webutil import daphne, get, wait_until


def test_readyz_names_an_unreachable_database_and_logs_the_error_only(tmp_path):
    port = free_port()  # nothing listens there: a PostgreSQL that is down
    url = f"postgresql://flowscope:s3cret-pw@127.0.0.1:{port}/flowscope"
    log = tmp_path / "daphne.log"
    production = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50}
    nats_port = free_port()  # and no NATS either
    env = {"DATABASE_URL": url, "NATS_URL": f"nats://127.0.0.1:{nats_port}", **production}
    with daphne(env, log) as web:
        status, body = get(web + "/readyz")
        assert get(web + "/healthz") == (200, b'{"status": "ok"}')  # the process itself is fine
    assert status == 503
    assert json.loads(body) == {
        "status": "unavailable",
        "checks": {"database": "unreachable", "nats": "unreachable", "tap": "unknown"},
    }
    for secret in (str(port), str(nats_port), "127.0.0.1", "flowscope", "s3cret", "refused",
                   "connection"):  # fmt: skip
        assert secret not in body.decode(), secret
    logged = log.read_text(errors="replace")
    assert "readyz: the database is unreachable" in logged
    assert f"port {port} failed" in logged and "Connection refused" in logged
    assert "readyz: NATS is unreachable" in logged


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database on the test server with no tables at all; dropped afterwards."""
    name = f"readyz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_readyz_says_an_empty_database_is_not_migrated(empty_database, nats_server, tmp_path):
    log = tmp_path / "daphne.log"
    with daphne({"DATABASE_URL": empty_database, "NATS_URL": nats_server.url}, log) as web:
        status, body = get(web + "/readyz")
    assert (status, json.loads(body)) == (
        503,
        {"status": "unavailable",
         "checks": {"database": "not migrated", "nats": "ok", "tap": "unknown"}},
    )  # fmt: skip
    assert "django_migrations" not in body.decode()
    assert 'relation "django_migrations" does not exist' in log.read_text(errors="replace")


def heartbeat(database_url: str, seconds_ago: float) -> None:
    """A tap's heartbeat row, written `seconds_ago` (by the database's clock)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO flowscope_tap (id, hostname, pid, started_at, heartbeat_at, streams) "
            "VALUES (%s, 'test', 1, now(), now() - make_interval(secs => %s), '[]')",
            (uuid.uuid4().hex[:10], seconds_ago),
        )


def test_readyz_is_ready_with_the_database_nats_and_a_fresh_tap_heartbeat(
    database_url, nats_server, tmp_path
):
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url}
    with daphne(env, tmp_path / "daphne.log") as web:
        assert probe(web + "/readyz") == (
            503,
            {"status": "unavailable", "checks": {"database": "ok", "nats": "ok", "tap": "none"}},
        )
        heartbeat(database_url, seconds_ago=30)  # a tap that went silent
        assert probe(web + "/readyz") == (
            503,
            {"status": "unavailable", "checks": {"database": "ok", "nats": "ok", "tap": "stale"}},
        )
        heartbeat(database_url, seconds_ago=1)
        assert probe(web + "/readyz") == (
            200,
            {"status": "ok", "checks": {"database": "ok", "nats": "ok", "tap": "ok"}},
        )
    logged = (tmp_path / "daphne.log").read_text()
    assert re.search(r"the newest tap heartbeat is 3\d\.\d s old", logged), logged[-2000:]


def test_readyz_without_the_tap_check(database_url, nats_server, tmp_path):
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
           "FLOWSCOPE_READY_TAP_SECONDS": "0"}  # fmt: skip
    with daphne(env, tmp_path / "daphne.log") as web:
        assert probe(web + "/readyz") == (
            200,
            {"status": "ok", "checks": {"database": "ok", "nats": "ok"}},
        )


def compose_healthcheck(service: str, port: int) -> int:
    """Run docker-compose.yml's healthcheck of `service` here, against `port` instead of the
    one it has in the container; its exit status (0: healthy)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    default = {"web": 8000, "tap": 9470, "demo": 9471}[service]
    code = test[3]
    assert f"http://127.0.0.1:{default}/readyz" in code, code
    argv = [sys.executable, "-c", code.replace(f":{default}/", f":{port}/")]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_compose_probes_use_the_ports_the_settings_default_to():
    from django.conf import settings

    assert (settings.FLOWSCOPE_TAP_METRICS_PORT, settings.FLOWSCOPE_DEMO_METRICS_PORT) in (
        (9470, 9471),
        (0, 0),  # tests/conftest.py turns them off for the processes tests start
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in ("web", "tap", "demo"):
        assert "/readyz" in compose["services"][service]["healthcheck"]["test"][3]
    assert compose["x-flowscope"]["environment"]["FLOWSCOPE_METRICS_HOST"] == "0.0.0.0"


def checks(url: str) -> dict[str, str]:
    try:
        return probe(url)[1]["checks"]  # type: ignore[no-any-return]
    except OSError:  # the tap's port: not listening (yet)
        return {}


@pytest.mark.slow
def test_readyz_of_web_and_tap_follow_nats_stopping_and_returning_and_a_hung_tap(
    database_url, nats_server, tmp_path
):
    port = free_port()
    tap_ready = f"http://127.0.0.1:{port}/readyz"
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log", port)
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
           "FLOWSCOPE_READY_TAP_SECONDS": "3"}  # fmt: skip
    try:
        with daphne(env, tmp_path / "daphne.log") as web:
            wait_until(lambda: probe(web + "/readyz")[0] == 200, 30, "the web app ready")
            wait_until(lambda: probe(tap_ready)[0] == 200, 30, "the tap ready")
            assert probe(tap_ready)[1] == {"status": "ok", "checks": {
                "nats": "ok", "database": "ok", "heartbeat": "ok", "writer": "ok"}}  # fmt: skip
            assert compose_healthcheck("tap", port) == 0
            assert compose_healthcheck("web", int(web.rsplit(":", 1)[1])) == 0

            nats_server.stop()
            t0 = time.monotonic()
            wait_until(lambda: checks(web + "/readyz").get("nats") == "unreachable", 5,
                       "the web app's readyz naming NATS")  # fmt: skip
            web_saw = time.monotonic() - t0
            wait_until(lambda: checks(tap_ready).get("nats") == "unreachable", 5,
                       "the tap's readyz naming NATS")  # fmt: skip
            tap_saw = time.monotonic() - t0
            status, body = probe(web + "/readyz")
            assert status == 503 and body["checks"]["database"] == "ok", body
            assert probe(tap_ready)[0] == 503
            assert compose_healthcheck("tap", port) != 0
            assert compose_healthcheck("web", int(web.rsplit(":", 1)[1])) != 0
            t1 = time.monotonic()
            assert probe(web + "/readyz")[0] == 503 and time.monotonic() - t1 < 2.5  # not hung
            print(f"NATS stopped: web readyz said so after {web_saw:.2f}s, tap's {tap_saw:.2f}s")

            nats_server.start()
            t0 = time.monotonic()
            wait_until(lambda: probe(web + "/readyz")[0] == 200, 15, "the web app ready again")
            wait_until(lambda: probe(tap_ready)[0] == 200, 15, "the tap ready again")
            print(f"NATS back: both ready again after {time.monotonic() - t0:.2f}s")

            os.kill(tap.pid, signal.SIGSTOP)  # hung: its heartbeat row stays, ageing
            try:
                wait_until(lambda: checks(web + "/readyz").get("tap") == "stale", 10,
                           "the web app's readyz naming the tap")  # fmt: skip
                status, body = probe(web + "/readyz")
                assert status == 503
                assert body["checks"] == {"database": "ok", "nats": "ok", "tap": "stale"}
            finally:
                os.kill(tap.pid, signal.SIGCONT)
            wait_until(lambda: probe(web + "/readyz")[0] == 200, 15, "ready once it beats again")
    finally:
        stop(tap)


def test_the_tap_port_says_what_is_missing_when_the_database_is(nats_server, tmp_path):
    port = free_port()
    url = f"postgresql://flowscope:pw@127.0.0.1:{free_port()}/flowscope"  # nothing listens
    tap = tap_process(nats_server.url, url, tmp_path / "tap.log", port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: checks(base + "/readyz").get("database") == "unreachable", 30,
                   "the tap's readyz naming the database")  # fmt: skip
        status, body = probe(base + "/readyz")
        assert status == 503 and body["checks"]["heartbeat"] in ("starting", "stale"), body
        assert get(base + "/healthz") == (200, b'{"status": "ok"}')
        assert get(base + "/nowhere")[0] == 404
    finally:
        stop(tap)


def test_a_second_tap_on_a_taken_port_says_so_and_runs_on(nats_server, database_url, tmp_path):
    port = free_port()
    first = tap_process(nats_server.url, database_url, tmp_path / "first.log", port)
    second = None
    try:
        wait_until(lambda: probe(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30, "first")
        second = tap_process(nats_server.url, database_url, tmp_path / "second.log", port)
        wait_until(lambda: "cannot listen on" in (tmp_path / "second.log").read_text(), 30,
                   "the second tap's log line")  # fmt: skip
        wait_until(lambda: "connected to" in (tmp_path / "second.log").read_text(), 30,
                   "the second tap running")  # fmt: skip
        time.sleep(1)
        assert second.poll() is None, (tmp_path / "second.log").read_text()[-2000:]
        logged = (tmp_path / "second.log").read_text()
        assert f"tap: cannot listen on 127.0.0.1:{port}" in logged
        assert "FLOWSCOPE_TAP_METRICS_PORT" in logged and "Traceback" not in logged
    finally:
        stop(first)
        if second is not None:
            stop(second)
