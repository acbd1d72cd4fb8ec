"""Pages. Plain function views; templates render everything (autoescaped)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static

from dashboard.models import Checkpoint, Event, Gap, Stream
from dashboard.pages.overview import overview as overview  # the page lives in dashboard/pages


def newest_queries(stream: Stream, limit: int) -> tuple[QuerySet[Event], QuerySet[Event]]:
    mine = Event.objects.filter(stream=stream)
    return (
        mine.filter(seq__isnull=False).order_by("-seq")[:limit],
        # "-seq" too, though all are NULL: it makes the order a backward scan of the index
        mine.filter(seq__isnull=True).order_by("-seq", "-ts")[:limit],
    )


def newest_events(stream: Stream, limit: int = 50) -> list[Event]:
    """A stream's newest events, newest first. Two index scans on (stream_id, seq, ts): by
    sequence, and by time for events recorded without one (a subject subscription); merged by
    time. (The event table keeps no B-tree on ts alone: see migration 0006.)"""
    sequenced, unsequenced = (list(q) for q in newest_queries(stream, limit))
    if not unsequenced:
        return sequenced
    merged = sorted(sequenced + unsequenced, key=lambda e: (e.ts, e.seq or 0), reverse=True)
    return merged[:limit]


@login_required
def stream_detail(request: HttpRequest, name: str) -> HttpResponse:
    stream = Stream.objects.filter(name=name, deleted_at__isnull=True).order_by("-created").first()
    if stream is None:
        deleted = Stream.objects.filter(name=name).exists()
        return render(
            request, "dashboard/stream_missing.html", {"name": name, "deleted": deleted}, status=404
        )
    events = newest_events(stream)
    checkpoint = Checkpoint.objects.filter(stream=stream).first()
    return render(
        request,
        "dashboard/stream.html",
        {
            "stream": stream,
            "events": events,
            "checkpoint": checkpoint,
            "gaps": Gap.objects.filter(stream=stream).order_by("-first_seq")[:100],
            "consumers": stream.consumers.filter(deleted_at__isnull=True).order_by("name"),
        },
    )


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page links: send them to the real one."""
    return redirect(static("favicon.svg"), permanent=True)


class Logout(auth_views.LogoutView):
    """Logging out takes a POST (the nav's button); a GET, say from a bookmark or a typed
    address, gets a page with that button instead of an empty 405."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, "logout.html")
