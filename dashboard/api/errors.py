"""The API's error answers: always 4xx JSON `{"detail": ...}`.

Bad parameters answer 400 with `{"detail": [{"field": ..., "message": ...}]}`, whether pydantic
refused them (ninja would answer 422) or a view did (`bad_request`), so a client reads one form.
Other errors keep ninja's `{"detail": "<reason>"}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from django.http import HttpRequest, HttpResponse
from ninja.errors import AuthenticationError, ValidationError

if TYPE_CHECKING:
    from ninja import NinjaAPI

UNAUTHENTICATED = "Authentication required: log in (session cookie) first."


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """ninja's / pydantic's errors ({"loc": ("query", "limit"), "msg": ...}) as
    [{"field": "limit", "message": ...}]; the location's first part (query, path, body) goes."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        field = ".".join(loc[1:] if len(loc) > 1 else loc)
        out.append({"field": field, "message": str(error.get("msg", "invalid"))})
    return out


def bad_request(field: str, message: str) -> NoReturn:
    """Refuse one parameter with a reason: answered 400 like pydantic's own refusals."""
    raise ValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


def install(api: NinjaAPI) -> None:
    def validation(request: HttpRequest, exc: Any) -> HttpResponse:
        return api.create_response(request, {"detail": field_errors(exc.errors)}, status=400)

    def unauthenticated(request: HttpRequest, exc: Any) -> HttpResponse:
        return api.create_response(request, {"detail": UNAUTHENTICATED}, status=401)

    api.add_exception_handler(ValidationError, validation)
    api.add_exception_handler(AuthenticationError, unauthenticated)
