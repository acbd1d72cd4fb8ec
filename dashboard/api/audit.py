"""`GET /api/audit` (admins): the audit log, as /audit/ filters it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from dashboard.api.auth import need
from dashboard.api.errors import bad_request
from dashboard.api.paging import PageParams
from dashboard.api.schemas import ErrorOut
from dashboard.auditlog import as_dict, entries
from dashboard.search.filters import FilterError

router = Router(tags=["audit"])


class AuditQuery(PageParams):
    user: str | None = Field(None, description="username")
    action: str | None = Field(None, description="an action, or its prefix: stream, token, login")
    result: str | None = Field(None, description="ok, failed or refused")
    since: str | None = Field(None, description="ISO 8601")
    until: str | None = Field(None, description="ISO 8601, exclusive")


class AuditOut(Schema):
    id: int
    ts: datetime
    user: str
    address: str | None
    action: str
    target: str
    detail: dict[str, Any]
    result: str
    error: str


class AuditPageOut(Schema):
    items: list[AuditOut]
    next: str | None


@router.get("", response={200: AuditPageOut, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut},
            summary="The audit log (admins)")  # fmt: skip
def list_audit(request: HttpRequest, params: Query[AuditQuery]) -> dict[str, Any]:
    need(request, "audit")
    values = {k: v for k, v in params.dict().items() if v is not None and k != "limit"}
    try:
        page = entries(values, params.limit)
    except FilterError as exc:
        bad_request(exc.field, exc.message)
    return {"items": [as_dict(e) for e in page.items], "next": page.next}
