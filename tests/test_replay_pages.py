"""Replay and discard from the pages (issue #15): who sees which button, the single replay's
answer, the bulk confirmation with its dry run, jobs and their cancel; HTML stays text."""

from __future__ import annotations

from typing import Any

from dashboard.models import AuditEntry, DeadLetter, ReplayJob
from tests.htmltree import parse
from tests.test_replay import _letter, _publish, _run, _setup


def ids_of(html: str) -> set[str]:
    return {str(e.attrs["id"]) for e in parse(html).elements() if "id" in e.attrs}


def test_a_viewer_sees_no_button_and_may_not_post(viewer_client):
    d = _letter("S", 1, "s.x", b"x")
    page = viewer_client.get(f"/dead-letters/{d.pk}/").content.decode()
    assert not {"actions", "replay-one", "discard-one"} & ids_of(page)
    posts = [f"/dead-letters/{d.pk}/replay/", f"/dead-letters/{d.pk}/discard/",
             "/dead-letters/replay/", "/dead-letters/discard/"]  # fmt: skip
    for url in posts:
        assert (
            viewer_client.post(url, {"scope": "ids", "id": d.pk, "reason": "x"}).status_code == 403
        )
    assert (
        viewer_client.get("/dead-letters/replay/", {"scope": "ids", "id": d.pk}).status_code == 403
    )
    d.refresh_from_db()
    assert d.status == "new" and not ReplayJob.objects.exists()


def test_an_operator_replays_one_and_sees_how_it_ended(operator, nats_server, unique, settings):
    settings.NATS_URL = nats_server.url
    url = nats_server.url
    stream, subject = f"PG_{unique}", f"pg.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    hostile = f"nowhere.{unique}.<img/src=x/onerror=alert(1)"  # no > or space: a subject
    seq = _run(_publish(url, f"{subject}.x", b"x", {}))
    d = _letter(stream, seq, f"{subject}.x", b"x")
    page = operator.get(f"/dead-letters/{d.pk}/").content.decode()
    assert {"replay-one", "discard-one", "no-replays"} <= ids_of(page)
    response = operator.post(f"/dead-letters/{d.pk}/replay/", {"mode": "copy"}, follow=True)
    html = response.content.decode()
    assert f"{stream} sequence {seq + 1} (stored)" in html
    assert "Replay again" in html and "replays" in ids_of(html)
    # to a subject no stream captures, and one holding HTML: a clear error, shown as text
    form = {"mode": "copy", "subject": hostile, "again": "on"}
    html = operator.post(f"/dead-letters/{d.pk}/replay/", form, follow=True).content.decode()
    assert "no stream captures the subject" in html and "<img/src" not in html
    assert "&lt;img/src=x/onerror=alert(1)" in html
    # a bad rate or subject is refused with its field named, nothing sent
    response = operator.post(f"/dead-letters/{d.pk}/replay/", {"mode": "copy", "subject": "a.*"},
                             follow=True)  # fmt: skip
    assert "subject: a replay goes to one subject" in response.content.decode()
    assert ReplayJob.objects.count() == 2


def test_bulk_replay_shows_a_dry_run_then_starts_a_job(operator, nats_server, unique, settings):
    settings.NATS_URL = nats_server.url
    url = nats_server.url
    stream, subject = f"BP_{unique}", f"bp.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    made = [_letter(stream, i, f"{subject}.a", b"a") for i in range(1, 4)]
    made.append(_letter(stream, 9, f"lost.{unique}", b"b"))
    params: dict[str, Any] = {"scope": "filter", "stream": stream}
    page = operator.get("/dead-letters/replay/", params)
    assert page.status_code == 200
    doc = parse(page.content.decode())
    rows = [r for r in doc.find_all("tr") if "data-stream" in r.attrs]
    assert [(r.attrs["data-stream"], r.text().split()[-1]) for r in rows] == [
        (stream, "3"), ("", "1")
    ]  # fmt: skip
    assert "no stream captures this subject" in page.content.decode()
    assert not ReplayJob.objects.exists()  # a dry run sends nothing
    started = operator.post("/dead-letters/replay/",
                            {**params, "mode": "copy", "rate": "50", "confirm": "1"})  # fmt: skip
    assert started.status_code == 302
    job = ReplayJob.objects.get()
    assert started["Location"] == f"/replays/{job.pk}/"
    assert (job.total, job.rate, job.selection) == (4, 50.0, {"filter": {"stream": stream}})
    page = operator.get(f"/replays/{job.pk}/").content.decode()
    assert {"replay-progress", "job-progress", "results", "cancel-job"} <= ids_of(page)
    cancelled = operator.post(f"/replays/{job.pk}/cancel/", follow=True).content.decode()
    assert "Cancelled." in cancelled
    assert ReplayJob.objects.get().state == "cancelled"
    listing = operator.get("/replays/").content.decode()
    assert f'data-id="{job.pk}"' in listing and 'data-state="cancelled"' in listing
    # ids chosen on the list, a bad rate: 400 naming it, nothing started
    bad = operator.post("/dead-letters/replay/",
                        {"scope": "ids", "id": [made[0].pk, made[1].pk], "rate": "0.5",
                         "mode": "copy", "confirm": "1"})  # fmt: skip
    assert bad.status_code == 400 and "from 1 to 10,000" in bad.content.decode()
    assert ReplayJob.objects.count() == 1


def test_bulk_discard_needs_a_reason_and_is_audited(operator):
    made = [_letter("D", i, "d.x", b"x") for i in range(1, 4)]
    params = {"scope": "ids", "id": [made[0].pk, made[2].pk]}
    page = operator.get("/dead-letters/discard/", params).content.decode()
    assert "<strong>2</strong> dead letters will be discarded" in page
    refused = operator.post("/dead-letters/discard/", {**params, "reason": ""})
    assert refused.status_code == 400
    done = operator.post("/dead-letters/discard/", {**params, "reason": "bad test data"})
    assert done.status_code == 302
    assert sorted(DeadLetter.objects.values_list("seq", "status")) == [
        (1, "discarded"), (2, "new"), (3, "discarded")
    ]  # fmt: skip
    assert AuditEntry.objects.get(action="deadletter.discard").detail["reason"] == "bad test data"
    # one, from its page
    d = made[1]
    operator.post(f"/dead-letters/{d.pk}/discard/", {"reason": "dup"})
    d.refresh_from_db()
    assert d.status == "discarded" and "olga: dup" in d.status_note


def test_a_selection_naming_no_dead_letter_says_so(operator):
    page = operator.get("/dead-letters/replay/", {"scope": "ids"})
    assert page.status_code == 400 and "select at least one dead letter" in page.content.decode()
    page = operator.get("/dead-letters/replay/", {"scope": "ids", "id": "x"})
    assert page.status_code == 400 and "whole numbers" in page.content.decode()
    assert operator.get("/replays/999/").status_code == 404
