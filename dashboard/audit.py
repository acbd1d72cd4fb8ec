"""The audit log: every change, who made it, from where, and how it ended (issue #14).

`record()` writes one row. `audited()` wraps a change: the row is written when the change ends,
as `ok`, or as `failed` with the server's error (and the error raised on), so a failed change
is on record too. Logins, failed logins and lock-outs are recorded from Django's signals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from dashboard.models import AuditEntry

log = logging.getLogger("flowscope.audit")
MAX_ERROR = 2000


def client_address(request: HttpRequest | None) -> str | None:
    """The client's address: the first X-Forwarded-For hop only behind a trusted proxy
    (FLOWSCOPE_TRUST_X_FORWARDED_FOR=1), else the socket's peer."""
    if request is None:
        return None
    if getattr(settings, "FLOWSCOPE_TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def record(
    request: HttpRequest | None,
    action: str,
    target: str = "",
    *,
    detail: dict[str, Any] | None = None,
    result: str = AuditEntry.Result.OK,
    error: str = "",
    user: Any = None,
    username: str = "",
) -> AuditEntry:
    who = user if user is not None else getattr(request, "user", None)
    if who is not None and not getattr(who, "is_authenticated", False):
        who = None
    entry = AuditEntry.objects.create(
        user=who,
        username=username or (who.get_username() if who is not None else ""),
        address=client_address(request),
        action=action,
        target=target[:512],
        detail=detail or {},
        result=result,
        error=error[:MAX_ERROR],
    )
    log.info("audit %s %s %s by %s: %s", action, target, result, entry.username or "-", error)
    return entry


@contextmanager
def audited(
    request: HttpRequest | None, action: str, target: str, detail: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Record the change made in the block: yields `detail` to add to (say, the configuration
    after); an exception is recorded as `failed` with its message and raised again."""
    info: dict[str, Any] = dict(detail or {})
    try:
        yield info
    except Exception as exc:
        record(request, action, target, detail=info, result=AuditEntry.Result.FAILED,
               error=str(exc) or type(exc).__name__)  # fmt: skip
        raise
    record(request, action, target, detail=info)


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    record(request, "login", f"user {user.get_username()}", user=user)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record(request, "logout", f"user {user.get_username()}", user=user)


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    name = str(credentials.get("username", ""))[:150]
    record(request, "login.failed", f"user {name}", result=AuditEntry.Result.FAILED,
           error="wrong username or password", username=name)  # fmt: skip
