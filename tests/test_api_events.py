"""`GET /api/events` on events a real tap recorded: the event browser's filters as query
parameters, keyset pages, 400 with the field for bad input, and who may call it (session,
bearer token, public read)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client, override_settings

from dashboard import tokens
from tests.test_events_page import TRACE, logged_in, recorded  # noqa: F401 - fixtures


def _get(client: Client, status: int = 200, **params: Any) -> Any:
    response = client.get("/api/events", params)
    assert response.status_code == status, (params, response.content[:400])
    return response.json()


def _seqs(client: Client, **params: Any) -> list[int]:
    return [item["seq"] for item in _get(client, **params)["items"]]


def test_each_filter_answers_what_the_page_shows(logged_in: Client, recorded: str) -> None:  # noqa: F811
    s = recorded
    assert _seqs(logged_in, stream=s) == list(range(30, 0, -1))
    assert _seqs(logged_in, stream=s, subject=f"{s.lower()}.*.created") == list(range(25, 0, -1))
    assert _seqs(logged_in, trace_id=TRACE, stream=s) == [20, 10]
    assert _seqs(logged_in, msg_id=f"{s}-7") == [7]
    assert _seqs(logged_in, stream=s, header="tenant=t0") == list(range(24, 0, -3))
    assert _seqs(logged_in, stream=s, json="order.customer.id=3") == [23, 18, 13, 8, 3]
    assert _seqs(logged_in, stream=s, text="refund") == [7]
    assert _seqs(logged_in, stream=s, min_size="100000") == [30]
    item = _get(logged_in, msg_id=f"{s}-10")["items"][0]
    assert set(item) >= {"stream", "seq", "subject", "ts", "size", "headers", "msg_id",
                         "trace_id", "service"}  # fmt: skip
    assert item["trace_id"] == TRACE and item["headers"]["tenant"] == "t1"
    assert item["service"] == "svc0"


def test_pages_follow_next_without_repeats(logged_in: Client, recorded: str) -> None:  # noqa: F811
    seen: list[int] = []
    cursor = None
    while True:
        body = _get(logged_in, stream=recorded, limit=7, **({"cursor": cursor} if cursor else {}))
        seen += [i["seq"] for i in body["items"]]
        assert body["complete"] is True
        cursor = body["next"]
        if not cursor:
            break
    assert seen == list(range(30, 0, -1))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"subject": "orders.>.x"}, "subject"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"since": "2026-02-30T00:00:00Z"}, "since"),
        ({"until": "soon"}, "until"),
        ({"stream": "NO_SUCH_STREAM"}, "stream"),
        ({"trace_id": "123"}, "trace_id"),
        ({"json": "a b=c"}, "json"),
        ({"kind": "buckets"}, "kind"),
        ({"min_size": "big"}, "min_size"),
    ],
)
def test_bad_input_answers_400_naming_the_field(
    logged_in: Client,  # noqa: F811
    db: None,
    params: dict[str, str],
    field: str,
) -> None:
    body = _get(logged_in, 400, **params)
    assert [d["field"] for d in body["detail"]] == [field], body


def test_callers_need_a_session_a_token_or_public_read(db: None, alice: tuple[str, str]) -> None:
    from django.contrib.auth.models import User

    assert Client().get("/api/events").status_code == 401
    token, _ = tokens.create(User.objects.get(username=alice[0]), "script")
    ok = Client().get("/api/events", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ok.status_code == 200 and ok.json()["items"] == []
    assert Client().get("/api/events", HTTP_AUTHORIZATION="Bearer fst_wrong").status_code == 401
    with override_settings(FLOWSCOPE_PUBLIC_READ=True):
        assert Client().get("/api/events").status_code == 200


def test_one_event_with_its_payload_byte_exact(logged_in: Client, recorded: str) -> None:  # noqa: F811
    import base64

    body = logged_in.get(f"/api/events/{recorded}/7").json()
    assert body["seq"] == 7 and body["json"]["note"] == "refund"
    assert body["text"].startswith('{"order"') and body["headers"]["tenant"] == "t1"
    binary = logged_in.get(f"/api/events/{recorded}/26").json()  # b"\xff\xfe\x00\x01 binary"
    assert base64.b64decode(binary["payload"]) == b"\xff\xfe\x00\x01 binary"
    assert binary["text"] is None and binary["json"] is None
    huge = logged_in.get(f"/api/events/{recorded}/30").json()
    assert huge["truncated"] is True and huge["size"] == 200_000
    assert len(base64.b64decode(huge["payload"])) < 200_000
    missing = logged_in.get(f"/api/events/{recorded}/999")
    assert missing.status_code == 404 and "999" in missing.json()["detail"]
    assert logged_in.get("/api/events/NOPE/1").status_code == 404
    assert Client().get(f"/api/events/{recorded}/7").status_code == 401
