"""The API's docs page (`/api/docs`): Swagger UI from static/vendor/, no CDN, no inline script.
ninja's own Swagger page needs "ninja" in INSTALLED_APPS and otherwise loads a CDN."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from ninja.openapi.docs import DocsBase

if TYPE_CHECKING:
    from ninja import NinjaAPI


class VendoredSwagger(DocsBase):
    template = "api/docs.html"

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        context = {"api": api, "openapi_url": self.get_openapi_url(api, kwargs)}
        return render(request, self.template, context)
