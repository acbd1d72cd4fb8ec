"""Managing streams and consumers (issue #14): the pages and the API against a real nats-server
and PostgreSQL. Personas as in test_roles: nobody, vera the viewer, oscar the operator, alice the
admin. What the server holds is read back with plain JetStream API requests, not through the
code under test."""

# ruff: noqa: F811  (the personas fixture, imported from test_roles, is a parameter)
from __future__ import annotations

import asyncio
import html
import json
import re
import threading
from typing import Any
from urllib.parse import quote

import nats
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard.models import AuditEntry
from eventbus.embedded import EmbeddedNats
from tests.test_roles import client_for, fast_hashing, people  # noqa: F401 (fixtures)


def run(coro: Any) -> Any:
    """A coroutine's result, run in a thread of its own (the test client is sync)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    t.start()
    t.join(30)
    return out[0]


async def _ask(url: str, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        msg = await nc.request(f"$JS.API.{subject}", payload, timeout=5)
        return dict(json.loads(msg.data))
    finally:
        await nc.close()


def ask(url: str, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(run(_ask(url, subject, body)))


async def _publish(url: str, subjects: list[str]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for s in subjects:
        await js.publish(s, b"x")
    await nc.close()


def publish(url: str, subjects: list[str]) -> None:
    run(_publish(url, subjects))


@pytest.fixture
def nats_url(nats_server: EmbeddedNats, settings: Any) -> str:
    settings.NATS_URL = nats_server.url
    return nats_server.url


@pytest.fixture
def alice(people: dict[str, User]) -> Client:
    return client_for(people["alice"])


def stream_form(name: str, subjects: str, /, **over: Any) -> dict[str, Any]:
    form = {"name": name, "subjects": subjects, "retention": "limits", "storage": "memory",
            "num_replicas": "1", "max_age": "", "max_bytes": "", "max_msgs": "",
            "max_msg_size": "", "max_msgs_per_subject": "", "discard": "old",
            "duplicate_window": "", "description": ""}  # fmt: skip
    form.update(over)
    return form


def field_errors(response: Any) -> dict[str, str]:
    """The field errors a form page shows: {field: message}."""
    found = re.findall(
        r'class="error field-error" data-field="([^"]+)" role="alert">([^<]*)<',
        response.content.decode(),
    )
    return {field: html.unescape(message) for field, message in found}


def audit_rows(target: str | None = None) -> list[tuple[str, str]]:
    rows = AuditEntry.objects.exclude(action__startswith="log").order_by("id")
    if target:
        rows = rows.filter(target__contains=target)
    return list(rows.values_list("action", "result"))


# --- the pages ---------------------------------------------------------------------------------


def test_an_admin_creates_edits_purges_and_deletes_a_stream(
    nats_url: str, alice: Client, unique: str
) -> None:
    name = f"M_{unique}"
    r = alice.post("/streams/new/", stream_form(name, f"m.{unique}.*\nother.{unique}",
                                                 max_age="2h", max_bytes="10MiB",
                                                 description="made here"))  # fmt: skip
    assert r.status_code == 302, field_errors(r)
    config = ask(nats_url, f"STREAM.INFO.{name}")["config"]
    assert config["subjects"] == [f"m.{unique}.*", f"other.{unique}"]
    assert config["max_age"] == 2 * 3600 * 10**9 and config["max_bytes"] == 10 * 1024**2
    assert config["storage"] == "memory" and config["description"] == "made here"
    assert "created" in alice.get("/").content.decode()  # the message, on the overview

    page = alice.get(f"/streams/{name}/edit/").content.decode()
    assert "10MiB" in page and "2h" in page  # the current configuration, as typed
    r = alice.post(f"/streams/{name}/edit/", stream_form(name, f"m.{unique}.*", max_msgs="100"))
    assert r.status_code == 302, field_errors(r)
    config = ask(nats_url, f"STREAM.INFO.{name}")["config"]
    assert config["max_msgs"] == 100 and config["subjects"] == [f"m.{unique}.*"]

    publish(nats_url, [f"m.{unique}.a"] * 5 + [f"m.{unique}.b"] * 5)
    purge = {"confirm": name}
    r = alice.post(f"/streams/{name}/purge/", {**purge, "mode": "subject",
                                               "subject": f"m.{unique}.a"})  # fmt: skip
    assert r.status_code == 302
    assert ask(nats_url, f"STREAM.INFO.{name}")["state"]["messages"] == 5
    r = alice.post(f"/streams/{name}/purge/", {**purge, "mode": "keep", "keep": "3"})
    assert ask(nats_url, f"STREAM.INFO.{name}")["state"]["messages"] == 3
    r = alice.post(f"/streams/{name}/messages/delete/", {"seq": "9"})
    assert r.status_code == 302
    assert ask(nats_url, f"STREAM.INFO.{name}")["state"]["messages"] == 2
    r = alice.post(f"/streams/{name}/messages/delete/", {"seq": "9"})  # gone already
    assert r.status_code == 400 and "seq" in field_errors(r)
    r = alice.post(f"/streams/{name}/purge/", {**purge, "mode": "seq", "seq": "10"})
    assert ask(nats_url, f"STREAM.INFO.{name}")["state"]["messages"] == 1
    r = alice.post(f"/streams/{name}/purge/", {"confirm": name.lower(), "mode": "all"})
    assert r.status_code == 400 and "confirm" in field_errors(r)
    r = alice.post(f"/streams/{name}/purge/", {**purge, "mode": "all"})
    assert ask(nats_url, f"STREAM.INFO.{name}")["state"]["messages"] == 0

    r = alice.post(f"/streams/{name}/delete/", {"confirm": "nope"})
    assert r.status_code == 400 and "Type the name exactly" in field_errors(r)["confirm"]
    assert "error" not in ask(nats_url, f"STREAM.INFO.{name}")
    r = alice.post(f"/streams/{name}/delete/", {"confirm": name})
    assert r.status_code == 302
    assert ask(nats_url, f"STREAM.INFO.{name}")["error"]["err_code"] == 10059

    assert audit_rows(name) == [
        ("stream.create", "ok"), ("stream.update", "ok"), ("stream.purge", "ok"),
        ("stream.purge", "ok"), ("stream.message.delete", "ok"),
        ("stream.message.delete", "failed"), ("stream.purge", "ok"), ("stream.purge", "ok"),
        ("stream.delete", "ok"),
    ]  # fmt: skip
    update = AuditEntry.objects.get(action="stream.update")
    assert update.detail["before"]["max_msgs"] == -1 and update.detail["after"]["max_msgs"] == 100
    assert update.username == "alice"
    deleted = AuditEntry.objects.get(action="stream.delete")
    assert deleted.detail["before"]["name"] == name and deleted.detail["after"] is None
    failed = AuditEntry.objects.get(action="stream.message.delete", result="failed")
    assert "no message with this sequence" in failed.error


def test_an_admin_manages_a_consumer(nats_url: str, alice: Client, unique: str) -> None:
    name = f"C_{unique}"
    alice.post("/streams/new/", stream_form(name, f"c.{unique}.>"))
    r = alice.post(f"/streams/{name}/consumers/new/", {
        "name": "billing", "filter_subjects": f"c.{unique}.orders", "deliver_policy": "all",
        "ack_policy": "explicit", "replay_policy": "instant", "ack_wait": "45s",
        "max_deliver": "5", "max_ack_pending": "",
    })  # fmt: skip
    assert r.status_code == 302, field_errors(r)
    config = ask(nats_url, f"CONSUMER.INFO.{name}.billing")["config"]
    assert config["ack_wait"] == 45 * 10**9 and config["max_deliver"] == 5
    assert config["filter_subjects"] == [f"c.{unique}.orders"]
    form = {"description": "pays", "filter_subjects": f"c.{unique}.orders",
            "replay_policy": "instant", "ack_wait": "1m", "max_deliver": "7",
            "max_ack_pending": "50"}  # fmt: skip
    r = alice.post(f"/streams/{name}/consumers/billing/edit/", form)
    assert r.status_code == 302, field_errors(r)
    config = ask(nats_url, f"CONSUMER.INFO.{name}.billing")["config"]
    assert (config["max_deliver"], config["description"], config["ack_wait"]) == (7, "pays", 60e9)
    assert config["ack_policy"] == "explicit"  # read-only on the form: unchanged

    r = alice.post(f"/streams/{name}/consumers/billing/pause/", {"pause_for": "2h"})
    assert r.status_code == 302
    assert ask(nats_url, f"CONSUMER.INFO.{name}.billing").get("paused") is True
    r = alice.post(f"/streams/{name}/consumers/billing/pause/", {"pause_for": "-3"})
    assert r.status_code == 400 and "pause_for" in field_errors(r)
    r = alice.post(f"/streams/{name}/consumers/billing/resume/")
    assert r.status_code == 302
    assert not ask(nats_url, f"CONSUMER.INFO.{name}.billing").get("paused")

    r = alice.post(
        f"/streams/{name}/consumers/new/",
        {
            "name": "billing",
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "replay_policy": "instant",
        },
    )
    assert r.status_code == 400 and "already exists" in field_errors(r)["name"]
    r = alice.post(f"/streams/{name}/consumers/billing/delete/", {"confirm": "billing"})
    assert r.status_code == 302
    assert ask(nats_url, f"CONSUMER.INFO.{name}.billing")["error"]["err_code"] == 10014
    assert audit_rows("billing") == [
        ("consumer.create", "ok"), ("consumer.update", "ok"), ("consumer.pause", "ok"),
        ("consumer.resume", "ok"), ("consumer.create", "failed"), ("consumer.delete", "ok"),
    ]  # fmt: skip


BAD_STREAMS = [
    ({"name": "with space"}, "name", "spaces"),
    ({"name": "a.b"}, "name", "'.'"),
    ({"name": "a*"}, "name", "'*'"),
    ({"name": "a>"}, "name", "'>'"),
    ({"name": "a/b"}, "name", "'/'"),
    ({"name": ""}, "name", "Give the stream a name"),
    ({"name": "x" * 256}, "name", "at most 255"),
    ({"subjects": ""}, "subjects", "at least one subject"),
    ({"subjects": "a..b"}, "subjects", "empty token"),
    ({"subjects": "a.>.b"}, "subjects", "last token"),
    ({"max_msgs": "-5"}, "max_msgs", "negative"),
    ({"max_msgs_per_subject": "-1"}, "max_msgs_per_subject", "negative"),
    ({"max_bytes": "-1"}, "max_bytes", "negative"),
    ({"max_bytes": "99999999999999PB"}, "max_bytes", "Absurdly large"),
    ({"max_msgs": str(10**18)}, "max_msgs", "Absurdly large"),
    ({"max_age": "-5s"}, "max_age", "duration"),
    ({"max_age": "1000000d"}, "max_age", "century"),
    ({"max_age": "soon"}, "max_age", "duration"),
    ({"num_replicas": "9"}, "num_replicas", "5"),
    ({"subjects": "\n".join(f"many.{i}" for i in range(10_000))}, "subjects", "At most 1,000"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD_STREAMS)
def test_bad_input_is_refused_next_to_its_field_and_kept(
    nats_url: str, alice: Client, unique: str, change: dict[str, str], field: str, words: str
) -> None:
    form = stream_form(f"B_{unique}", f"b.{unique}", **change)
    r = alice.post("/streams/new/", form)
    assert r.status_code == 400
    errors = field_errors(r)
    assert field in errors and words in errors[field], errors
    if change.get(field):  # what was typed stays in the form
        typed = change[field] if field != "subjects" else change[field].splitlines()[-1]
        assert typed.replace(">", "&gt;").replace("'", "&#x27;") in r.content.decode()
    listing = ask(nats_url, "STREAM.NAMES", {})
    assert not listing.get("streams")  # nothing reached the server


def test_the_servers_refusals_come_back_next_to_their_fields(
    nats_url: str, alice: Client, unique: str
) -> None:
    name = f"R_{unique}"
    assert alice.post("/streams/new/", stream_form(name, f"r.{unique}.>")).status_code == 302
    # another stream's subjects overlapping: the server refuses (10065)
    r = alice.post("/streams/new/", stream_form(f"O_{unique}", f"r.{unique}.x"))
    assert r.status_code == 400
    assert "overlap with another stream" in field_errors(r)["subjects"]
    # the same name again, another configuration (10058)
    r = alice.post("/streams/new/", stream_form(name, f"elsewhere.{unique}"))
    assert "already exists" in field_errors(r)["name"]
    # a retention change JetStream refuses
    r = alice.post(f"/streams/{name}/edit/",
                   stream_form(name, f"r.{unique}.>", retention="workqueue"))  # fmt: skip
    assert r.status_code == 400
    assert "does not change a stream's retention" in field_errors(r)["retention"]
    assert 'value="workqueue" selected' in r.content.decode()  # as typed
    # more replicas than a single server has
    r = alice.post(f"/streams/{name}/edit/", stream_form(name, f"r.{unique}.>", num_replicas="3"))
    assert r.status_code == 400 and "not clustered" in field_errors(r)["num_replicas"]
    # a duplicate window longer than the max age
    r = alice.post(f"/streams/{name}/edit/", stream_form(name, f"r.{unique}.>", max_age="1m",
                                                         duplicate_window="5m"))  # fmt: skip
    assert r.status_code == 400 and "duplicate_window" in field_errors(r)
    assert ask(nats_url, f"STREAM.INFO.{name}")["config"]["retention"] == "limits"

    failed = AuditEntry.objects.filter(result="failed").order_by("id")
    assert [(e.action, e.target) for e in failed] == [
        ("stream.create", f"stream O_{unique}"), ("stream.create", f"stream {name}"),
        ("stream.update", f"stream {name}"), ("stream.update", f"stream {name}"),
        ("stream.update", f"stream {name}"),
    ]  # fmt: skip
    assert "overlap" in failed[0].error and "retention" in failed[2].error
    assert failed[2].detail["before"]["retention"] == "limits"
    assert failed[2].detail["changes"]["retention"] == "workqueue"


def test_a_paused_consumer_says_until_when_and_offers_resume_not_pause(
    nats_url: str, alice: Client, unique: str
) -> None:
    from dashboard.models import Consumer, Stream

    name = f"P_{unique}"
    alice.post("/streams/new/", stream_form(name, f"p.{unique}"))
    alice.post(f"/streams/{name}/consumers/new/", {
        "name": "worker", "deliver_policy": "all", "ack_policy": "explicit",
        "replay_policy": "instant", "ack_wait": "30s", "max_deliver": "", "max_ack_pending": "",
    })  # fmt: skip
    stream = Stream.objects.create(name=name, created=timezone.now(), retention="limits")
    Consumer.objects.create(stream=stream, name="worker", last_seen=timezone.now(),
                            config={"durable_name": "worker"})  # as the tap stores it  # fmt: skip
    url = f"/streams/{name}/consumers/worker/"

    def actions() -> str:
        page = alice.get(url).content.decode()
        start = page.index('id="consumer-actions"')
        return page[start : page.index("</nav>", start)]

    assert 'id="pause-consumer"' in actions() and 'id="resume-consumer"' not in actions()
    assert alice.post(url + "pause/", {"pause_for": "2h"}).status_code == 302
    shown = actions()  # at once, not after the tap's next sample
    assert 'id="resume-consumer"' in shown and 'id="pause-consumer"' not in shown
    assert "paused until" in shown
    assert alice.post(url + "resume/").status_code == 302
    assert 'id="pause-consumer"' in actions() and "paused until" not in actions()


def test_paused_until_is_a_pause_still_running():
    from datetime import UTC, datetime

    from dashboard.pages.streams import paused_until

    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert paused_until({"pause_until": "2026-12-03T13:00:00.123456789Z"}, now) == datetime(
        2026, 12, 3, 13, 0, 0, 123456, tzinfo=UTC)  # fmt: skip
    assert paused_until({"pause_until": "2026-12-03T11:00:00Z"}, now) is None  # over
    assert paused_until({}, now) is None and paused_until(None, now) is None


def test_the_pages_acting_on_a_stream_or_consumer_that_is_not_there_say_so(
    nats_url: str, alice: Client, unique: str
) -> None:
    """Not a form to delete what does not exist: 404 with the server's words, a way back."""
    name = f"GONE_{unique}"
    alice.post("/streams/new/", stream_form(name, f"gone.{unique}"))
    for url in (f"/streams/NOPE_{unique}/delete/", f"/streams/NOPE_{unique}/purge/",
                f"/streams/{name}/consumers/nobody/delete/",
                f"/streams/{name}/consumers/nobody/pause/"):  # fmt: skip
        r = alice.get(url)
        assert r.status_code == 404, url
        page = r.content.decode()
        assert 'id="manage-unavailable"' in page and "not found" in page.lower(), url
    assert alice.get(f"/streams/{name}/delete/").status_code == 200  # there: the form


def test_nats_down_is_a_clear_error_and_a_failed_audit_row(
    nats_server: EmbeddedNats, nats_url: str, alice: Client, unique: str
) -> None:
    nats_server.stop()
    r = alice.post("/streams/new/", stream_form(f"D_{unique}", f"d.{unique}"))
    assert r.status_code == 503
    page = r.content.decode()
    assert "Cannot reach NATS" in page and "Nothing was changed" in page
    assert f"D_{unique}" in page  # the form, as typed
    api = alice.post("/api/streams", {"name": f"D_{unique}", "subjects": [f"d.{unique}"]},
                     content_type="application/json")  # fmt: skip
    assert api.status_code == 503 and "Cannot reach NATS" in api.json()["detail"]
    assert alice.get(f"/streams/D_{unique}/edit/").status_code == 503
    rows = AuditEntry.objects.filter(action="stream.create").order_by("id")
    assert [(e.result, "Cannot reach NATS" in e.error) for e in rows] == [
        ("failed", True), ("failed", True),
    ]  # fmt: skip


# --- the API -----------------------------------------------------------------------------------


def api(client: Client, method: str, url: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {"content_type": "application/json"}
    if body is not None:
        kwargs["data"] = body
    return getattr(client, method)(url, **kwargs)


def test_the_api_manages_streams_and_consumers(nats_url: str, alice: Client, unique: str) -> None:
    name = f"A_{unique}"
    r = api(alice, "post", "/api/streams", {"name": name, "subjects": [f"a.{unique}.>"],
                                            "storage": "memory", "max_msgs": 1000})  # fmt: skip
    assert r.status_code == 201, r.content
    assert r.json()["config"]["max_msgs"] == 1000
    r = api(alice, "patch", f"/api/streams/{name}", {"max_msgs": 50, "description": "via API"})
    assert r.status_code == 200 and r.json()["config"]["max_msgs"] == 50
    assert ask(nats_url, f"STREAM.INFO.{name}")["config"]["description"] == "via API"
    r = api(alice, "patch", f"/api/streams/{name}", {"retention": "workqueue"})
    assert r.status_code == 400
    assert [e["field"] for e in r.json()["detail"]] == ["retention"]

    publish(nats_url, [f"a.{unique}.x"] * 4 + [f"a.{unique}.y"] * 2)
    r = api(alice, "post", f"/api/streams/{name}/purge", {"subject": f"a.{unique}.y"})
    assert r.status_code == 200 and r.json() == {"purged": 2}
    assert api(alice, "delete", f"/api/streams/{name}/messages/1").status_code == 204
    assert api(alice, "delete", f"/api/streams/{name}/messages/1").status_code == 400
    r = api(alice, "post", f"/api/streams/{name}/purge", {"keep": 1})
    assert r.json() == {"purged": 2}

    consumers = f"/api/streams/{name}/consumers"
    r = api(alice, "post", consumers, {"name": "worker", "ack_policy": "explicit",
                                       "max_deliver": 3})  # fmt: skip
    assert r.status_code == 201 and r.json()["config"]["max_deliver"] == 3
    r = api(alice, "patch", f"{consumers}/worker", {"max_deliver": 4})
    assert r.status_code == 200 and r.json()["config"]["max_deliver"] == 4
    r = api(alice, "post", f"{consumers}/worker/pause", {"until": "2099-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["paused"] is True
    r = api(alice, "post", f"{consumers}/worker/pause", {"until": "2001-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "until"
    r = api(alice, "post", f"{consumers}/worker/resume")
    assert r.status_code == 200 and r.json()["paused"] is False
    assert api(alice, "delete", f"{consumers}/worker").status_code == 204
    assert api(alice, "delete", f"{consumers}/worker").status_code == 404
    assert api(alice, "delete", f"/api/streams/{name}").status_code == 204
    assert api(alice, "delete", f"/api/streams/{name}").status_code == 404
    assert ask(nats_url, f"STREAM.INFO.{name}")["error"]["err_code"] == 10059
    assert [a for a, _ in audit_rows(name)] == [
        "stream.create", "stream.update", "stream.update", "stream.purge",
        "stream.message.delete", "stream.message.delete", "stream.purge", "consumer.create",
        "consumer.update", "consumer.pause", "consumer.pause", "consumer.resume",
        "consumer.delete", "consumer.delete", "stream.delete", "stream.delete",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "two words", "subjects": ["s"]}, ["name"]),
        ({"name": "a.b", "subjects": ["s"]}, ["name"]),
        ({"name": "star*", "subjects": ["s"]}, ["name"]),
        ({"name": "gt>", "subjects": ["s"]}, ["name"]),
        ({"name": "ok", "subjects": []}, ["subjects"]),
        ({"name": "ok", "subjects": ["s"], "max_msgs": -5, "max_age": -1}, ["max_age", "max_msgs"]),
        ({"name": "ok", "subjects": ["s"], "max_bytes": 2**62}, ["max_bytes"]),
        ({"name": "ok", "subjects": [f"s.{i}" for i in range(10_000)]}, ["subjects"]),
    ],
)
def test_the_api_refuses_bad_input_with_field_errors(
    nats_url: str, alice: Client, body: dict[str, Any], fields: list[str]
) -> None:
    r = api(alice, "post", "/api/streams", body)
    assert r.status_code == 400, r.content
    assert sorted(e["field"] for e in r.json()["detail"]) == fields
    assert not ask(nats_url, "STREAM.NAMES", {}).get("streams")
    assert AuditEntry.objects.filter(action="stream.create", result="failed").count() == 1


# --- who may: every management URL and endpoint, for each persona ------------------------------

PAGES = [
    "/streams/new/", "/streams/{s}/edit/", "/streams/{s}/purge/", "/streams/{s}/delete/",
    "/streams/{s}/messages/delete/", "/streams/{s}/consumers/new/",
    "/streams/{s}/consumers/{c}/edit/", "/streams/{s}/consumers/{c}/pause/",
    "/streams/{s}/consumers/{c}/delete/",
]  # fmt: skip
ENDPOINTS = [
    ("post", "/api/streams", {"name": "X{u}", "subjects": ["x.{u}"]}),
    ("patch", "/api/streams/{s}", {"max_msgs": 5}),
    ("post", "/api/streams/{s}/purge", {}),
    ("delete", "/api/streams/{s}/messages/1", None),
    ("post", "/api/streams/{s}/consumers", {"name": "other"}),
    ("patch", "/api/streams/{s}/consumers/{c}", {"max_deliver": 2}),
    ("post", "/api/streams/{s}/consumers/{c}/pause", {"until": "2099-01-01T00:00:00Z"}),
    ("post", "/api/streams/{s}/consumers/{c}/resume", None),
    ("delete", "/api/streams/{s}/consumers/{c}", None),
    ("delete", "/api/streams/{s}", None),
]
# persona -> (GET page, POST page or resume, API)
EXPECTED = {None: (302, 302, 401), "vera": (403, 403, 403), "oscar": (403, 403, 403)}


@pytest.mark.parametrize("who", [None, "vera", "oscar", "alice"])
def test_each_persona_may_manage_or_not(
    nats_url: str,
    people: dict[str, User],
    unique: str,
    who: str | None,
) -> None:
    s, c = f"P_{unique}", "cons"
    ask(nats_url, f"STREAM.CREATE.{s}", {"name": s, "subjects": [f"p.{unique}"]})
    ask(nats_url, f"CONSUMER.CREATE.{s}.{c}", {"stream_name": s, "config": {
        "durable_name": c, "ack_policy": "explicit"}})  # fmt: skip
    client = client_for(people[who] if who else None)
    pages = [p.format(s=quote(s), c=c) for p in PAGES]
    resume = f"/streams/{s}/consumers/{c}/resume/"
    if who == "alice":
        assert {p: client.get(p).status_code for p in pages} == {p: 200 for p in pages}
        page = client.get(f"/streams/{s}/edit/").content.decode()
        assert f"p.{unique}" in page  # filled from the server
        assert client.get(resume).status_code == 405  # POST only
        return
    get_status, post_status, api_status = EXPECTED[who]
    assert {p: client.get(p).status_code for p in pages} == {p: get_status for p in pages}
    posted = {p: client.post(p, {"confirm": s, "mode": "all"}).status_code for p in pages}
    assert posted == {p: post_status for p in pages | {resume: 0}.keys() if p != resume}
    assert client.post(resume).status_code == post_status
    for method, url, body in ENDPOINTS:
        url = url.format(s=s, c=c, u=unique)
        data = json.loads(json.dumps(body).replace("{u}", unique)) if body is not None else None
        r = api(client, method, url, data)
        assert r.status_code == api_status, (method, url, r.content)
    # nothing changed, nothing audited as a change
    assert ask(nats_url, f"CONSUMER.INFO.{s}.{c}")["config"]["durable_name"] == c
    assert not AuditEntry.objects.exclude(action__startswith="log").exists()


def test_only_admins_see_the_management_buttons(
    nats_url: str,
    people: dict[str, User],
    unique: str,
) -> None:
    from dashboard.models import Consumer, Stream

    now = timezone.now()
    stream = Stream.objects.create(name=f"V_{unique}", created=now, retention="limits")
    Consumer.objects.create(stream=stream, name="c1", last_seen=now)
    buttons = ['id="new-stream"', 'id="purge-stream"', 'id="delete-stream"', 'id="edit-consumer"']
    urls = ["/", f"/streams/V_{unique}/", f"/streams/V_{unique}/consumers/c1/"]
    for who, shown in (("vera", False), ("oscar", False), ("alice", True)):
        html = "".join(client_for(people[who]).get(u).content.decode() for u in urls)
        assert {b: b in html for b in buttons} == {b: shown for b in buttons}, who


def test_the_openapi_document_describes_the_changes(alice: Client) -> None:
    paths = alice.get("/api/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(paths["/api/streams"])
    assert {"get", "patch", "delete"} <= set(paths["/api/streams/{name}"])
    assert "post" in paths["/api/streams/{name}/purge"]
    assert {"get", "post"} <= set(paths["/api/streams/{name}/consumers"])
    assert {"get", "patch", "delete"} <= set(paths["/api/streams/{name}/consumers/{consumer}"])
    assert "post" in paths["/api/streams/{name}/consumers/{consumer}/pause"]
    assert "403" in paths["/api/streams"]["post"]["responses"]
