"""Request guards that apply to every page."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


def reject_nul(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    """A NUL character in the path or query can name nothing here (PostgreSQL text cannot hold
    one): answer 400 with a plain reason instead of failing deep in a query."""

    def middleware(request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            return HttpResponseBadRequest(
                "The address contains a NUL character.", content_type="text/plain"
            )
        return get_response(request)

    return middleware
