"""Pages. Plain function views; templates render everything (autoescaped)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static

from dashboard.pages.overview import overview as overview  # the page lives in dashboard/pages


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page links: send them to the real one."""
    return redirect(static("favicon.svg"), permanent=True)


class Logout(auth_views.LogoutView):
    """Logging out takes a POST (the nav's button); a GET, say from a bookmark or a typed
    address, gets a page with that button instead of an empty 405."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, "logout.html")
