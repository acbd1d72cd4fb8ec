"""Managing streams and consumers from the dashboard (issue #14): admins only.

Each page is a plain form: GET shows it (filled from the server's current configuration when
editing), POST validates, asks the server through dashboard/jetstream.py (audited there), and
either redirects with a message or shows the form again, as typed, with every error next to its
field. NATS unreachable is an error at the top of the form (status 503), never a 500.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dashboard import jetstream
from dashboard.forms import (
    ConfirmForm,
    ConsumerForm,
    ManageForm,
    MessageDeleteForm,
    PauseForm,
    PurgeForm,
    StreamForm,
)
from dashboard.jetstream import AdminError
from dashboard.models import Consumer
from dashboard.roles import require
from eventbus.admin import rfc3339

T = "dashboard/manage/"
GET_POST = require_http_methods(["GET", "POST"])


def _failed(form: ManageForm, error: AdminError) -> int:
    """Put the error on the form; the status to answer with."""
    form.add_errors(error)
    return error.status if error.status != 404 else 400


def _stream_url(name: str) -> str:
    return reverse("stream", args=[name])


def _consumer_url(stream: str, name: str) -> str:
    return reverse("consumer", args=[stream, name])


def _show(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    return render(request, T + template, context, status=status)


def _missing(request: HttpRequest, stream: str, consumer: str | None = None) -> HttpResponse | None:
    """Before showing a form that acts on a stream or consumer: the page that says it is not
    there (404) or NATS is unreachable (503), or None when it is there."""
    try:
        if consumer is None:
            jetstream.stream_info(stream)
        else:
            jetstream.consumer_info(stream, consumer)
    except AdminError as exc:
        return _unavailable(request, exc, _stream_url(stream) if consumer else reverse("overview"))
    return None


def _remember_pause(stream: str, consumer: str, until: datetime | None) -> None:
    """The stored configuration says at once what the server now does (the tap's next sample,
    within FLOWSCOPE_LAG_INTERVAL, writes the server's own), so the page offers the right
    action on the redirect already."""
    found = Consumer.objects.filter(stream__name=stream, stream__deleted_at__isnull=True,
                                    name=consumer, deleted_at__isnull=True)  # fmt: skip
    for row in found:
        config = dict(row.config) if isinstance(row.config, dict) else {}
        config.pop("pause_until", None)
        if until is not None:
            config["pause_until"] = rfc3339(until)
        row.config = config
        row.save(update_fields=["config"])


def _unavailable(request: HttpRequest, error: AdminError, back: str) -> HttpResponse:
    """The server could not give what a form starts from (the configuration to edit)."""
    return _show(request, "unavailable.html", {"error": error, "back": back}, status=error.status)


@require("manage")
@GET_POST
def stream_new(request: HttpRequest) -> HttpResponse:
    form = StreamForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.create_stream(request, form.to_config())
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                name = form.cleaned_data["name"]
                messages.success(
                    request,
                    f"Stream {name} created. It shows here as soon as "
                    "the tap records it (a few seconds).",
                )
                return redirect("overview")
    return _show(request, "stream_form.html", {"form": form, "editing": False}, status)


@require("manage")
@GET_POST
def stream_edit(request: HttpRequest, name: str) -> HttpResponse:
    try:
        info = jetstream.stream_info(name)
    except AdminError as exc:
        return _unavailable(request, exc, reverse("overview"))
    initial = StreamForm.initial_from(info["config"])
    form = StreamForm(request.POST or None, initial=initial, editing=True)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.update_stream(request, name, form.changes())
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(request, f"Stream {name} updated.")
                return redirect(_stream_url(name))
    ctx = {"form": form, "editing": True, "name": name, "config": info["config"]}
    return _show(request, "stream_form.html", ctx, status)


@require("manage")
@GET_POST
def stream_purge(request: HttpRequest, name: str) -> HttpResponse:
    if request.method == "GET" and (missing := _missing(request, name)):
        return missing
    form = PurgeForm(request.POST or None, expected=name)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                purged = jetstream.purge_stream(request, name, **form.purge_args())
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(
                    request, f"Purged {purged:,} message{'s' * (purged != 1)} from {name}."
                )
                return redirect(_stream_url(name))
    return _show(request, "purge.html", {"form": form, "name": name}, status)


@require("manage")
@GET_POST
def stream_delete(request: HttpRequest, name: str) -> HttpResponse:
    if request.method == "GET" and (missing := _missing(request, name)):
        return missing
    form = ConfirmForm(request.POST or None, expected=name)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.delete_stream(request, name)
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(request, f"Stream {name} deleted, with its messages.")
                return redirect("overview")
    ctx = {
        "form": form,
        "what": "stream",
        "name": name,
        "back": _stream_url(name),
        "action": reverse("stream-delete", args=[name]),
    }
    return _show(request, "confirm_delete.html", ctx, status)


@require("manage")
@GET_POST
def message_delete(request: HttpRequest, name: str) -> HttpResponse:
    form = MessageDeleteForm(request.POST or None, initial={"seq": request.GET.get("seq")})
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            seq = form.cleaned_data["seq"]
            try:
                jetstream.delete_message(request, name, seq)
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(request, f"Message {seq:,} deleted from {name}.")
                return redirect(_stream_url(name))
    return _show(request, "message_delete.html", {"form": form, "name": name}, status)


@require("manage")
@GET_POST
def consumer_new(request: HttpRequest, name: str) -> HttpResponse:
    form = ConsumerForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.create_consumer(request, name, form.to_config())
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(
                    request,
                    f"Consumer {form.cleaned_data['name']} created on "
                    f"{name}; the tap samples it within seconds.",
                )
                return redirect(_stream_url(name))
    ctx = {"form": form, "editing": False, "stream": name}
    return _show(request, "consumer_form.html", ctx, status)


@require("manage")
@GET_POST
def consumer_edit(request: HttpRequest, name: str, consumer: str) -> HttpResponse:
    try:
        info = jetstream.consumer_info(name, consumer)
    except AdminError as exc:
        return _unavailable(request, exc, _stream_url(name))
    initial = ConsumerForm.initial_from(info["config"])
    form = ConsumerForm(request.POST or None, initial=initial, editing=True)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.update_consumer(request, name, consumer, form.changes())
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(request, f"Consumer {consumer} updated.")
                return redirect(_consumer_url(name, consumer))
    ctx = {"form": form, "editing": True, "stream": name, "consumer": consumer}
    return _show(request, "consumer_form.html", ctx, status)


@require("manage")
@GET_POST
def consumer_pause(request: HttpRequest, name: str, consumer: str) -> HttpResponse:
    if request.method == "GET" and (missing := _missing(request, name, consumer)):
        return missing
    form = PauseForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            until = datetime.now(UTC) + timedelta(
                microseconds=form.cleaned_data["pause_for"] / 1000
            )
            try:
                jetstream.pause_consumer(request, name, consumer, until)
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                _remember_pause(name, consumer, until)
                messages.success(
                    request, f"Consumer {consumer} paused until {until:%Y-%m-%d %H:%M:%S} UTC."
                )
                return redirect(_consumer_url(name, consumer))
    ctx = {"form": form, "stream": name, "consumer": consumer}
    return _show(request, "pause.html", ctx, status)


@require("manage")
@require_POST
def consumer_resume(request: HttpRequest, name: str, consumer: str) -> HttpResponse:
    try:
        jetstream.resume_consumer(request, name, consumer)
    except AdminError as exc:
        return _unavailable(request, exc, _consumer_url(name, consumer))
    _remember_pause(name, consumer, None)
    messages.success(request, f"Consumer {consumer} resumed.")
    return redirect(_consumer_url(name, consumer))


@require("manage")
@GET_POST
def consumer_delete(request: HttpRequest, name: str, consumer: str) -> HttpResponse:
    if request.method == "GET" and (missing := _missing(request, name, consumer)):
        return missing
    form = ConfirmForm(request.POST or None, expected=consumer)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                jetstream.delete_consumer(request, name, consumer)
            except AdminError as exc:
                status = _failed(form, exc)
            else:
                messages.success(request, f"Consumer {consumer} deleted from {name}.")
                return redirect(_stream_url(name))
    ctx = {
        "form": form,
        "what": "consumer",
        "name": consumer,
        "stream": name,
        "back": _consumer_url(name, consumer),
        "action": reverse("consumer-delete", args=[name, consumer]),
    }
    return _show(request, "confirm_delete.html", ctx, status)
