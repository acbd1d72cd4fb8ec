"""Newest-first keyset pages of a model with a time column and an id (the audit log, dead
letters): `next` is "<micros>.<id>" of the page's last row; no OFFSET, stable while rows arrive."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from django.db.models import Model, Q, QuerySet

from dashboard.search.filters import FilterError
from dashboard.search.query import from_micros, micros

M = TypeVar("M", bound=Model)


def newest_first(
    rows: QuerySet[M], time_field: str, cursor: str, limit: int
) -> tuple[list[M], str | None]:
    """The page after `cursor` ("" for the first) and the cursor of the next one (None: last)."""
    if cursor.strip():
        at, id_ = parse_cursor(cursor.strip())
        rows = rows.filter(Q(**{f"{time_field}__lt": at}) | Q(**{time_field: at, "id__lt": id_}))
    found = list(rows.order_by(f"-{time_field}", "-id")[: limit + 1])
    if len(found) <= limit:
        return found, None
    last: Any = found[limit - 1]
    return found[:limit], f"{micros(getattr(last, time_field))}.{last.id}"


def parse_cursor(text: str) -> tuple[datetime, int]:
    try:
        at, id_ = text.split(".")
        return from_micros(int(at)), int(id_)
    except (ValueError, OverflowError):
        raise FilterError("cursor", "not a cursor this list gave out") from None
