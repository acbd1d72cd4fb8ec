"""Replay and discard from the pages (issue #15): a dead letter's own buttons, the bulk
confirmation (a dry run first: how many go where), replay jobs with live progress and cancel.

Everything acts through dashboard/replays.py (idempotent, audited); operators and admins only
(`require("replay")`, `require("discard")`), a viewer sees no button and gets 403 here."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from dashboard import replays
from dashboard.models import DeadLetter, ReplayItem, ReplayJob
from dashboard.roles import require
from dashboard.search.filters import FilterError

JOB_TEMPLATE = "dashboard/replay.html"
JOB_PARTIALS = ("replay-progress", "replay-results")
RESULTS = 200  # rows of results on the job's page (all of them: the API's items)
FILTER_KEYS = replays.FILTER_KEYS


class ReplayForm(forms.Form):
    subject = forms.CharField(
        required=False, max_length=4096,
        help_text="Empty: each to its original subject. A subject with no stream behind it fails "
        "per message, and the dead letter stays new.",
    )  # fmt: skip
    mode = forms.ChoiceField(choices=ReplayJob.Mode.choices, initial="copy",
                             widget=forms.RadioSelect)  # fmt: skip
    rate = forms.CharField(
        required=False, label="Rate (messages a second)",
        help_text="1 to 10,000; empty: as fast as the server acknowledges.",
    )  # fmt: skip
    again = forms.BooleanField(
        required=False, label="Also those already replayed or discarded (a new attempt)"
    )

    def options(self) -> replays.Options | None:
        """The checked options, or None with the errors on the form."""
        if not self.is_valid():
            return None
        d = self.cleaned_data
        try:
            return replays.options(d["subject"], d["mode"], d["rate"], d["again"])
        except FilterError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
            return None


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=replays.MAX_REASON, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why no replay is needed: it goes on the dead letters and the audit log.",
    )  # fmt: skip


# -- one dead letter -----------------------------------------------------------------------
def _back(d: DeadLetter) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("dead-letter", args=[d.pk]) + "#actions")


def outcome(job: ReplayJob) -> tuple[int, str]:
    """A message level and text for how a single replay ended."""
    item = job.items.order_by("-id").first()
    if item is None:
        return messages.ERROR, "Nothing was replayed."
    if item.state == ReplayItem.State.PUBLISHED:
        copy = "the stream had it already: one copy kept" if item.duplicate else "stored"
        text = (
            f"Replayed to {item.subject}: {item.result_stream} sequence {item.result_seq} ({copy})."
        )
        if item.deleted_original:
            text += " The original was deleted from its stream."
        return messages.SUCCESS, text
    if item.state == ReplayItem.State.PENDING:
        return messages.WARNING, (
            f"Replay job {job.pk} could not finish now (NATS unreachable?): a tap's worker "
            "finishes it with the same message id."
        )
    status = item.dead_letter.status if item.dead_letter_id else "new"
    return (
        messages.ERROR,
        f"Not replayed: {item.error.rstrip('.')}. The dead letter stays {status}.",
    )


@require_POST
@require("replay")
def dead_letter_replay(request: HttpRequest, letter_id: int) -> HttpResponse:
    d = get_object_or_404(DeadLetter, pk=letter_id)
    form = ReplayForm(request.POST)
    opts = form.options()
    if opts is None:
        for field, errors in form.errors.items():
            text = " ".join(str(e) for e in errors)
            messages.error(request, text if field == "__all__" else f"{field}: {text}")
        return _back(d)
    try:
        job = replays.replay_one(request, d, opts)
    except FilterError as exc:
        messages.error(request, exc.message)
        return _back(d)
    level, text = outcome(job)
    messages.add_message(request, level, text)
    return _back(d)


@require_POST
@require("discard")
def dead_letter_discard(request: HttpRequest, letter_id: int) -> HttpResponse:
    d = get_object_or_404(DeadLetter, pk=letter_id)
    form = DiscardForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why it is discarded.")
        return _back(d)
    replays.discard(request, DeadLetter.objects.filter(pk=d.pk), form.cleaned_data["reason"])
    messages.success(request, "Discarded.")
    return _back(d)


# -- many: a confirmation with a dry run, then a job ----------------------------------------------
def _chosen(params: QueryDict) -> tuple[list[int] | None, dict[str, str]]:
    """The selection a request names: `scope=ids` with `id`s, else the filter's fields."""
    flt = {k: str(params.get(k)) for k in FILTER_KEYS if params.get(k)}
    if params.get("scope") == "filter":
        return None, flt
    try:
        ids = [int(v) for v in params.getlist("id") if v.strip()]
    except ValueError:
        raise FilterError("ids", "dead letter ids are whole numbers") from None
    return ids, flt


def _hidden(ids: list[int] | None, flt: dict[str, str]) -> list[tuple[str, str]]:
    if ids is not None:
        return [("scope", "ids"), *(("id", str(i)) for i in ids)]
    return [("scope", "filter"), *flt.items()]


def _list_url(flt: dict[str, str]) -> str:
    return reverse("dead-letters") + ("?" + urlencode(flt) if flt else "")


@require("replay")
def bulk_replay(request: HttpRequest) -> HttpResponse:
    params = request.POST if request.method == "POST" else request.GET
    form = ReplayForm(request.POST if request.method == "POST" else None,
                      initial={"mode": "copy"})  # fmt: skip
    error = None
    plan = None
    ids: list[int] | None = None
    flt: dict[str, str] = {}
    try:
        ids, flt = _chosen(params)
        opts = form.options() if request.method == "POST" else replays.options()
        again = bool(opts.again) if opts is not None else False
        rows, skipped = replays.selection(ids=ids, params=flt if ids is None else None, again=again)
        if request.method == "POST" and opts is not None and params.get("confirm"):
            chosen: dict[str, Any] = {"ids": ids} if ids is not None else {"filter": flt}
            job = replays.start(request, rows, opts, chosen)
            return HttpResponseRedirect(reverse("replay", args=[job.pk]))
        plan = replays.dry_run(rows, opts or replays.options(), skipped)
    except FilterError as exc:
        error = exc
    ctx = {"form": form, "plan": plan, "error": error, "hidden": _hidden(ids, flt),
           "ids": ids, "filter": flt, "back": _list_url(flt)}  # fmt: skip
    status = 400 if error is not None or (request.method == "POST" and form.errors) else 200
    return render(request, "dashboard/replay_confirm.html", ctx, status=status)


@require("discard")
def bulk_discard(request: HttpRequest) -> HttpResponse:
    params = request.POST if request.method == "POST" else request.GET
    form = DiscardForm(request.POST if request.method == "POST" else None)
    error = None
    count = 0
    ids: list[int] | None = None
    flt: dict[str, str] = {}
    try:
        ids, flt = _chosen(params)
        rows, _ = replays.selection(ids=ids, params=flt if ids is None else None)
        count = rows.count()
        if request.method == "POST" and form.is_valid():
            n = replays.discard(request, rows, form.cleaned_data["reason"])
            messages.success(request, f"Discarded {n} dead letter{'s' if n != 1 else ''}.")
            return HttpResponseRedirect(_list_url(flt))
    except FilterError as exc:
        error = exc
    ctx = {"form": form, "count": count, "error": error, "hidden": _hidden(ids, flt),
           "back": _list_url(flt)}  # fmt: skip
    status = 400 if error is not None or (request.method == "POST" and form.errors) else 200
    return render(request, "dashboard/discard_confirm.html", ctx, status=status)


# -- jobs ------------------------------------------------------------------------------------
@require("browse")
def replay_list(request: HttpRequest) -> HttpResponse:
    jobs = list(ReplayJob.objects.order_by("-id")[:100])
    return render(request, "dashboard/replays.html", {"jobs": jobs})


def job_context(job: ReplayJob) -> dict[str, Any]:
    results = list(job.items.select_related("dead_letter").order_by("position")[:RESULTS])
    elapsed = None
    if job.started_at is not None:
        end = job.finished_at or timezone.now()
        elapsed = max(0.0, (end - job.started_at).total_seconds())
    ended = job.published + job.failed
    return {
        "job": job, "results": results, "ended": ended,
        "percent": round(100 * ended / job.total) if job.total else 100,
        "elapsed": elapsed,
        "achieved": (ended / elapsed) if elapsed and ended else None,
        "active": job.state in (ReplayJob.State.PENDING, ReplayJob.State.RUNNING),
    }  # fmt: skip


@require("browse")
def replay_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(ReplayJob, pk=job_id)
    return render(request, JOB_TEMPLATE, job_context(job))


@require_POST
@require("replay")
def replay_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(ReplayJob, pk=job_id)
    job = replays.cancel(request, job)
    if job.state == ReplayJob.State.CANCELLED:
        messages.success(request, "Cancelled.")
    elif job.cancel_requested and job.state == ReplayJob.State.RUNNING:
        messages.success(request, "Cancelling: the worker stops after the batch in flight.")
    else:
        messages.info(request, f"The job had ended already ({job.state}).")
    return HttpResponseRedirect(reverse("replay", args=[job.pk]))


def replay_live_html(job_id: str) -> str | None:
    """Topic `replay:<id>`: the job page's progress and results, each root hx-swap-oob."""
    if not job_id.isdigit() or len(job_id) > 18:
        return None
    job = ReplayJob.objects.filter(pk=int(job_id)).first()
    if job is None:
        return None
    context = {**job_context(job), "oob": True}
    return "".join(render_to_string(f"{JOB_TEMPLATE}#{p}", context) for p in JOB_PARTIALS)
