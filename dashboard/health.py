"""Liveness and readiness probes for load balancers and docker-compose healthchecks.

Anyone may call them, so they say what failed in a word and keep the servers' own error text
(host names, ports, user names, SQL) for the server's log.

`/readyz` checks, at the same time and within about 2 seconds whatever is down:
- `database`: PostgreSQL answers and the schema is migrated;
- `nats`: a NATS server of `NATS_URL` accepts a connection and answers a PING (one short
  connection, its answer reused for a second so a flood of probes opens no flood of them);
- `tap`: some tap wrote its heartbeat within FLOWSCOPE_READY_TAP_SECONDS (0: not checked).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpRequest, JsonResponse
from psycopg.errors import UndefinedTable

from eventbus.natsconn import servers

log = logging.getLogger("flowscope.health")
NATS_TIMEOUT = 1.5  # seconds the NATS check may take
NATS_REUSE = 1.0  # seconds a NATS check's answer is reused for
_nats_answer: tuple[float, str] = (float("-inf"), "")


def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is checked."""
    return JsonResponse({"status": "ok"})


def database_check() -> str:
    """'ok', or why the database is not ready: 'unreachable' (no connection: refused, timed
    out, authentication, dropped), 'not migrated', or 'error' (any other database error)."""
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM django_migrations WHERE app = 'dashboard'")
            (applied,) = cur.fetchone() or (0,)
    except (OperationalError, InterfaceError) as exc:
        log.warning("readyz: the database is unreachable: %s", exc)
        return "unreachable"
    except DatabaseError as exc:
        if isinstance(exc.__cause__, UndefinedTable):  # no django_migrations: an empty database
            log.warning("readyz: the database is not migrated: %s", exc)
            return "not migrated"
        log.warning("readyz: the database check failed: %s", exc)
        return "error"
    if not applied:
        log.warning("readyz: the database has no dashboard migrations applied")
        return "not migrated"
    return "ok"


def tap_check(fresh_for: float) -> str:
    """'ok' when some tap's heartbeat is under `fresh_for` seconds old (the database's clock
    on both sides), 'none' when no tap has a heartbeat row, 'stale' otherwise."""
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM now() - max(heartbeat_at)) FROM flowscope_tap")
            (age,) = cur.fetchone() or (None,)
    except DatabaseError as exc:
        log.warning("readyz: the taps' heartbeats could not be read: %s", exc)
        return "error"
    if age is None:
        log.warning("readyz: no tap has written a heartbeat")
        return "none"
    if float(age) >= fresh_for:
        log.warning("readyz: the newest tap heartbeat is %.1f s old", float(age))
        return "stale"
    return "ok"


def database_checks() -> dict[str, str]:
    checks = {"database": database_check()}
    fresh_for = float(settings.FLOWSCOPE_READY_TAP_SECONDS)
    if fresh_for > 0:
        checks["tap"] = tap_check(fresh_for) if checks["database"] == "ok" else "unknown"
    return checks


async def nats_check() -> str:
    """'ok' when a NATS server answers a connection and a PING within NATS_TIMEOUT seconds,
    else 'unreachable' (the reason goes to the log)."""
    global _nats_answer
    at, answer = _nats_answer
    if time.monotonic() - at < NATS_REUSE:
        return answer

    seen: list[BaseException] = []  # what each attempt met (nats-py would log each itself)

    async def quiet(*args: Any) -> None:
        seen.extend(a for a in args if isinstance(a, BaseException))

    options: dict[str, Any] = {
        "name": "flowscope-web-readyz",
        "connect_timeout": NATS_TIMEOUT,
        "allow_reconnect": False,
        # each server tried twice, 50 ms apart, then NoServersError: a refused connection
        # answers at once (with 0, nats-py's connect would try again until the timeout)
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.05,
        "error_cb": quiet,
        "disconnected_cb": quiet,
        "closed_cb": quiet,
    }
    if settings.NATS_CREDS:
        options["user_credentials"] = settings.NATS_CREDS
    nc = None
    try:
        async with asyncio.timeout(NATS_TIMEOUT):
            nc = await nats.connect(servers(settings.NATS_URL), **options)
            await nc.flush(timeout=2)  # (asyncio.timeout bounds it) a PING answered
        answer = "ok"
    except Exception as exc:  # refused, timed out, authentication: all "unreachable" here
        log.warning("readyz: NATS is unreachable: %r%s", exc, f" ({seen[-1]!r})" if seen else "")
        answer = "unreachable"
    finally:
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:
                log.debug("readyz: closing the NATS check's connection: %r", exc)
    _nats_answer = (time.monotonic(), answer)
    return answer


async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready (200) when every check says 'ok'; else 503 with
    {"status": "unavailable", "checks": {<check>: <reason>, ...}} naming what failed."""
    stored, nats_ok = await asyncio.gather(sync_to_async(database_checks)(), nats_check())
    checks = {"database": stored["database"], "nats": nats_ok, **stored}
    if all(result == "ok" for result in checks.values()):
        return JsonResponse({"status": "ok", "checks": checks})
    return JsonResponse({"status": "unavailable", "checks": checks}, status=503)
