"""/dead-letters/, /dead-letters/<id>/ and `GET /api/dead-letters[/<id>]` (issue #15) on
DeadLetter rows made here directly (the tap's capture is tested in tests/test_deadletters.py):
filters, counts, pages, the payload shown as on the event page, 400s, 404s, who may look."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from dashboard.models import DeadLetter
from tests.htmltree import parse

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def letter(seq: int, **kw: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "stream_name": "ORDERS", "seq": seq, "consumer": "billing",
        "reason": DeadLetter.Reason.MAX_DELIVERIES, "deliveries": 5,
        "subject": f"orders.{seq}.created", "headers": {"tenant": "t1"},
        "payload": b'{"id": %d}' % seq, "payload_source": DeadLetter.PayloadSource.STREAM,
        "died_at": T0 + timedelta(seconds=seq),
        "captured_at": T0 + timedelta(seconds=seq, milliseconds=5),
    }  # fmt: skip
    values.update(kw)
    return DeadLetter.objects.create(**values)


@pytest.fixture
def viewer(db: None) -> Client:
    user = User.objects.create_user("vera", password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def letters(db: None) -> list[DeadLetter]:
    made = [letter(i) for i in range(1, 8)]  # ORDERS/billing, max deliveries, new
    made += [letter(i, consumer="mailer", reason=DeadLetter.Reason.TERMINATED,
                    terminate_reason="bad address", subject=f"orders.{i}.shipped")
             for i in range(20, 23)]  # fmt: skip
    made.append(letter(30, stream_name="PAYMENTS", consumer="", subject="payments.failed",
                       reason=DeadLetter.Reason.DLQ_STREAM, deliveries=0))  # fmt: skip
    made.append(letter(40, status=DeadLetter.Status.DISCARDED, status_note="known bug"))
    return made


def _ids(client: Client, **params: Any) -> list[int]:
    response = client.get("/dead-letters/", params)
    assert response.status_code == 200, response.content[:500]
    doc = parse(response.content.decode())
    table = [e for e in doc.elements() if e.attrs.get("id") == "dead-letters"]
    if not table:
        return []
    return [int(str(r.attrs["data-id"])) for r in table[0].find_all("tr") if "data-id" in r.attrs]


def _by_seq(rows: list[DeadLetter], *seqs: int) -> list[int]:
    return [d.id for s in seqs for d in rows if d.seq == s]


def test_the_list_filters_by_each_field(viewer: Client, letters: list[DeadLetter]) -> None:
    assert _ids(viewer) == _by_seq(letters, 40, 30, 22, 21, 20, 7, 6, 5, 4, 3, 2, 1)
    assert _ids(viewer, stream="PAYMENTS") == _by_seq(letters, 30)
    assert _ids(viewer, consumer="mailer") == _by_seq(letters, 22, 21, 20)
    assert _ids(viewer, subject="orders.*.shipped") == _by_seq(letters, 22, 21, 20)
    assert _ids(viewer, subject="orders.>") == _by_seq(letters, 40, 22, 21, 20, 7, 6, 5, 4, 3, 2, 1)
    assert _ids(viewer, subject="orders.3.created") == _by_seq(letters, 3)
    assert _ids(viewer, reason="terminated") == _by_seq(letters, 22, 21, 20)
    assert _ids(viewer, status="discarded") == _by_seq(letters, 40)
    since = (T0 + timedelta(seconds=5)).isoformat()
    until = (T0 + timedelta(seconds=21)).isoformat()
    assert _ids(viewer, since=since, until=until) == _by_seq(letters, 20, 7, 6, 5)


def test_counts_of_new_ones_per_stream_and_consumer(
    viewer: Client, letters: list[DeadLetter]
) -> None:
    doc = parse(viewer.get("/dead-letters/").content.decode())
    rows = [r for r in doc.by_id("waiting").find_all("tr") if "data-stream" in r.attrs]
    got = [
        (r.attrs["data-stream"], r.attrs["data-consumer"], r.find_all("td")[2].text()) for r in rows
    ]
    # the discarded one of ORDERS/billing is not waiting
    assert got == [("ORDERS", "billing", "7"), ("ORDERS", "mailer", "3"), ("PAYMENTS", "", "1")]


def test_pages_go_older_without_repeats(viewer: Client, db: None) -> None:
    made = [letter(i) for i in range(1, 251)]
    letter(251, died_at=made[-1].died_at)  # same time: the id breaks the tie
    seen: list[int] = []
    url = "/dead-letters/?stream=ORDERS"
    while url:
        doc = parse(viewer.get(url).content.decode())
        seen += [int(str(r.attrs["data-id"])) for r in doc.by_id("dead-letters").find_all("tr")
                 if "data-id" in r.attrs]  # fmt: skip
        older = [e for e in doc.elements() if e.attrs.get("id") == "older"]
        url = "/dead-letters/" + str(older[0].attrs["href"]) if older else ""
        assert "stream=ORDERS" in url or not url
    assert len(seen) == 251 and len(set(seen)) == 251
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"subject": "orders..x"}, "subject"), ({"subject": "a.>.b"}, "subject"),
     ({"reason": "tired"}, "reason"), ({"status": "lost"}, "status"),
     ({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
     ({"cursor": "nope"}, "cursor"), ({"stream": "x" * 300}, "stream")],
)  # fmt: skip
def test_bad_filters_answer_400_naming_the_field(
    viewer: Client, db: None, params: dict[str, str], field: str
) -> None:
    response = viewer.get("/dead-letters/", params)
    assert response.status_code == 400
    error = parse(response.content.decode()).by_id("filter-error")
    assert error.attrs["data-field"] == field
    api = viewer.get("/api/dead-letters", params)
    assert api.status_code == 400, api.content
    assert field in str(api.json()["detail"])


def test_the_list_links_each_dead_letter_and_its_event(viewer: Client, db: None) -> None:
    d = letter(9, subject="orders.<b>x</b>")
    html = viewer.get("/dead-letters/").content.decode()
    assert "<b>x</b>" not in html and "orders.&lt;b&gt;x&lt;/b&gt;" in html
    doc = parse(html)
    hrefs = [a.attrs.get("href") for a in doc.by_id("dead-letters").find_all("a")]
    assert f"/dead-letters/{d.id}/" in hrefs and "/events/ORDERS/9/" in hrefs
    assert any(a.attrs.get("href") == "/dead-letters/" for a in doc.find_all("a"))  # the nav


def test_detail_shows_markup_as_text_and_links_event_trace_stream(viewer: Client, db: None) -> None:
    d = letter(
        12, reason=DeadLetter.Reason.TERMINATED, terminate_reason="<i>bad</i> address",
        subject="orders.<script>", deliveries=3,
        headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "X-Note": "<img src=x>"},
        payload=b'{"html": "<script>alert(1)</script>"}',
    )  # fmt: skip
    response = viewer.get(f"/dead-letters/{d.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    for markup in ("<script>alert", "<img src=x>", "<i>bad</i>", "orders.<script>"):
        assert markup not in html
    doc = parse(html)
    assert "<i>bad</i> address" in doc.by_id("terminate-reason").text()
    assert "<img src=x>" in doc.by_id("headers").text()
    assert "<script>alert(1)</script>" in doc.by_id("view-json").text()
    assert doc.by_id("deliveries").text() == "3"
    assert doc.by_id("event-link").attrs["href"] == "/events/ORDERS/12/"
    assert doc.by_id("trace-link").attrs["href"] == f"/traces/{TRACE}/"
    assert doc.by_id("payload-source").attrs["data-source"] == "stream"
    assert "style=" not in html and "<script>" not in html.replace('<script type="module"', "")


def test_a_binary_payload_is_a_hex_dump(viewer: Client, db: None) -> None:
    d = letter(13, payload=b"\x00\x01\xffPK\x03", payload_source=DeadLetter.PayloadSource.RECORDED)
    doc = parse(viewer.get(f"/dead-letters/{d.id}/").content.decode())
    assert doc.by_id("payload").attrs["data-active"] == "hex"
    assert "00 01 ff 50 4b 03" in doc.by_id("view-hex").text()
    assert "tap's stored copy" in doc.by_id("payload-source").text()


def test_a_gone_payload_is_said_plainly(viewer: Client, db: None) -> None:
    d = letter(14, payload=b"", payload_source=DeadLetter.PayloadSource.GONE, headers=None)
    doc = parse(viewer.get(f"/dead-letters/{d.id}/").content.decode())
    assert "The payload is gone" in doc.by_id("payload-source").text()
    assert not [e for e in doc.elements() if e.attrs.get("id") == "view-text"]
    assert viewer.get(f"/api/dead-letters/{d.id}").json()["payload_source"] == "gone"


def test_unknown_dead_letters_are_404(viewer: Client, db: None) -> None:
    assert viewer.get("/dead-letters/999999/").status_code == 404
    assert viewer.get("/api/dead-letters/999999").status_code == 404
    assert viewer.get("/api/dead-letters/99999999999999999999").status_code in (400, 404)


def test_login_is_required(db: None) -> None:
    d = letter(1)
    anonymous = Client()
    for url in ("/dead-letters/", f"/dead-letters/{d.id}/"):
        response = anonymous.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert anonymous.get("/api/dead-letters").status_code == 401
    assert anonymous.get(f"/api/dead-letters/{d.id}").status_code == 401


def test_api_list_and_detail_shapes(viewer: Client, letters: list[DeadLetter]) -> None:
    body = viewer.get("/api/dead-letters", {"consumer": "mailer", "limit": "2"}).json()
    assert [i["seq"] for i in body["items"]] == [22, 21]
    item = body["items"][0]
    assert set(item) == {"id", "stream", "seq", "consumer", "reason", "deliveries", "subject",
                         "status", "died_at"}  # fmt: skip
    assert item["reason"] == "terminated" and item["stream"] == "ORDERS"
    assert datetime.fromisoformat(item["died_at"]) == T0 + timedelta(seconds=22)
    rest = viewer.get("/api/dead-letters", {"consumer": "mailer", "limit": 2,
                                            "cursor": body["next"]}).json()  # fmt: skip
    assert [i["seq"] for i in rest["items"]] == [20] and rest["next"] is None
    detail = viewer.get(f"/api/dead-letters/{item['id']}").json()
    assert detail["terminate_reason"] == "bad address"
    assert detail["headers"] == {"tenant": "t1"}
    assert base64.b64decode(detail["payload"]) == b'{"id": 22}'
    assert detail["payload_source"] == "stream"
    assert viewer.get("/api/dead-letters", {"limit": 501}).status_code == 400
    assert viewer.get("/api/dead-letters", {"limit": 0}).status_code == 400
