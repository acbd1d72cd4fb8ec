"""Shapes the API shares: errors (every 4xx), and the responses documented for each operation."""

from __future__ import annotations

from ninja import Schema


class FieldError(Schema):
    field: str
    message: str


class ErrorOut(Schema):
    detail: str | list[FieldError]


# Documented on every authenticated read; a view declares its 200 beside them.
READ_ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut}
