"""Replaying and discarding dead letters from the web and the API (issue #15).

The pages (dashboard/pages/replays.py) and the API (dashboard/api/replays.py) both act only
through here; the callers check the role (`replay`, `discard`: operators and admins).

- `dry_run`: how many of a selection go where (each destination subject and the stream that
  captures it, asked of NATS), before anything is sent.
- `create_job`: a job in PostgreSQL with one item per dead letter, its destination and its
  `Nats-Msg-Id` fixed now (eventbus/replay.py says why that makes a replay idempotent). A tap's
  worker claims it at once (told on `<prefix>.replay.wake`) and runs it at its rate.
- `replay_one`: one dead letter, now: a job of one item that this process holds as it creates
  it and runs in the request, so the answer carries the publish acknowledgement.
- `cancel`, `discard`: as they say, each on the audit log.

Only `new` dead letters are taken unless `again` is asked: a retried request or a double click
then finds nothing left to do, and replaying one more time is a deliberate act (its attempt
number, so its `Nats-Msg-Id`, is new)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from psycopg.conninfo import make_conninfo

from dashboard import jetstream
from dashboard.audit import record
from dashboard.deadletters import filtered
from dashboard.models import AuditEntry, DeadLetter, ReplayItem, ReplayJob
from dashboard.search.filters import FilterError, parse_subject
from eventbus import admin, replay, subjects
from eventbus.deadletters import deadletters_changed_digest, digest_subject

log = logging.getLogger("flowscope.replays")

MAX_JOB = 100_000  # dead letters in one job: a larger selection is narrowed first
MAX_RATE = 10_000.0  # messages a second; above it, unthrottled is what one means
MAX_REASON = 2_000
MAX_DESTINATIONS = 50  # listed by a dry run (the rest are summed)
TIMEOUT = jetstream.TIMEOUT
LEASE = timedelta(seconds=replay.LEASE)  # a single replay's claim, held by the web process
# The subject a copy goes to by default: the original's (for a message of a dead-letter stream
# fed by RePublish, the subject it was first published on: its Nats-Subject header, kept as its
# subject when it was captured), so it does not land in the dead-letter stream again.
DEFAULT_SUBJECT = "d.subject"
FILTER_KEYS = ("stream", "consumer", "subject", "reason", "status", "since", "until")


@dataclass(frozen=True)
class Options:
    subject: str = ""  # "" = each one's original subject
    mode: str = ReplayJob.Mode.COPY
    rate: float | None = None  # messages a second; None = unthrottled
    again: bool = False  # also dead letters already replayed or discarded


@dataclass(frozen=True)
class Destination:
    subject: str
    count: int
    stream: str | None  # the stream that captures it; None: none does (they would fail)


@dataclass(frozen=True)
class DryRun:
    total: int
    destinations: list[Destination]
    more: int  # dead letters going to destinations not listed
    skipped: int  # selected but not new (already replayed or discarded), without `again`
    error: str = ""  # NATS could not be asked which streams capture the subjects


def options(subject: Any = "", mode: Any = "copy", rate: Any = None, again: Any = False) -> Options:
    """Checked options; FilterError names the field that cannot be used."""
    subject = str(subject or "").strip()
    if subject:
        subject = parse_subject(subject)
        if subjects.has_wildcard(subject):
            raise FilterError("subject", "a replay goes to one subject: no * or > wildcards")
    if mode not in ReplayJob.Mode.values:
        raise FilterError("mode", "copy or move")
    if rate in (None, "", 0, "0"):
        rate = None
    else:
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise FilterError("rate", "a number of messages a second") from None
        if not 1 <= rate <= MAX_RATE:
            raise FilterError("rate", f"from 1 to {MAX_RATE:,.0f} messages a second, or empty")
    return Options(subject, str(mode), rate, bool(again))


def selection(
    ids: Sequence[int] | None = None, params: Mapping[str, str] | None = None, again: bool = False
) -> tuple[QuerySet[DeadLetter], int]:
    """The dead letters to act on (oldest death first) and how many were left out because
    they are not new. Either ids or a filter (dashboard/deadletters.py's fields)."""
    if ids is not None:
        if not ids:
            raise FilterError("ids", "select at least one dead letter")
        if len(ids) > MAX_JOB:
            raise FilterError("ids", f"at most {MAX_JOB:,} at once")
        rows = DeadLetter.objects.filter(id__in=[int(i) for i in ids])
    elif params is not None:
        rows = filtered({k: v for k, v in params.items() if k in FILTER_KEYS})
    else:
        raise FilterError("ids", "give the dead letters' ids or a filter")
    skipped = 0
    if not again:
        skipped = rows.exclude(status=DeadLetter.Status.NEW).count()
        rows = rows.filter(status=DeadLetter.Status.NEW)
    return rows.order_by("died_at", "id"), skipped


def _ids(rows: QuerySet[DeadLetter]) -> list[int]:
    ids = list(rows.values_list("id", flat=True)[: MAX_JOB + 1])
    if len(ids) > MAX_JOB:
        raise FilterError("", f"more than {MAX_JOB:,} dead letters: narrow the filter")
    return ids


def _destinations(ids: list[int], subject: str) -> list[tuple[str, int]]:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT COALESCE(NULLIF(%s, ''), {DEFAULT_SUBJECT}) AS dest, count(*) "
            "FROM flowscope_deadletter d WHERE d.id = ANY(%s) GROUP BY 1 ORDER BY 2 DESC, 1",
            [subject, ids],
        )
        return [(str(r[0]), int(r[1])) for r in cur.fetchall()]


def dry_run(rows: QuerySet[DeadLetter], opts: Options, skipped: int = 0) -> DryRun:
    ids = _ids(rows)
    groups = _destinations(ids, opts.subject)
    listed, rest = groups[:MAX_DESTINATIONS], groups[MAX_DESTINATIONS:]
    streams: dict[str, str | None] = {}
    error = ""

    async def ask(a: admin.Admin) -> None:
        js = a.nc.jetstream()
        for dest, _ in listed:
            try:
                streams[dest] = await js.find_stream_name_by_subject(dest) if dest else None
            except nats.js.errors.NotFoundError:
                streams[dest] = None

    try:
        jetstream.call(ask)
    except (admin.AdminError, nats.errors.Error, TimeoutError) as exc:
        error = f"NATS could not be asked which streams capture these subjects: {exc}"
    return DryRun(
        total=len(ids),
        destinations=[Destination(d, n, streams.get(d)) for d, n in listed],
        more=sum(n for _, n in rest),
        skipped=skipped,
        error=error,
    )


def database_conninfo() -> str:
    """Django's own database, for a connection of the replay's (psycopg, async)."""
    s = connection.settings_dict
    return make_conninfo(
        host=s["HOST"] or None, port=s["PORT"] or None, dbname=s["NAME"],
        user=s["USER"] or None, password=s["PASSWORD"] or None,
        **{k: str(v) for k, v in (s.get("OPTIONS") or {}).items() if isinstance(v, str | int)},
    )  # fmt: skip


def _user_fields(request: HttpRequest | None) -> tuple[Any, str]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None, ""
    return user, user.get_username()


def create_job(
    request: HttpRequest | None,
    rows: QuerySet[DeadLetter],
    opts: Options,
    chosen: dict[str, Any],
    hold_by: str = "",
) -> ReplayJob:
    """The job and its items, in one transaction. `hold_by`: a worker name that holds it from
    the start (the web's single replay), else it waits for a tap's worker."""
    ids = _ids(rows)
    if not ids:
        raise FilterError("", "no dead letter to replay: the selection is empty (or not new)")
    user, username = _user_fields(request)
    now = timezone.now()
    with transaction.atomic():
        job = ReplayJob.objects.create(
            created_at=now, user=user, username=username, mode=opts.mode, subject=opts.subject,
            rate=opts.rate, selection=chosen, total=len(ids),
            state=ReplayJob.State.RUNNING if hold_by else ReplayJob.State.PENDING,
            worker=hold_by, lease_until=now + LEASE if hold_by else None,
            started_at=now if hold_by else None,
        )  # fmt: skip
        with connection.cursor() as cur:
            # attempt = how many times each was published before: part of its Nats-Msg-Id
            cur.execute(
                f"""
                INSERT INTO flowscope_replayitem (job_id, position, dead_letter_id, attempt,
                    msg_id, subject, state, result_stream, result_seq, duplicate,
                    deleted_original, error, ended_at)
                SELECT %s, o.n, d.id, a.n, 'flowscope-replay:' || d.id || ':' || a.n,
                       COALESCE(NULLIF(%s, ''), {DEFAULT_SUBJECT}), 'pending', '', NULL, false,
                       NULL, '', NULL
                FROM unnest(%s::bigint[]) WITH ORDINALITY AS o(id, n)
                JOIN flowscope_deadletter d ON d.id = o.id
                CROSS JOIN LATERAL (SELECT count(*) AS n FROM flowscope_replayitem p
                    WHERE p.dead_letter_id = d.id AND p.state = 'published') a
                """,
                [job.id, opts.subject, ids],
            )
        record(request, "replay.create", f"replay job {job.id}",
               detail={"job": job.id, "total": job.total, "mode": opts.mode,
                       "subject": opts.subject or None, "rate": opts.rate, **chosen})  # fmt: skip
    return job


def _publish(subject: str, body: bytes) -> str | None:
    """One core NATS message on a connection of the request's own; why not, if it failed."""

    async def send(a: admin.Admin) -> None:
        await a.nc.publish(subject, body)
        await a.nc.flush(timeout=TIMEOUT)

    try:
        jetstream.call(send)
    except (admin.AdminError, nats.errors.Error, TimeoutError) as exc:
        return str(exc)
    return None


def wake() -> None:
    """Tell the taps' workers a job waits (they also look every second)."""
    failed = _publish(f"{settings.FLOWSCOPE_SUBJECT_PREFIX}.replay.wake", b"")
    if failed:
        log.warning("replay: workers not woken (%s); they find the job within a second", failed)


def start(
    request: HttpRequest | None, rows: QuerySet[DeadLetter], opts: Options, chosen: dict[str, Any]
) -> ReplayJob:
    job = create_job(request, rows, opts, chosen)
    wake()
    return job


def replay_one(request: HttpRequest | None, d: DeadLetter, opts: Options) -> ReplayJob:
    """Replay one dead letter now; the job (of one item) tells how it ended. A dead letter
    already replayed or discarded, without `again`: its last job, untouched."""
    if d.status != DeadLetter.Status.NEW and not opts.again:
        last = ReplayJob.objects.filter(items__dead_letter=d).order_by("-id").first()
        if last is not None:
            return last
        raise FilterError("again", f"this dead letter is {d.status}: ask to replay it again")
    worker = replay.worker_name("web")
    rows = DeadLetter.objects.filter(pk=d.pk)
    job = create_job(request, rows, opts, {"ids": [d.pk]}, hold_by=worker)

    async def run(a: admin.Admin) -> None:
        async with await psycopg.AsyncConnection.connect(
            database_conninfo(), application_name="flowscope-web-replay",
            connect_timeout=int(TIMEOUT),
        ) as db:  # fmt: skip
            runner = replay.Runner(db, a.nc, worker, settings.FLOWSCOPE_SUBJECT_PREFIX)
            await replay.run_claimed(runner, await runner.load(job.id))

    try:
        jetstream.call(run)
    except (admin.AdminError, nats.errors.Error, TimeoutError, OSError) as exc:
        # NATS went away mid-way: the job is held until its lease runs out, then a tap's
        # worker resumes it (same Nats-Msg-Id: one copy whatever was sent).
        log.warning("replay job %d: not finished in the request (%s); a worker resumes it",
                    job.id, exc)  # fmt: skip
    job.refresh_from_db()
    return job


def cancel(request: HttpRequest | None, job: ReplayJob) -> ReplayJob:
    """Ask the worker to stop after its current batch; a job not started yet ends at once."""
    with transaction.atomic():
        job = ReplayJob.objects.select_for_update().get(pk=job.pk)
        if job.state in (ReplayJob.State.DONE, ReplayJob.State.CANCELLED):
            return job
        job.cancel_requested = True
        if job.state == ReplayJob.State.PENDING:
            job.state = ReplayJob.State.CANCELLED
            job.finished_at = timezone.now()
            job.items.filter(state=ReplayItem.State.PENDING).update(
                state=ReplayItem.State.CANCELLED, ended_at=job.finished_at
            )
        job.save()
        record(request, "replay.cancel", f"replay job {job.pk}",
               detail={"job": job.pk, "state": job.state, "published": job.published,
                       "failed": job.failed, "total": job.total})  # fmt: skip
    return job


def discard(request: HttpRequest | None, rows: QuerySet[DeadLetter], reason: str) -> int:
    """Mark dead letters resolved, with a reason; how many were."""
    reason = (reason or "").strip()
    if not reason:
        raise FilterError("reason", "say why they are discarded")
    if len(reason) > MAX_REASON or "\x00" in reason:
        raise FilterError("reason", f"at most {MAX_REASON:,} characters, no NUL")
    ids = _ids(rows)
    _, username = _user_fields(request)
    note = f"discarded by {username or 'flowscope'}: {reason}"
    with transaction.atomic():
        chosen = DeadLetter.objects.filter(id__in=ids)
        changed: Counter[tuple[str, str, str]] = Counter(
            (s, c, DeadLetter.Status.DISCARDED.value)
            for s, c in chosen.exclude(status=DeadLetter.Status.DISCARDED).values_list(
                "stream_name", "consumer"
            )
        )
        n = chosen.update(status=DeadLetter.Status.DISCARDED, status_note=note)
        record(request, "deadletter.discard", f"{n} dead letter{'s' if n != 1 else ''}",
               detail={"count": n, "reason": reason, "ids": ids[:1000]},
               result=AuditEntry.Result.OK)  # fmt: skip
    if changed:
        announce(deadletters_changed_digest(changed))
    return n


def announce(digest: bytes) -> None:
    """A dead-letter digest for the live pages of every web process (after the commit)."""
    failed = _publish(digest_subject(str(settings.FLOWSCOPE_SUBJECT_PREFIX)), digest)
    if failed:
        log.warning("dead letters: change not announced (%s); pages catch up within 5 s", failed)
