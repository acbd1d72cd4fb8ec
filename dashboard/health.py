"""Liveness and readiness probes for load balancers and docker-compose healthchecks."""

from django.db import connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is checked."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database answers and the schema is migrated."""
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM django_migrations WHERE app = 'dashboard'")
            (applied,) = cur.fetchone() or (0,)
    except Exception as exc:  # any database failure means "not ready"
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    if not applied:
        return JsonResponse({"status": "unavailable", "database": "not migrated"}, status=503)
    return JsonResponse({"status": "ok"})
