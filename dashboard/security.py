"""Login throttling, password change and the Content-Security-Policy (issue #14, points 1 and 9).

django-axes counts failed logins per (username, address) and refuses that pair for a while after
too many (settings: FLOWSCOPE_LOGIN_ATTEMPTS, FLOWSCOPE_LOCKOUT_MINUTES); `locked_out` answers
with the login page saying so. The audit rows come from dashboard/audit.py's signal receivers.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.models import AccessAttempt
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.utils import timezone

from dashboard import audit
from dashboard.models import AuditEntry


class LoginThrottle(AxesStandaloneBackend):  # type: ignore[misc]  # axes has no types
    """axes' backend, first in AUTHENTICATION_BACKENDS: it refuses a locked-out (username,
    address) before the password is checked. An authentication without a request (Django's test
    client's login(), a shell) has no address to throttle by and is left to the next backend,
    where axes' own would raise."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        super().authenticate(request, username, password, **kwargs)
        return None


def minutes_left(request: HttpRequest, username: str) -> int:
    """Whole minutes until the lock-out of (username, this address) ends, at least 1."""
    minutes = int(settings.FLOWSCOPE_LOCKOUT_MINUTES)
    newest: datetime | None = (
        AccessAttempt.objects.filter(username=username, ip_address=audit.client_address(request))
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)
        .first()
    )
    if newest is None:
        return minutes
    left = (newest + timedelta(minutes=minutes) - timezone.now()).total_seconds()
    return max(1, math.ceil(left / 60))


def locked_out(request: HttpRequest, *args: Any) -> HttpResponse:
    """axes' AXES_LOCKOUT_CALLABLE: the login page with the reason, 429. (axes passes the
    original response and the credentials, in an order that differs between its sync and async
    paths: neither is needed here.)"""
    username = str(request.POST.get("username", ""))[:150]
    form = AuthenticationForm(request, initial={"username": username})
    context = {
        "form": form,
        "locked_out": True,
        "minutes": minutes_left(request, username),
        "next": request.POST.get("next", ""),
    }
    return render(request, "login.html", context, status=settings.AXES_HTTP_RESPONSE_CODE)


class PasswordChange(auth_views.PasswordChangeView):
    """/password/: Django's password change (old password, new one twice), audited either way."""

    template_name = "password_change.html"
    success_url = "/password/?changed=1"

    def form_valid(self, form: PasswordChangeForm) -> HttpResponse:
        response = super().form_valid(form)
        audit.record(self.request, "password.change", f"user {self.request.user.get_username()}")
        return response

    def form_invalid(self, form: PasswordChangeForm) -> HttpResponse:
        errors = "; ".join(str(e) for field in form.errors.values() for e in field)
        audit.record(self.request, "password.change", f"user {self.request.user.get_username()}",
                     result=AuditEntry.Result.FAILED, error=errors)  # fmt: skip
        return super().form_invalid(form)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["changed"] = self.request.GET.get("changed") == "1"
        return context


class ContentSecurityPolicy(CSPMiddleware):
    """django-csp's middleware, with ws:// and wss:// of the request's own host in connect-src:
    CSP 3 lets 'self' match the live socket, browsers before it (Safari < 15.4) do not."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        try:
            host = request.get_host()
        except DisallowedHost:
            return parts
        update = dict(parts.update or {})
        update["connect-src"] = [*update.get("connect-src", []), f"ws://{host}", f"wss://{host}"]
        parts.update = update
        return parts
