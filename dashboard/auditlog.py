"""Reading the audit log: filters (who, what, result, time) and keyset pages, shared by the
/audit/ page and `GET /api/audit`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from dashboard.keyset import newest_first
from dashboard.models import AuditEntry
from dashboard.search.filters import FilterError, parse_time

PAGE = 100


@dataclass
class AuditPage:
    items: list[AuditEntry]
    next: str | None


def entries(params: Mapping[str, str], limit: int = PAGE) -> AuditPage:
    """FilterError names a field that cannot be used."""
    rows: QuerySet[AuditEntry] = AuditEntry.objects.all()
    who = (params.get("user") or "").strip()
    if who:
        rows = rows.filter(username=who)
    what = (params.get("action") or "").strip()
    if what:  # "stream" finds stream.create, stream.purge, ...
        rows = rows.filter(Q(action=what) | Q(action__startswith=what + "."))
    result = (params.get("result") or "").strip()
    if result:
        if result not in AuditEntry.Result.values:
            raise FilterError("result", "one of " + ", ".join(AuditEntry.Result.values))
        rows = rows.filter(result=result)
    for name, op in (("since", "ts__gte"), ("until", "ts__lt")):
        if (params.get(name) or "").strip():
            rows = rows.filter(**{op: parse_time(name, params[name])})
    items, nxt = newest_first(rows, "ts", params.get("cursor") or "", limit)
    return AuditPage(items, nxt)


def as_dict(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id, "ts": e.ts, "user": e.username, "address": e.address, "action": e.action,
        "target": e.target, "detail": e.detail, "result": e.result, "error": e.error,
    }  # fmt: skip
