"""The JSON API's stream endpoints (/api/streams...): what a real tap recorded from a real
nats-server, names that need URL-encoding, 401 for anonymous callers, 404 for unknown streams and
consumers, 400 with the parameter's name for each bad parameter, keyset pages, the lag series'
ranges, and the framework around them (CSRF, the docs page)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import nats
import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from ninja.errors import HttpError

from dashboard.api.auth import SessionAuth
from dashboard.api.paging import MAX_LIMIT, encode
from dashboard.models import Consumer, ConsumerSample, Stream
from dashboard.pages import charts
from tests.taputil import eventually, in_thread, query, tap_running
from tests.test_stream_page_data import NOW, _samples

ODD = "odd%#?&=:é~'()+,;@[]"  # what nats-server accepts in a stream name, URL-unsafe all


@pytest.fixture
def logged_in(client: Client, alice: tuple[str, str]) -> Client:
    client.login(username=alice[0], password=alice[1])
    return client


def get(client: Client, url: str, status: int = 200, **params: Any) -> Any:
    response = client.get(url, params)
    assert response.status_code == status, (url, params, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    return response.json()


def fields_refused(client: Client, url: str, **params: Any) -> list[str]:
    """The parameters a 400 answer names."""
    body = get(client, url, 400, **params)
    assert all(set(e) == {"field", "message"} and e["message"] for e in body["detail"]), body
    return [e["field"] for e in body["detail"]]


def q(name: str) -> str:
    return quote(name, safe="")


# --- what the tap recorded ----------------------------------------------------------------------


async def _record(nats_url: str, database_url: str, u: str) -> None:
    """API_<u> (memory, 7 orders and 3 refunds; consumer billing acked 2 of its 7 orders), an
    oddly named stream with an oddly named consumer, and a KV bucket, recorded by a real tap."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"API_{u}", subjects=[f"api.{u}.>"],
                                     storage=StorageType.MEMORY))  # fmt: skip
    await js.add_stream(StreamConfig(name=f"{ODD}{u}", subjects=[f"odd.{u}"]))
    kv = await js.create_key_value(bucket=f"cfg{u}")
    await js.add_consumer(f"API_{u}", ConsumerConfig(
        durable_name="billing", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"api.{u}.orders",
    ))  # fmt: skip
    await js.add_consumer(f"{ODD}{u}", ConsumerConfig(durable_name=f"c{ODD}"))
    async with tap_running(nats_url, database_url) as tap:

        async def watching() -> bool:
            names = [f"API_{u}", f"{ODD}{u}", f"KV_cfg{u}"]
            return all(n in tap.observers and tap.observers[n].ready.is_set() for n in names)

        async def sampled_empty() -> bool:  # so the rate over the last minute has a start
            rows = await query(database_url, "SELECT count(*) FROM flowscope_stream_sample x "
                               "JOIN flowscope_stream s ON s.id = x.stream_id WHERE s.name = %s "
                               "AND x.last_seq = 0", f"API_{u}")  # fmt: skip
            return bool(rows[0][0] > 0)

        await eventually(watching, 30, "the tap watching the streams")
        await eventually(sampled_empty, 30, "a sample of the empty stream")
        for i in range(7):
            await js.publish(f"api.{u}.orders", f"order {i}".encode())
        for i in range(3):
            await js.publish(f"api.{u}.refunds", f"refund {i}".encode())
        await js.publish(f"odd.{u}", b"odd")
        await kv.put("colour", b"blue")
        sub = await js.pull_subscribe_bind("billing", f"API_{u}")
        for msg in await sub.fetch(2, timeout=5):
            await msg.ack()

        async def done() -> bool:
            recorded = dict(await query(
                database_url, "SELECT s.name, c.recorded FROM flowscope_checkpoint c "
                "JOIN flowscope_stream s ON s.id = c.stream_id WHERE s.deleted_at IS NULL",
            ))  # fmt: skip
            acked = await query(
                database_url, "SELECT count(*) FROM flowscope_consumer_sample x JOIN "
                "flowscope_consumer c ON c.stream_id = x.stream_id AND c.name = x.consumer "
                "WHERE x.consumer = 'billing' AND x.ack_floor_stream_seq = 2 "
                "AND c.ack_floor_stream_seq = 2")  # fmt: skip
            state = await query(database_url, "SELECT count(*) FROM flowscope_stream_sample x "
                                "JOIN flowscope_stream s ON s.id = x.stream_id "
                                "WHERE s.name = %s AND x.last_seq = 10", f"API_{u}")  # fmt: skip
            return (recorded.get(f"API_{u}") == 10 and recorded.get(f"{ODD}{u}") == 1
                    and acked[0][0] > 0 and state[0][0] > 0)  # fmt: skip

        await eventually(done, 30, "the streams recorded, the ack and the state sampled")
    await nc.close()


def test_every_endpoint_answers_what_the_tap_recorded(logged_in, nats_server, database_url, unique):
    u = unique
    in_thread(_record(nats_server.url, database_url, u))

    streams = {s["name"]: s for s in get(logged_in, "/api/streams")["items"]}
    api = streams[f"API_{u}"]
    assert api["kind"] == "stream" and api["subjects"] == [f"api.{u}.>"]
    assert (api["retention"], api["storage"], api["observed_by"]) == ("limits", "memory",
                                                                      "consumer")  # fmt: skip
    assert (api["messages"], api["first_seq"], api["last_seq"]) == (10, 1, 10)
    assert api["bytes"] > 0 and api["recorded"] == 10 and api["dropped"] == 0
    assert api["consumer_count"] == 1  # billing; the tap's own consumer is left out
    assert api["rate"] > 0  # 10 messages since a sample of the empty stream, within the minute
    assert streams[f"KV_cfg{u}"]["kind"] == "kv"
    assert streams[f"{ODD}{u}"]["recorded"] == 1
    kvs = get(logged_in, "/api/streams", kind="kv")["items"]
    assert [s["name"] for s in kvs] == [f"KV_cfg{u}"]
    assert f"KV_cfg{u}" not in {s["name"] for s in get(logged_in, "/api/streams",
                                                        kind="stream")["items"]}  # fmt: skip

    detail = get(logged_in, f"/api/streams/API_{u}")
    assert detail["config"]["subjects"] == [f"api.{u}.>"] and detail["recorded_seq"] == 10
    assert (detail["gaps"], detail["gap_missing"]) == (0, 0)
    rates = {r["subject"]: (r["last_minute"], r["last_5_minutes"]) for r in detail["subject_rates"]}
    assert rates == {f"api.{u}.orders": (7, 7), f"api.{u}.refunds": (3, 3)}

    consumers = get(logged_in, f"/api/streams/API_{u}/consumers")
    assert consumers["next"] is None
    [billing] = consumers["items"]
    # 7 orders for it: 2 delivered and acked, 5 pending
    assert (billing["name"], billing["lag"], billing["num_pending"]) == ("billing", 5, 5)
    assert billing["ack_floor_stream_seq"] == 2 and billing["stream"] == f"API_{u}"
    one = get(logged_in, f"/api/streams/API_{u}/consumers/billing")
    assert one["config"]["durable_name"] == "billing"
    assert one["config"]["filter_subject"] == f"api.{u}.orders"
    assert one["lag"] == 5 and (one["ack_rate"] is None or one["ack_rate"] >= 0)

    lag = get(logged_in, f"/api/streams/API_{u}/consumers/billing/lag")
    assert lag["bucket_seconds"] == charts.span_bucket_seconds(timedelta(hours=1))
    until = datetime.fromisoformat(lag["until"])
    assert until - datetime.fromisoformat(lag["since"]) == timedelta(hours=1)
    assert abs((until - datetime.now(UTC)).total_seconds()) < 30
    assert 1 <= len(lag["items"]) <= charts.MAX_POINTS and lag["next"] is None
    assert lag["items"][-1]["lag"] == 5 and lag["items"][-1]["pending"] == 5

    odd = get(logged_in, f"/api/streams/{q(ODD + u)}")
    assert odd["name"] == f"{ODD}{u}" and odd["recorded"] == 1
    [c] = get(logged_in, f"/api/streams/{q(ODD + u)}/consumers")["items"]
    assert c["name"] == f"c{ODD}"
    assert get(logged_in, f"/api/streams/{q(ODD + u)}/consumers/{q('c' + ODD)}")["lag"] == 1
    assert get(logged_in, f"/api/streams/{q(ODD + u)}/consumers/{q('c' + ODD)}/lag")["items"]


# --- who may call it ----------------------------------------------------------------------------

URLS = ["/api/streams", "/api/streams/HERE", "/api/streams/HERE/consumers",
        "/api/streams/HERE/consumers/app", "/api/streams/HERE/consumers/app/lag"]  # fmt: skip


def _here() -> Stream:
    now = datetime.now(UTC)
    stream = Stream.objects.create(name="HERE", created=now, retention="limits")
    Consumer.objects.create(stream=stream, name="app", last_seen=now)
    return stream


def test_anonymous_callers_get_401_with_a_reason(client, db):
    _here()
    for url in [*URLS, "/api/streams?limit=0"]:  # before its parameters are looked at
        body = get(client, url, 401)
        assert "log in" in body["detail"], url


def test_the_same_calls_answer_a_logged_in_user(logged_in, db):
    _here()
    for url in URLS:
        get(logged_in, url)


def test_unsafe_methods_need_the_csrf_token_of_the_session(db):
    """Checked by the session class itself, only once it knows the session is valid: a request
    without a session (a bearer token, #14) is left to the next class."""
    user = User.objects.create_user("bob", password="bob-password-1")
    auth, factory = SessionAuth(), RequestFactory()
    post = factory.post("/api/streams")
    post.user = user
    with pytest.raises(HttpError) as refused:
        auth(post)
    assert refused.value.status_code == 403
    good = factory.post("/api/streams")
    good.user = user
    token = get_token(good)
    signed = factory.post("/api/streams", HTTP_X_CSRFTOKEN=token)
    signed.user, signed.COOKIES["csrftoken"] = user, good.META["CSRF_COOKIE"]
    assert auth(signed) == user
    reading = factory.get("/api/streams")
    reading.user = user
    assert auth(reading) == user
    anonymous = factory.post("/api/streams")
    anonymous.user = AnonymousUser()
    assert auth(anonymous) is None  # no CSRF refusal: the next auth class gets its turn


# --- unknown names ------------------------------------------------------------------------------


def test_unknown_streams_and_consumers_are_404_with_a_reason(logged_in, db):
    stream = _here()
    for url in URLS[1:]:
        assert "'NOPE' is not known" in get(logged_in, url.replace("HERE", "NOPE"), 404)["detail"]
    for url in URLS[3:]:
        body = get(logged_in, url.replace("app", "nobody"), 404)
        assert body["detail"] == "consumer 'nobody' of stream 'HERE' is not known"
    Consumer.objects.filter(name="app").update(deleted_at=datetime.now(UTC))
    assert "was deleted" in get(logged_in, URLS[3], 404)["detail"]
    Stream.objects.filter(pk=stream.pk).update(deleted_at=datetime.now(UTC))
    assert "'HERE' was deleted" in get(logged_in, URLS[1], 404)["detail"]
    assert get(logged_in, "/api/streams")["items"] == []


# --- bad parameters -----------------------------------------------------------------------------


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


BAD_CURSORS = [
    "not a cursor", "!!!!", "e30", _cursor([]), _cursor({"s": "streams"}),
    _cursor({"s": "consumers", "k": ["a", 1]}),  # another list's cursor
    _cursor({"s": "streams", "k": ["a"]}), _cursor({"s": "streams", "k": ["a", "1"]}),
    _cursor({"s": "streams", "k": ["a", 2**63]}), _cursor({"s": "streams", "k": ["a", True]}),
    _cursor({"s": "streams", "k": ["a\x00", 1]}), _cursor({"s": "streams", "k": [None, 1]}),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(), "x" * 5000,
]  # fmt: skip


def test_each_bad_parameter_answers_400_naming_it(logged_in, db):
    _here()
    for url in ("/api/streams", "/api/streams/HERE/consumers"):
        for limit in (0, -1, MAX_LIMIT + 1, 10**30, "ten", "1.5", ""):
            assert fields_refused(logged_in, url, limit=limit) == ["limit"], (url, limit)
    for cursor in BAD_CURSORS:
        assert fields_refused(logged_in, "/api/streams", cursor=cursor) == ["cursor"], cursor
    assert fields_refused(logged_in, "/api/streams", kind="queue") == ["kind"]
    lag = URLS[4]
    for value in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-20T25:00:00Z", "1e400"):
        assert fields_refused(logged_in, lag, since=value) == ["since"], value
        assert fields_refused(logged_in, lag, until=value) == ["until"], value
    later, earlier = "2026-11-20T12:00:00Z", "2026-11-20T11:00:00Z"
    assert fields_refused(logged_in, lag, since=later, until=earlier) == ["since"]
    assert fields_refused(logged_in, lag, since=later, until=later) == ["since"]
    assert fields_refused(logged_in, lag, until="0001-01-01T00:00:00Z") == ["until"]
    assert fields_refused(logged_in, lag, since="9999-12-31T23:00:00Z") == ["since"]  # > now
    # the far ends of what a time can say are a valid range, of nothing
    widest = get(
        logged_in, lag, since="0001-01-01T00:00:00+14:00", until="9999-12-31T23:59:59-14:00"
    )
    assert widest["items"] == [] and widest["bucket_seconds"] > 500_000_000
    # an offset Python takes and PostgreSQL cannot hold (found by schemathesis): a 200, in UTC
    odd = get(logged_in, lag, since="2026-11-20T10:00:00-21:14", until="2026-11-22T00:00:00Z")
    assert odd["since"].startswith("2026-11-21T07:14:00")


# --- pages --------------------------------------------------------------------------------------


def test_pages_of_streams_follow_the_cursor_without_duplicate_or_skip_while_streams_arrive(
    logged_in, db
):
    now = datetime.now(UTC)
    for name in ("B", "D", "F", "H", "J", "L", "N"):
        Stream.objects.create(name=name, created=now, retention="limits")
    first = get(logged_in, "/api/streams", limit=3)
    assert [s["name"] for s in first["items"]] == ["B", "D", "F"] and first["next"]
    # one before the cursor (not shown: already paged past), one after it (shown in turn)
    Stream.objects.create(name="A", created=now, retention="limits")
    Stream.objects.create(name="G", created=now, retention="limits")
    second = get(logged_in, "/api/streams", limit=3, cursor=first["next"])
    assert [s["name"] for s in second["items"]] == ["G", "H", "J"]
    third = get(logged_in, "/api/streams", limit=3, cursor=second["next"])
    assert [s["name"] for s in third["items"]] == ["L", "N"] and third["next"] is None
    # the same name twice (two live incarnations): the id breaks the tie
    Stream.objects.create(name="N", created=now - timedelta(days=1), retention="limits")
    names = []
    cursor = None
    while True:
        page = get(logged_in, "/api/streams", limit=1, **({"cursor": cursor} if cursor else {}))
        names += [s["name"] for s in page["items"]]
        if not (cursor := page["next"]):
            break
    assert names == ["A", "B", "D", "F", "G", "H", "J", "L", "N", "N"]
    assert get(logged_in, "/api/streams", limit=MAX_LIMIT)["next"] is None


def test_a_cursor_is_opaque_base64url_json_of_the_last_key(logged_in, db):
    now = datetime.now(UTC)
    a = Stream.objects.create(name="A", created=now, retention="limits")
    Stream.objects.create(name="B", created=now, retention="limits")
    assert get(logged_in, "/api/streams", limit=1)["next"] == encode("streams", ["A", a.id])


# --- the lag series -----------------------------------------------------------------------------


def test_the_lag_series_covers_the_range_asked_in_at_most_600_points(logged_in, db):
    stream = _samples(db)  # app: raw samples every 5 s for 25 h, downsampled to 7 days
    Consumer.objects.create(stream=stream, name="app", last_seen=NOW)
    url = "/api/streams/CHART/consumers/app/lag"
    week = get(logged_in, url, since=(NOW - timedelta(days=7)).isoformat(), until=NOW.isoformat())
    points = week["items"]
    assert 500 <= len(points) <= charts.MAX_POINTS
    assert week["bucket_seconds"] == charts.bucket_seconds("7d")
    times = [datetime.fromisoformat(p["t"]) for p in points]
    assert times == sorted(times) and NOW - timedelta(days=7) < times[0] and times[-1] <= NOW
    old = [p["lag"] for p, t in zip(points, times, strict=True) if t < NOW - timedelta(days=2)]
    assert old and all(1000 <= lag < 5000 for lag in old)  # the downsampled samples
    # the same as the page's 7-day chart draws
    assert [p["lag"] for p in points] == charts.lag_chart(stream.id, ["app"], "7d",
                                                          NOW).series["app"]  # fmt: skip
    # 15 minutes: one point per raw sample, the time of the sample; a naive time is UTC
    since = (NOW - timedelta(minutes=15)).replace(tzinfo=None).isoformat()
    short = get(logged_in, url, since=since, until=NOW.isoformat())
    assert len(short["items"]) == 180 and short["items"][-1]["t"].startswith("2026-11-20T12:00:00")
    assert (short["items"][-1]["pending"], short["items"][-1]["ack_pending"]) == (0, 1)
    # until alone: the hour before it
    hour = get(logged_in, url, until=(NOW - timedelta(days=3)).isoformat())
    assert len(hour["items"]) == 60 and hour["since"].startswith("2026-11-17T11:00:00")
    assert get(logged_in, url, until="2000-01-01T00:00:00Z")["items"] == []
    ConsumerSample.objects.all().delete()
    assert get(logged_in, url)["items"] == []


# --- the framework ------------------------------------------------------------------------------


def test_the_openapi_document_and_the_docs_page_need_a_login(client, db):
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/api/docs").status_code == 302  # to the login page


def test_the_openapi_document_and_the_docs_page_load_nothing_from_elsewhere(logged_in, db):
    client = logged_in
    schema = get(client, "/api/openapi.json")
    assert set(schema["paths"]) >= {"/api/streams", "/api/streams/{name}",
                                    "/api/streams/{name}/consumers/{consumer}/lag"}  # fmt: skip
    response = client.get("/api/docs")
    html = response.content.decode()
    assert response.status_code == 200 and "/api/openapi.json" in html
    assert "/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js" in html
    assert "/static/js/api-docs.js" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    assert "<script>" not in html and "<script " in html  # every script is a file
    assert html.count("<script src=") == html.count("<script")
    assert 'id="back-to-dashboard" href="/"' in html  # a way back
    assert 'style="' not in html  # (the CSP allows no inline style)


def test_every_page_links_the_pages_the_top_bar_has_no_room_for(logged_in, db):
    """Traces, replay jobs, API tokens, the API docs and metrics: each in the footer, each there."""
    page = logged_in.get("/").content.decode()
    footer = page[page.index('<footer class="site-foot">') : page.index("</footer>")]
    links = re.findall(r'href="([^"]+)"', footer)
    assert links == ["/traces/", "/replays/", "/tokens/", "/api/docs", "/metrics"]
    for link in links:
        assert logged_in.get(link).status_code == 200, link


def test_a_path_under_api_that_names_no_operation_is_a_json_404(logged_in, client, db):
    for who in (logged_in, client):
        for url in ("/api/", "/api/nope", "/api/streams/", "/api/streams/a/b/c/d/e/f"):
            assert "no such API endpoint" in get(who, url, 404)["detail"], url
