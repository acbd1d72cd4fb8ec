"""Liveness and readiness probes for load balancers and docker-compose healthchecks.

Anyone may call them, so they say what failed in a word and keep the database's own error text
(host names, ports, user names, SQL) for the server's log.
"""

import logging

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpRequest, JsonResponse
from psycopg.errors import UndefinedTable

log = logging.getLogger("flowscope.health")


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


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready (200) when the database answers and the schema is migrated; else 503 with
    {"status": "unavailable", "checks": {"database": <reason>}}."""
    checks = {"database": database_check()}
    if all(result == "ok" for result in checks.values()):
        return JsonResponse({"status": "ok", "checks": checks})
    return JsonResponse({"status": "unavailable", "checks": checks}, status=503)
