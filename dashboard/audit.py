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

from axes.signals import user_locked_out
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


def _refused_while_locked_out(request: HttpRequest | None) -> bool:
    """axes refused this attempt because its (username, address) is locked out already (its
    backend flags the request before checking the password; a counted failure sets
    axes_failures_since_start, which a refused one leaves None)."""
    return bool(
        getattr(request, "axes_locked_out", False)
        and getattr(request, "axes_failures_since_start", None) is None
    )


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    name = str(credentials.get("username", ""))[:150]
    if _refused_while_locked_out(request):
        error = "locked out: too many failed attempts for this user from this address"
    else:
        error = "wrong username or password"
    record(request, "login.failed", f"user {name}", result=AuditEntry.Result.FAILED,
           error=error, username=name)  # fmt: skip


@receiver(user_locked_out)
def _locked_out(
    sender: Any, request: HttpRequest | None = None, username: str | None = None, **kwargs: Any
) -> None:
    """One row when a lock-out begins; axes sends this signal again for every attempt refused
    during it, which the login.failed row above already records."""
    if _refused_while_locked_out(request):
        return
    name = str(username or "")[:150]
    failures = getattr(request, "axes_failures_since_start", None)
    minutes = int(getattr(settings, "FLOWSCOPE_LOCKOUT_MINUTES", 0))
    detail = {"failures": failures, "minutes": minutes}
    error = f"too many failed attempts: locked for {minutes} minutes"
    record(request, "login.locked_out", f"user {name}", result=AuditEntry.Result.FAILED,
           detail=detail, error=error, username=name)  # fmt: skip
