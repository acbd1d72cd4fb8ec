"""Keyset pagination for every list the API answers: `{"items": [...], "next": cursor}`.

A cursor is opaque to clients: base64url (unpadded) of a small JSON object
`{"s": scope, "k": [key values of the page's last item]}`. It is validated before use (the
scope, the number and types of the values, bigint range, no NUL): a malformed or foreign cursor
answers 400, never reaches SQL. Pages are read with `WHERE (keys) > (last keys) ORDER BY keys
LIMIT limit + 1`, so they stay stable while rows keep arriving (no OFFSET).

Querysets: `Keyset("streams", ("name", str), ("id", int)).page(queryset, params)`. Hand-written
SQL (the event search): `decode` the cursor, read `limit + 1` rows, `split` them."""

from __future__ import annotations

import base64
import binascii
import json
import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import reduce
from typing import Any, Generic, TypeVar

from django.db.models import Model, Q, QuerySet
from ninja import Field, Schema

from dashboard.api.errors import bad_request

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_CURSOR_CHARS = 2048
BIGINT = (-(2**63), 2**63 - 1)

T = TypeVar("T")
M = TypeVar("M", bound=Model)
KeyType = type[str] | type[int] | type[datetime]


class PageParams(Schema):
    """The query parameters of every list: `limit` (1 to 500) and `cursor` (from `next`)."""

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="items per page, 1 to 500")
    cursor: str | None = Field(
        None, max_length=MAX_CURSOR_CHARS, description="`next` of the previous page, as given"
    )


class Page(Schema, Generic[T]):
    items: list[T]
    next: str | None = Field(description="pass back as `cursor` for the next page; null: no more")


def encode(scope: str, values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps({"s": scope, "k": plain}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _value(value: Any, kind: KeyType) -> Any:
    """A key value as JSON gave it, checked against its type; ValueError if it is not one."""
    if kind is int:
        if type(value) is not int or not BIGINT[0] <= value <= BIGINT[1]:
            raise ValueError
        return value
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError
    if kind is datetime:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError
        return parsed
    return value


def decode(cursor: str, scope: str, kinds: Sequence[KeyType]) -> list[Any]:
    """The key values a cursor holds, checked; answers 400 (field `cursor`) otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("s") != scope:
            raise ValueError
        values = data.get("k")
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        return [_value(v, k) for v, k in zip(values, kinds, strict=True)]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        bad_request("cursor", "malformed cursor: pass back `next` exactly as it was given")


def split(rows: Sequence[T], limit: int, scope: str, key: Callable[[T], Sequence[Any]]
          ) -> tuple[list[T], str | None]:  # fmt: skip
    """`limit + 1` rows read -> (the page's rows, the cursor of the next page or None)."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return items, encode(scope, key(items[-1])) if more and items else None


class Keyset:
    """An ordering of a queryset by unique, non-null keys ("-name" for descending), paged."""

    def __init__(self, scope: str, *keys: tuple[str, KeyType]) -> None:
        self.scope = scope
        self.keys = keys

    def after(self, values: Sequence[Any]) -> Q:
        """Rows after `values` in this ordering: (a, b) > (x, y) as a OR of ANDs, each key in
        its own direction."""
        steps = []
        for i, (key, _) in enumerate(self.keys):
            field = key.lstrip("-")
            step = Q(**{f"{field}__{'lt' if key.startswith('-') else 'gt'}": values[i]})
            for (earlier, _), value in zip(self.keys[:i], values, strict=False):
                step &= Q(**{earlier.lstrip("-"): value})
            steps.append(step)
        return reduce(operator.or_, steps)

    def page(self, queryset: QuerySet[M], params: PageParams) -> tuple[list[M], str | None]:
        queryset = queryset.order_by(*(key for key, _ in self.keys))
        if params.cursor is not None:
            values = decode(params.cursor, self.scope, [kind for _, kind in self.keys])
            queryset = queryset.filter(self.after(values))
        rows = list(queryset[: params.limit + 1])
        fields = [key.lstrip("-") for key, _ in self.keys]
        return split(rows, params.limit, self.scope, lambda r: [getattr(r, f) for f in fields])
