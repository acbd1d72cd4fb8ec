"""/audit/ (admins): every change, filterable by who, what, result and time (issue #14)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.auditlog import entries
from dashboard.models import AuditEntry
from dashboard.roles import require
from dashboard.search.filters import FilterError


@require("audit")
def audit_log(request: HttpRequest) -> HttpResponse:
    error = None
    page = None
    try:
        page = entries(request.GET)
    except FilterError as exc:
        error = exc
    params = request.GET.copy()
    params.pop("cursor", None)
    ctx = {"page": page, "error": error, "form": request.GET, "results": AuditEntry.Result.choices,
           "filter_qs": params.urlencode()}  # fmt: skip
    return render(request, "dashboard/audit.html", ctx, status=400 if error else 200)
