"""Pages. Plain function views; templates render everything (autoescaped)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard.models import Checkpoint, Consumer, Stream
from dashboard.taps import tap_views


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    streams = (
        Stream.objects.filter(deleted_at__isnull=True)
        .annotate(gap_count=Count("gaps", distinct=True))
        .order_by(Lower("name"), "name")
    )
    consumers = (
        Consumer.objects.filter(deleted_at__isnull=True, stream__deleted_at__isnull=True)
        .select_related("stream")
        .order_by("stream__name", "name")
    )
    recorded = dict(Checkpoint.objects.values_list("stream_id", "recorded"))
    rows = [(s, recorded.get(s.id, 0)) for s in streams]
    return render(
        request,
        "dashboard/overview.html",
        {
            "stream_rows": rows,
            "consumers": consumers,
            "lag_interval": settings.FLOWSCOPE_LAG_INTERVAL,
            "taps": tap_views(timezone.now()),
        },
    )


class Logout(auth_views.LogoutView):
    """Logging out takes a POST (the nav's button); a GET, say from a bookmark or a typed
    address, gets a page with that button instead of an empty 405."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, "logout.html")
