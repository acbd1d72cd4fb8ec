"""The replay and discard API (issue #15): who may, what each answers, bad requests, and a
replay through the API reaching a real nats-server (the engine: tests/test_replay.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from dashboard.models import AuditEntry, DeadLetter, ReplayJob
from tests.test_replay import _letter, _publish, _run, _setup


def post(client: Client, url: str, body: Any, status: int) -> Any:
    response = client.post(url, json.dumps(body), content_type="application/json")
    assert response.status_code == status, response.content[:600]
    return response.json()


def test_a_viewer_and_an_anonymous_caller_may_not_change_anything(viewer_client, client):
    d = _letter("S", 1, "s.x", b"x")
    job = ReplayJob.objects.create(created_at=d.died_at, total=0)
    calls = [
        (f"/api/dead-letters/{d.pk}/replay", {}),
        ("/api/dead-letters/discard", {"ids": [d.pk], "reason": "no"}),
        ("/api/replays", {"ids": [d.pk]}),
        (f"/api/replays/{job.pk}/cancel", {}),
    ]
    for url, body in calls:
        assert "operator role" in post(viewer_client, url, body, 403)["detail"]
        post(client, url, body, 401)
    d.refresh_from_db()
    assert d.status == "new" and ReplayJob.objects.count() == 1
    # reading is for everyone logged in
    assert viewer_client.get(f"/api/replays/{job.pk}").status_code == 200
    assert viewer_client.get("/api/replays").json()["items"][0]["id"] == job.pk


def test_replay_one_through_the_api(operator, nats_server, unique, settings):
    settings.NATS_URL = nats_server.url
    url = nats_server.url
    stream, subject = f"API_{unique}", f"api.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    seq = _run(_publish(url, f"{subject}.x", b"<script>x</script>", {}))
    d = _letter(stream, seq, f"{subject}.x", b"<script>x</script>")
    got = post(operator, f"/api/dead-letters/{d.pk}/replay", {}, 200)
    assert (got["state"], got["published"], got["user"]) == ("done", 1, "olga")
    (result,) = got["results"]
    assert (result["state"], result["stream"], result["seq"]) == ("published", stream, seq + 1)
    assert result["msg_id"] == f"flowscope-replay:{d.pk}:0"
    # retried: the same job, nothing sent again
    assert post(operator, f"/api/dead-letters/{d.pk}/replay", {}, 200)["id"] == got["id"]
    again = post(operator, f"/api/dead-letters/{d.pk}/replay", {"again": True}, 200)
    assert again["id"] != got["id"] and again["results"][0]["seq"] == seq + 2
    assert operator.get(f"/api/dead-letters/{d.pk}").json()["status"] == "replayed"
    page = operator.get(f"/api/replays/{got['id']}/items", {"limit": 1}).json()
    assert [i["dead_letter"] for i in page["items"]] == [d.pk] and page["next"] is None


def test_a_bulk_replay_dry_run_then_job_then_cancel(operator, nats_server, unique, settings):
    settings.NATS_URL = nats_server.url
    url = nats_server.url
    stream, subject = f"BK_{unique}", f"bk.{unique}"
    _run(_setup(url, stream, subject, "limits"))
    made = [_letter(stream, i, f"{subject}.a", b"a") for i in range(1, 6)]
    made[0].status = "discarded"
    made[0].save()
    flt = {"stream": stream}
    plan = post(operator, "/api/replays", {"filter": flt, "dry_run": True}, 200)
    assert plan["total"] == 4 and plan["skipped"] == 1
    assert plan["destinations"] == [{"subject": f"{subject}.a", "count": 4, "stream": stream}]
    assert ReplayJob.objects.count() == 0
    nowhere = {"filter": flt, "dry_run": True, "subject": f"nowhere.{unique}"}
    elsewhere = post(operator, "/api/replays", nowhere, 200)
    assert elsewhere["destinations"][0]["stream"] is None
    job = post(operator, "/api/replays", {"filter": flt, "rate": 5, "mode": "move"}, 202)
    assert (job["state"], job["total"], job["rate"], job["mode"]) == ("pending", 4, 5.0, "move")
    assert [r["dead_letter"] for r in job["results"]] == [d.pk for d in made[1:]]
    # no worker runs here: the job waits, and cancelling it ends it at once
    cancelled = post(operator, f"/api/replays/{job['id']}/cancel", {}, 200)
    assert cancelled["state"] == "cancelled"
    assert {r["state"] for r in cancelled["results"]} == {"cancelled"}
    ids = post(operator, "/api/replays", {"ids": [made[2].pk, made[3].pk]}, 202)
    assert ids["total"] == 2
    actions = list(AuditEntry.objects.values_list("action", flat=True))
    assert actions.count("replay.create") == 2 and "replay.cancel" in actions


def test_discard_through_the_api(operator, db):
    made = [_letter("D", i, f"d.{i}", b"x") for i in range(1, 4)]
    by_filter = {"filter": {"subject": "d.1"}, "reason": "test data"}
    assert post(operator, "/api/dead-letters/discard", by_filter, 200) == {"discarded": 1}
    by_ids = {"ids": [made[1].pk], "reason": "dup"}
    assert post(operator, "/api/dead-letters/discard", by_ids, 200) == {"discarded": 1}
    statuses = sorted(DeadLetter.objects.values_list("status", flat=True))
    assert statuses == ["discarded", "discarded", "new"]


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/replays", {}, "ids"),
        ("/api/replays", {"ids": [1], "filter": {}}, "ids"),
        ("/api/replays", {"ids": []}, "ids"),
        ("/api/replays", {"ids": [-1]}, "ids"),
        ("/api/replays", {"filter": {"subject": "a..b"}}, "subject"),
        ("/api/replays", {"filter": {"status": "lost"}}, "status"),
        ("/api/replays", {"filter": {"since": "yesterday"}}, "since"),
        ("/api/replays", {"ids": [1], "rate": 0.1}, "rate"),
        ("/api/replays", {"ids": [1], "subject": "orders.>"}, "subject"),
        ("/api/replays", {"ids": [1], "mode": "teleport"}, "mode"),
        ("/api/replays", {"filter": {"stream": "NONE"}}, ""),
        ("/api/dead-letters/discard", {"ids": [1], "reason": " "}, "reason"),
        ("/api/dead-letters/discard", {"ids": [1]}, "reason"),
        ("/api/dead-letters/LETTER/replay", {"subject": "x y"}, "subject"),
    ],
)
def test_each_bad_request_answers_400_naming_its_field(operator, url, body, field):
    d = _letter("B", 1, "b.x", b"x")
    url = url.replace("LETTER", str(d.pk))
    body = json.loads(json.dumps(body).replace("[1]", f"[{d.pk}]"))
    detail = post(operator, url, body, 400)["detail"]
    assert [e["field"].split(".")[-1] for e in detail] == [field], detail
    assert ReplayJob.objects.count() == 0 and DeadLetter.objects.get().status == "new"


def test_unknown_dead_letters_and_jobs_are_404(operator):
    assert "no dead letter 9" in post(operator, "/api/dead-letters/9/replay", {}, 404)["detail"]
    assert operator.get("/api/replays/9").status_code == 404
    assert operator.get("/api/replays/9/items").status_code == 404
    post(operator, "/api/replays/9223372036854775808/cancel", {}, 404)


def test_the_operations_are_in_the_openapi_document(operator):
    paths = operator.get("/api/openapi.json").json()["paths"]
    assert "post" in paths["/api/dead-letters/{letter_id}/replay"]
    assert "post" in paths["/api/dead-letters/discard"]
    assert {"get", "post"} <= set(paths["/api/replays"])
    assert (
        "get" in paths["/api/replays/{job_id}"] and "post" in paths["/api/replays/{job_id}/cancel"]
    )
