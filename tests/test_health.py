"""/healthz and /readyz from a real Daphne: what an anonymous caller learns when the database is
not ready (a word per check) and what only the server's log says (the database's own error)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from eventbus.embedded import free_port
from tests.webutil import daphne, get


def test_readyz_names_an_unreachable_database_and_logs_the_error_only(tmp_path):
    port = free_port()  # nothing listens there: a PostgreSQL that is down
    url = f"postgresql://flowscope:s3cret-pw@127.0.0.1:{port}/flowscope"
    log = tmp_path / "daphne.log"
    production = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50}
    with daphne({"DATABASE_URL": url, **production}, log) as web:
        status, body = get(web + "/readyz")
        assert get(web + "/healthz") == (200, b'{"status": "ok"}')  # the process itself is fine
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "checks": {"database": "unreachable"}}
    for secret in (str(port), "127.0.0.1", "flowscope", "s3cret", "refused", "connection"):
        assert secret not in body.decode(), secret
    logged = log.read_text(errors="replace")
    assert "readyz: the database is unreachable" in logged
    assert f"port {port} failed" in logged and "Connection refused" in logged


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database on the test server with no tables at all; dropped afterwards."""
    name = f"readyz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_readyz_says_an_empty_database_is_not_migrated(empty_database, tmp_path):
    log = tmp_path / "daphne.log"
    with daphne({"DATABASE_URL": empty_database}, log) as web:
        status, body = get(web + "/readyz")
    assert (status, json.loads(body)) == (
        503,
        {"status": "unavailable", "checks": {"database": "not migrated"}},
    )
    assert "django_migrations" not in body.decode()
    assert 'relation "django_migrations" does not exist' in log.read_text(errors="replace")


def test_readyz_is_ready_on_the_migrated_database(database_url, tmp_path):
    with daphne({"DATABASE_URL": database_url}, tmp_path / "daphne.log") as web:
        status, body = get(web + "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "checks": {"database": "ok"}})
