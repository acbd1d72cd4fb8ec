"""Replaying dead letters in a real browser (issue #15): an operator ticks dead letters on the
list, confirms a bulk replay after its dry run, and watches the job's progress bar move without a
reload until every copy is stored (and really is, in the stream); a slower job is cancelled from
its page and what was not sent stays new; a viewer sees no way to act; a single replay from a
dead letter's page says where the copy went and lists it. Real Daphne, a real tap process (its
replay worker runs the jobs), nats-server, PostgreSQL and chromium; the dead letters are rows
pointing at real messages of a real stream (tests/test_replay.py tests their capture)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from dashboard.models import DeadLetter, ReplayItem, ReplayJob
from tests.conftest import ARTIFACTS
from tests.taputil import tap_process
from tests.test_browser_live import _wait
from tests.test_browser_streams import _log_in
from tests.test_replay import _letter, _letters, _messages, _publish, _run, _setup
from tests.webutil import cards_fit

pytestmark = pytest.mark.browser

PASSWORD = "a-long-password-1"


def _user(name: str, role: str) -> tuple[str, str]:
    user = User.objects.create_user(name, password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return name, PASSWORD


@pytest.fixture
def olga(transactional_db: None) -> tuple[str, str]:
    """Olga is an operator: she may replay and discard dead letters."""
    return _user("olga", "operator")


@pytest.fixture
def vera(transactional_db: None) -> tuple[str, str]:
    """Vera is a viewer: she browses."""
    return _user("vera", "viewer")


def _shot(page: Any, name: str, narrow: bool = True) -> None:
    """test-artifacts/<name>-1280.png and, laid out anew at a phone's width, <name>-390.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-1280.png"), full_page=True)
    if narrow:
        page.set_viewport_size({"width": 390, "height": 844})
        cards_fit(page, at_least=0)  # tables of rows (jobs, dead letters) laid out as cards
        page.screenshot(path=str(ARTIFACTS / f"{name}-390.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 800})


def _bar(page: Any) -> tuple[int, int, str]:
    """(value, max) of the job's progress bar and the job's state, as shown now (read at once:
    a push swaps both)."""
    value, top, state = page.eval_on_selector(
        "#replay-progress",
        "s => { const p = s.querySelector('#job-progress');"
        " return [p.value, p.max, s.querySelector('#job-state').textContent.trim()]; }",
    )
    return int(value), int(top), str(state)


# Read in the page every 50 ms (a screenshot taken meanwhile does not stop it): each change of
# the bar, with the time since the sampler started.
SAMPLER = """() => {
  const seen = window.__progress = [];
  const t0 = performance.now();
  window.setInterval(() => {
    const p = document.getElementById("job-progress");
    const v = p ? Number(p.value) : null;
    if (!seen.length || seen[seen.length - 1][1] !== v) {
      seen.push([Math.round(performance.now() - t0) / 1000, v]);
    }
  }, 50);
}"""


def _watch(page: Any, until: Any, timeout: float, shot: str | None = None) -> list[int]:
    """The progress bar's values, as the page showed them, until `until(value, max, state)`;
    a screenshot named `shot` the first time it is part way."""
    page.evaluate(SAMPLER)
    deadline = time.monotonic() + timeout
    while True:
        value, top, state = _bar(page)
        if shot and 0 < value < top:
            _shot(page, shot, narrow=False)  # (the job is short: one shot)
            shot = None
        if until(value, top, state):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"progress {_bar(page)}: not ended in {timeout}s")
        time.sleep(0.05)
    page.wait_for_timeout(100)  # the sampler's last reading
    changes = page.evaluate("window.__progress")
    print(f"progress (s, value): {changes}")
    return [int(v) for _, v in changes]


def _tick(page: Any, ids: list[int]) -> None:
    for i in ids:
        page.check(f'#dead-letters tr[data-id="{i}"] input.pick')


def _confirm(page: Any, button: str, rate: str) -> int:
    """On the list: the bulk button `button` leads to the confirmation's dry run; a rate is
    set and the job started. Returns the job's id, from the page it lands on."""
    page.click(button)
    page.wait_for_url("**/dead-letters/replay/?**")
    assert page.locator("#start-replay").is_enabled()
    page.fill("#id_rate", rate)
    page.click("#start-replay")
    page.wait_for_url("**/replays/*/")
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def test_an_operator_replays_the_matching_dead_letters_and_watches_the_job_finish_live(
    web, page, olga, nats_server, database_url, unique, tmp_path
):
    url = nats_server.url
    stream, subject = f"BR_{unique}", f"br.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    letters = _letters(url, stream, subject, 60)
    tap = tap_process(url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, olga)
        page.goto(f"{web}/dead-letters/?stream={stream}")
        assert page.locator("#dead-letters input.pick").count() == 60
        assert page.locator("#replay-selected").is_disabled()
        _tick(page, [letters[0].pk, letters[5].pk, letters[9].pk])
        assert page.inner_text("#selected-count") == "3 selected."
        assert page.locator("#replay-selected").is_enabled()
        _shot(page, "replay-list-operator")

        # the three ticked: the dry run counts them, destination and stream; nothing sent
        page.click("#replay-selected")
        page.wait_for_url("**/dead-letters/replay/?**")
        assert page.locator("#dry-run-total strong").inner_text() == "3"
        assert not ReplayJob.objects.exists()
        page.go_back()

        # every one the filter matches: 60, to their own subject, stored by their stream
        page.click("#replay-all")
        page.wait_for_url("**/dead-letters/replay/?**")
        assert "Every dead letter matching the filter" in page.inner_text("header.page-head")
        rows = page.eval_on_selector_all(
            "#destinations tbody tr",
            "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))",
        )
        assert rows == [[f"{subject}.orig", stream, "60"]]
        assert page.inner_text("#dry-run-total").startswith("60 dead letters would be replayed")
        _shot(page, "replay-confirm")
        page.fill("#id_rate", "20")
        page.click("#start-replay")
        page.wait_for_url("**/replays/*/")
        job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
        page.evaluate("window.__sameDocument = true")

        seen = _watch(page, lambda v, top, state: state == "done", 30, shot="replay-job-midway")
        value, top, _ = _bar(page)
        assert (value, top) == (60, 60)
        assert seen == sorted(seen), f"the bar went back: {seen}"
        moving = [v for v in seen if 0 < v < 60]
        assert len(moving) >= 3, f"the bar did not move while the job ran: {seen}"
        assert page.evaluate("window.__sameDocument") is True, "the job page reloaded"
        assert page.inner_text("#job-published") == "60"
        assert page.inner_text("#job-failed") == "0"
        assert page.locator("#results tbody tr[data-state=published]").count() == 60
        assert page.locator("#cancel-job").is_hidden()  # nothing left to cancel
        _shot(page, "replay-job-done")

        job = ReplayJob.objects.get(pk=job_id)
        assert (job.state, job.total, job.published, job.failed, job.rate) == (
            "done", 60, 60, 0, 20.0
        )  # fmt: skip
        # the rate held: 60 at 20 a second take about three seconds
        assert job.finished_at is not None and job.started_at is not None
        assert (job.finished_at - job.started_at).total_seconds() >= 2.5
        copies = [m for m in _run(_messages(url, stream)) if m.headers]
        origins = sorted(m.headers["Flowscope-Replay-Of"] for m in copies)
        assert origins == sorted(f"{stream}:{d.seq}" for d in letters)  # each once
        assert {m.data for m in copies} == {d.payload for d in letters}
        assert not DeadLetter.objects.filter(stream_name=stream).exclude(status="replayed")

        page.goto(f"{web}/replays/")
        row = page.locator(f'#jobs tr[data-id="{job_id}"]')
        assert row.get_attribute("data-state") == "done"
        _shot(page, "replay-jobs")
    finally:
        tap.terminate()
        tap.wait(30)


def test_an_operator_cancels_a_running_job_from_its_page(
    web, page, olga, nats_server, database_url, unique, tmp_path
):
    url = nats_server.url
    stream, subject = f"BC_{unique}", f"bc.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    _letters(url, stream, subject, 60)
    tap = tap_process(url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, olga)
        page.goto(f"{web}/dead-letters/?stream={stream}")
        page.check("#dead-letters .pick-all")
        assert page.inner_text("#selected-count") == "60 selected."
        job_id = _confirm(page, "#replay-selected", "5")
        _watch(page, lambda v, top, state: v >= 5, 30)
        _shot(page, "replay-job-running")
        page.click("#cancel-job")
        page.wait_for_url(f"**/replays/{job_id}/")
        page.evaluate("window.__sameDocument = true")
        assert "Cancel" in page.inner_text(".flash")  # "Cancelling: …" (or "Cancelled.")
        _wait(lambda: page.inner_text("#job-state") == "cancelled", 15, "cancelled, live")
        assert page.evaluate("window.__sameDocument") is True, "the job page reloaded"
        assert page.locator("#cancel-job").is_hidden()
        assert "what was not sent stays new" in page.inner_text("#job-note")
        _shot(page, "replay-job-cancelled")
    finally:
        tap.terminate()
        tap.wait(30)
    job = ReplayJob.objects.get(pk=job_id)
    assert job.state == "cancelled" and 5 <= job.published < 60 and job.failed == 0
    assert page.inner_text("#job-published") == str(job.published)
    assert DeadLetter.objects.filter(stream_name=stream, status="new").count() == 60 - job.published
    assert ReplayItem.objects.filter(job=job, state="cancelled").count() == 60 - job.published
    copies = [m for m in _run(_messages(url, stream)) if m.headers]
    assert len(copies) == job.published


def test_a_viewer_sees_no_way_to_replay_or_discard(web, page, vera, olga, unique):
    stream = f"BV_{unique}"
    d = _letter(stream, 1, f"bv.{unique}.x", b"x")
    job = ReplayJob.objects.create(
        created_at=timezone.now(), user=User.objects.get(username="olga"), username="olga",
        total=1, state=ReplayJob.State.RUNNING, selection={"ids": [d.pk]},
    )  # fmt: skip
    _log_in(page, web, vera)
    page.goto(f"{web}/dead-letters/?stream={stream}")
    assert page.locator(f'#dead-letters tr[data-id="{d.pk}"]').count() == 1
    # (the live push's hidden staging rows, #dl-incoming, are the same for every reader: the
    # list drops their boxes when it shows them to a viewer)
    _wait(lambda: page.locator("#live-status").get_attribute("data-state") == "live", 10, "live")
    for absent in ("#dead-letters input.pick", "#dead-letters .pick-all", "#dead-letter-actions",
                   "#replay-selected", "#replay-all", "#discard-selected", "#discard-all",
                   "#dead-letters th.pick", "#dead-letters td.pick"):  # fmt: skip
        assert page.locator(absent).count() == 0, absent
    page.goto(f"{web}/dead-letters/{d.pk}/")
    for absent in ("#actions", "#replay-one", "#discard-one", "#replay-button"):
        assert page.locator(absent).count() == 0, absent
    assert page.locator("#no-replays").count() == 1  # the history, read-only, is there
    page.goto(f"{web}/replays/{job.pk}/")
    assert page.locator("#job-progress").count() == 1 and page.locator("#cancel-job").count() == 0


def test_an_operator_replays_one_from_its_page_and_sees_where_it_went(
    web, page, olga, nats_server, unique
):
    url = nats_server.url
    stream, subject = f"BO_{unique}", f"bo.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    seq = _run(_publish(url, f"{subject}.x", b'{"order": 7}', {"X-Order": "7"}))
    d = _letter(stream, seq, f"{subject}.x", b'{"order": 7}', headers={"X-Order": "7"})
    _log_in(page, web, olga)
    page.goto(f"{web}/dead-letters/{d.pk}/")
    assert page.inner_text("#no-replays") == "Not replayed yet."
    _shot(page, "replay-dead-letter-before")
    page.click("#replay-button")
    page.wait_for_url(f"**/dead-letters/{d.pk}/#actions")
    flash = page.inner_text(".flash")
    assert f"Replayed to {subject}.x: {stream} sequence {seq + 1} (stored)." in flash
    rows = page.locator("#replays tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-state") == "published"
    cells = rows.first.locator("td")
    assert cells.nth(3).inner_text() == stream and cells.nth(4).inner_text() == str(seq + 1)
    assert cells.nth(5).inner_text() == f"{subject}.x"
    assert page.inner_text("#status") == "replayed"
    assert page.inner_text("#replay-button") == "Replay again"
    assert page.locator("#discard-one").count() == 0  # resolved: nothing to discard
    # once more, on purpose, to a subject no stream captures: it says why, and the history
    # lists both attempts, newest first
    page.fill("#replay-one #id_subject", f"nowhere.{unique}")
    page.click("#replay-button")
    page.wait_for_url(f"**/dead-letters/{d.pk}/#actions")
    assert "Not replayed: no stream captures the subject" in page.inner_text(".flash")
    states = page.eval_on_selector_all(
        "#replays tbody tr", "rows => rows.map(r => r.dataset.state)"
    )
    assert sorted(states) == ["failed", "published"]
    _shot(page, "replay-dead-letter-after")
    copy = _run(_messages(url, stream))[-1]
    assert copy.seq == seq + 1 and copy.data == b'{"order": 7}'
    assert copy.headers["Flowscope-Replay-Of"] == f"{stream}:{seq}"
    assert copy.headers["Flowscope-Replayed-By"] == "olga" and copy.headers["X-Order"] == "7"
