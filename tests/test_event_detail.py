"""The event page (/events/<stream>/<seq>/): payload views, the `nats pub` command, the full
payload loaded from the stream, delivery by consumers. Pure functions first, then events recorded
by a real tap from a real nats-server into the real PostgreSQL."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime

import nats
import pytest
from django.test import Client
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from dashboard.event_detail import (
    HexLine,
    hex_dump,
    matches_event,
    nats_pub_command,
    payload_kind,
    payload_view,
    pretty_json,
)
from dashboard.models import Event, Stream
from eventbus.observers import ObserverSettings
from tests.htmltree import Node, parse
from tests.taputil import eventually, in_thread, query, tap_running

# --- pure pieces --------------------------------------------------------------------------------


def test_payload_kind_is_json_then_text_then_binary():
    assert payload_kind(b'{"order": 4711, "items": [1, 2]}') == "json"
    assert payload_kind(b"  [1, 2.50, null]\n") == "json"
    assert payload_kind(b"order 4711 placed") == "text"
    assert payload_kind("größe: 42 €".encode()) == "text"
    assert payload_kind(b"{not json") == "text"
    assert payload_kind(b"") == "text"
    assert payload_kind(b"caf\xe9") == "binary"  # Latin-1, not UTF-8
    assert payload_kind(bytes(range(256))) == "binary"
    assert payload_kind(b"\x08\x2a\x12\x04name") == "binary"  # protobuf: valid UTF-8, binary
    assert payload_kind(b"a\tb\r\nc") == "text"


def test_a_truncated_preview_may_end_inside_a_character_and_is_never_json():
    cut = "€€".encode()[:4]  # the second euro sign cut after its first byte
    assert payload_kind(cut) == "binary"
    assert payload_kind(cut, truncated=True) == "text"
    assert payload_kind(b'{"a": [1, 2', truncated=True) == "text"
    assert payload_kind(b'{"a": 1}', truncated=True) == "text"  # a prefix that parses is a prefix


def test_pretty_json_lays_out_exactly_what_was_sent():
    assert pretty_json('{"b":1.10,"a":[],"a":{},"n":1e400,"t":[true,null]}') == (
        '{\n  "b": 1.10,\n  "a": [],\n  "a": {},\n  "n": 1e400,\n  "t": [\n    true,\n'
        "    null\n  ]\n}"
    )
    assert pretty_json('"<script>\\u202e"') == '"<script>\\u202e"'  # bidi override escaped
    assert pretty_json("[" * 100_000) is None  # too deep to parse: not JSON to us
    assert payload_kind(b"[" * 100_000 + b"]" * 100_000) == "text"
    assert pretty_json("{") is None


def test_hex_dump_has_offset_hex_and_ascii_columns():
    lines = hex_dump(b"Hello, <NATS>!\x00\xff" + bytes(range(16)) + b"xy")
    assert lines[0] == HexLine(
        "00000000", "48 65 6c 6c 6f 2c 20 3c  4e 41 54 53 3e 21 00 ff", "Hello, <NATS>!.."
    )
    assert lines[1].offset == "00000010" and lines[1].ascii == "." * 16
    assert lines[2] == HexLine("00000020", "78 79".ljust(48), "xy")
    assert len({len(line.hex) for line in lines}) == 1  # columns line up
    assert hex_dump(b"") == []


def test_payload_view_bounds_the_hex_dump_and_offers_json_only_for_json():
    view = payload_view(b"\xff" * 200_000)
    assert (view.kind, view.active, len(view.hex), view.hex_cut) == ("binary", "hex", 4096, True)
    assert [k for k, _ in view.views] == ["text", "hex"]
    assert "\ufffd" in view.text  # the text view replaces what is not UTF-8
    view = payload_view(b'{"a":1}')
    assert [k for k, _ in view.views] == ["json", "text", "hex"] and view.highlight
    assert payload_view(b"line\x1b[31m red").kind == "binary"
    assert payload_view("a\u202eb\nc".encode()).text == "a\\u202eb\nc"


NASTY_SUBJECT = "orders.<script>.'$(id)'"
NASTY_PAYLOAD = "-x '; rm -rf / `id` $(id) {{ Random 1 9 }} \"\n<script>alert(1)</script>\n"


def test_nats_pub_command_quotes_everything_and_keeps_it_literal():
    headers = [("X-Note", "it's {{ID}} $HOME"), ("Multi", "a"), ("Multi", "b")]
    pub = nats_pub_command(NASTY_SUBJECT, headers, NASTY_PAYLOAD.encode())
    assert pub.command is not None and not pub.caveats
    args = shlex.split(pub.command)  # what a POSIX shell hands to `nats`
    assert args == [
        "nats", "pub", "--no-templates", "-H", "X-Note:it's {{\"{{\"}}ID}} $HOME",
        "-H", "Multi:a", "-H", "Multi:b", "--", NASTY_SUBJECT, NASTY_PAYLOAD,
    ]  # fmt: skip
    # the header value goes through Go's text/template in the CLI: {{"{{"}} renders "{{"
    assert args[4].replace('{{"{{"}}', "{{") == "X-Note:it's {{ID}} $HOME"
    spaced = nats_pub_command("a", [("K", " v ")], b"x")
    assert spaced.caveats == ["the nats CLI trims the spaces around the value of K"]


def test_a_message_fetched_from_the_stream_must_be_the_recorded_event():
    event = Event(seq=6, subject="a.b", size=6, payload=b"abc", truncated=True)
    assert matches_event(event, "a.b", b"abcdef")
    assert not matches_event(event, "a.c", b"abcdef")  # another subject: a re-created stream
    assert not matches_event(event, "a.b", b"abXdef")  # another payload
    assert not matches_event(event, "a.b", b"abcdefg")  # another size


def test_nats_pub_command_refuses_binary_and_truncated_payloads():
    assert nats_pub_command("a", [], b"\xff\xfe").command is None
    assert "binary" in nats_pub_command("a", [], b"a\x00b").reason
    truncated = nats_pub_command("a", [], b"abc", truncated=True)
    assert truncated.command is None and "full payload" in truncated.reason


# --- pages of events a real tap recorded ---------------------------------------------------------


@pytest.fixture
def logged_in(client: Client, alice: tuple[str, str]) -> Client:
    client.login(username=alice[0], password=alice[1])
    return client


def page(client: Client, url: str, status: int = 200) -> Node:
    response = client.get(url)
    assert response.status_code == status, response.content[:800]
    return parse(response.content.decode())


def text(node: Node) -> str:
    return " ".join(node.text().split())


def facts(tree: Node, id_: str) -> dict[str, str]:
    """A <dl>'s label -> value (whitespace collapsed)."""
    out = {}
    for div in tree.by_id(id_).top():
        dt, *dds = [e for e in div.top() if e.tag in ("dt", "dd")]
        out[dt.text().strip()] = " ".join(text(d) for d in dds)
    return out


BINARY = bytes(range(256)) * 2
INVALID = b"total: 12\xe9 \xff\xfe ok"
SCRIPT = "<script>alert('payload')</script>"
HEADERS = {"X-Evil": "<script>alert('header')</script>", "Flowscope-Service": "billing",
           "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}  # fmt: skip


async def _record(nats_url: str, database_url: str, u: str, preview: int = 64 * 1024,
                  extra: object = None) -> None:  # fmt: skip
    """Stream EV_<u> (events.<u>.>, direct gets allowed) with consumer `billing` (filter
    events.<u>.orders.>, acks the first message) and `audit` (filter events.<u>.audit); a
    work-queue stream WQ_<u> (recorded by a subject subscription: no sequences). Publishes
    seq 1 JSON, 2 text, 3 binary, 4 invalid UTF-8, 5 markup in subject, payload and headers,
    6 a 100 KiB JSON document; waits until the tap recorded all and sampled billing's ack."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"EV_{u}", subjects=[f"events.{u}.>"],
                                     allow_direct=True))  # fmt: skip
    await js.add_stream(StreamConfig(name=f"WQ_{u}", subjects=[f"wq.{u}"],
                                     retention=RetentionPolicy.WORK_QUEUE))  # fmt: skip
    await js.add_consumer(f"EV_{u}", ConsumerConfig(
        durable_name="billing", ack_policy=AckPolicy.EXPLICIT,
        filter_subject=f"events.{u}.orders.>"))  # fmt: skip
    await js.add_consumer(
        f"EV_{u}",
        ConsumerConfig(
            durable_name="audit", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"events.{u}.audit"
        ),
    )
    observer = ObserverSettings(inactive_threshold=5.0, preview_bytes=preview)
    async with tap_running(nats_url, database_url, observer=observer) as tap:

        async def watching() -> bool:
            names = [f"EV_{u}", f"WQ_{u}"]
            return all(n in tap.observers and tap.observers[n].ready.is_set() for n in names)

        await eventually(watching, 30, "the tap watching both streams")
        await js.publish(f"events.{u}.orders.created", b'{"order":4711,"total":12.50}')
        await js.publish(f"events.{u}.orders.note", "plain words, größe 42".encode())
        await js.publish(f"events.{u}.blob", BINARY)
        await js.publish(f"events.{u}.blob", INVALID)
        await js.publish(f"events.{u}.<b>{SCRIPT}", SCRIPT.encode(), headers=HEADERS)
        big = json.dumps({"rows": [{"i": i, "name": f"row {i}"} for i in range(4000)]})
        await js.publish(f"events.{u}.audit", big.encode())
        await js.publish(f"wq.{u}", b"job <b>1</b>")
        sub = await js.pull_subscribe_bind("billing", f"EV_{u}")
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].ack()

        async def done() -> bool:
            rows = await query(
                database_url,
                "SELECT count(*) FROM flowscope_event e JOIN flowscope_stream s "
                "ON s.id = e.stream_id WHERE s.name IN (%s, %s)",
                f"EV_{u}",
                f"WQ_{u}",
            )
            acked = await query(
                database_url,
                "SELECT count(*) FROM flowscope_consumer_sample WHERE consumer = 'billing' "
                "AND ack_floor_stream_seq >= 1",
            )
            return bool(rows[0][0] == 7 and acked[0][0] >= 1)

        await eventually(done, 30, "every event recorded and billing's ack sampled")
    if extra is not None:
        await extra  # type: ignore[misc]
    await nc.close()


def test_each_payload_kind_shows_in_its_view_and_markup_stays_text(
    logged_in, nats_server, database_url, unique
):
    u = unique
    in_thread(_record(nats_server.url, database_url, u))

    json_page = page(logged_in, f"/events/EV_{u}/1/")
    payload = json_page.by_id("payload")
    assert payload.attrs["data-active"] == "json"
    assert "hidden" not in json_page.by_id("view-json").attrs
    assert "hidden" in json_page.by_id("view-text").attrs
    code = json_page.by_id("view-json").find_all("code")[0]
    assert code.attrs["data-highlight"] == "json"
    assert code.text() == '{\n  "order": 4711,\n  "total": 12.50\n}'
    assert text(json_page.by_id("subject")) == f"events.{u}.orders.created"
    shown = facts(json_page, "facts")
    assert shown["Size"] == "28 B payload"
    assert " UTC " in shown["Stream time"] and shown["Stream time"].endswith(" s ago")
    stamp = json_page.by_id("facts").find_all("time")[0].attrs
    assert stamp["title"] == stamp["datetime"] and "T" in str(stamp["title"])  # ISO on hover
    pub = json_page.by_id("pub-command").text()
    assert shlex.split(pub)[-2:] == [f"events.{u}.orders.created", '{"order":4711,"total":12.50}']
    assert page(logged_in, f"/events/EV_{u}/1/?view=hex").by_id("payload").attrs[
        "data-active"] == "hex"  # fmt: skip

    text_page = page(logged_in, f"/events/EV_{u}/2/")
    assert text_page.by_id("payload").attrs["data-active"] == "text"
    assert text_page.by_id("view-text").text() == "plain words, größe 42"
    assert [a.attrs["data-view"] for a in text_page.by_id("payload").find_all("a")] == [
        "text", "hex"]  # fmt: skip

    binary = page(logged_in, f"/events/EV_{u}/3/")
    assert binary.by_id("payload").attrs["data-active"] == "hex"
    dump = binary.by_id("view-hex").text()
    assert "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|" in dump
    assert "00000040  40 41 42 43 44 45 46 47  48 49 4a 4b 4c 4d 4e 4f  |@ABCDEFGHIJKLMNO|" in dump
    assert "binary" in binary.by_id("pub-unavailable").text()
    assert facts(binary, "facts")["Size"] == "512 B payload"

    invalid = page(logged_in, f"/events/EV_{u}/4/")
    assert invalid.by_id("payload").attrs["data-active"] == "hex"
    assert invalid.by_id("view-text").text() == "total: 12\ufffd \ufffd\ufffd ok"
    assert "32 e9 20 ff fe 20 6f 6b  |total: 12. .. ok|" in invalid.by_id("view-hex").text()

    response = logged_in.get(f"/events/EV_{u}/5/")
    body = response.content.decode()
    assert "<script>alert" not in body and "<b>" not in body  # nothing from the wire is markup
    markup = parse(body)
    assert text(markup.by_id("subject")) == f"events.{u}.<b>{SCRIPT}"
    assert markup.by_id("view-text").text() == SCRIPT
    rows = [
        [td.text() for td in tr.find_all("td")] for tr in markup.by_id("headers").find_all("tr")[1:]
    ]
    assert ["X-Evil", HEADERS["X-Evil"]] in rows and len(rows) == 3
    assert markup.by_id("trace-link").attrs["href"] == "/traces/4bf92f3577b34da6a3ce929d0e0e4736/"
    assert facts(markup, "identity")["Service"] == "billing"
    args = shlex.split(markup.by_id("pub-command").text())
    assert args[args.index("--") + 1 :] == [f"events.{u}.<b>{SCRIPT}", SCRIPT]
    assert f"X-Evil:{HEADERS['X-Evil']}" in args

    # delivered-by: billing (orders.>) delivered and acked seq 1; audit's filter does not take it
    delivered = page(logged_in, f"/events/EV_{u}/1/").by_id("delivered")
    rows = [[text(td) for td in tr.find_all("td")] for tr in delivered.find_all("tr")[1:]]
    assert [r[0] for r in rows] == ["billing"]
    assert rows[0][1] == f"events.{u}.orders.>"
    assert rows[0][2].startswith("delivered 20") and rows[0][3].startswith("acked 20")
    # seq 2 (orders.note): billing has not delivered it
    trs = page(logged_in, f"/events/EV_{u}/2/").by_id("delivered").find_all("tr")[1:]
    assert [text(td) for td in trs[0].find_all("td")][2:] == ["not yet", DASH]
    # seq 6 (audit): audit's filter takes it, billing's does not; nothing fetched by audit
    trs = page(logged_in, f"/events/EV_{u}/6/").by_id("delivered").find_all("tr")[1:]
    assert [text(tr.find_all("td")[0]) for tr in trs] == ["audit"]

    # an event recorded without a sequence (a work-queue stream: a subject subscription)
    unsequenced = Event.objects.get(stream__name=f"WQ_{u}")
    assert unsequenced.seq is None
    tree = page(logged_in, f"/events/WQ_{u}/id/{unsequenced.id}/")
    assert tree.by_id("view-text").text() == "job <b>1</b>"
    assert "without a stream sequence" in tree.by_id("delivered").text()
    page(logged_in, f"/events/EV_{u}/id/{unsequenced.id}/", 404)  # not that stream's event


DASH = "\N{EN DASH}"


def test_a_truncated_preview_loads_the_full_payload_from_the_stream_until_it_is_purged(
    logged_in, nats_server, database_url, unique, settings
):
    u = unique
    settings.NATS_URL = nats_server.url
    in_thread(_record(nats_server.url, database_url, u, preview=1024))
    event = Event.objects.get(stream__name=f"EV_{u}", seq=6)
    assert event.truncated and len(bytes(event.payload)) == 1024

    tree = page(logged_in, f"/events/EV_{u}/6/")
    assert tree.by_id("payload").attrs["data-active"] == "text"  # a cut JSON document is text
    note = text(tree.by_id("payload-note"))
    assert f"showing the first 1.0 KiB of {event.size / 1024:.1f} KiB" in note
    button = tree.by_id("load-full")
    assert button.attrs["hx-get"] == f"/events/EV_{u}/6/payload/"
    assert "full payload" in tree.by_id("pub-unavailable").text()

    full = page(logged_in, button.attrs["hx-get"])
    assert full.by_id("payload").attrs["data-active"] == "json"
    shown = full.by_id("view-json").text()
    assert json.loads(shown)["rows"][3999] == {"i": 3999, "name": "row 3999"}
    assert "loaded from the stream" in text(full.by_id("payload-note"))
    assert shlex.split(full.by_id("pub-command").text())[-1] == json.dumps(
        {"rows": [{"i": i, "name": f"row {i}"} for i in range(4000)]})  # fmt: skip
    # an untruncated event has nothing to load
    assert b'id="load-full"' not in logged_in.get(f"/events/EV_{u}/1/").content

    # the stream without direct gets (a direct get has no responder): STREAM.MSG.GET instead
    async def no_direct() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        config = (await js.stream_info(f"EV_{u}")).config
        config.allow_direct = False
        await js.update_stream(config)
        await nc.close()

    in_thread(no_direct())
    Stream.objects.filter(name=f"EV_{u}").update(config={"allow_direct": False})
    assert "loaded from the stream" in text(page(logged_in, button.attrs["hx-get"]).by_id(
        "payload-note"))  # fmt: skip

    # deleted and created again behind Flowscope's back (no tap running to notice): sequence 6
    # is another message now, and the page says so instead of showing it as this event
    async def recreate() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.delete_stream(f"EV_{u}")
        await js.add_stream(StreamConfig(name=f"EV_{u}", subjects=[f"events.{u}.>"]))
        for _ in range(6):
            await js.publish(f"events.{u}.audit", b"x" * event.size)  # even the same size
        await nc.close()

    in_thread(recreate())
    other = page(logged_in, button.attrs["hx-get"])
    assert "is not this event any more" in other.by_id("fetch-message").text()

    async def purge() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().purge_stream(f"EV_{u}")
        await nc.close()

    in_thread(purge())
    gone = page(logged_in, button.attrs["hx-get"])
    assert "no longer holds sequence 6" in gone.by_id("fetch-message").text()
    assert "showing the first 1.0 KiB" in text(gone.by_id("payload-note"))  # preview kept

    nats_server.stop()
    down = page(logged_in, button.attrs["hx-get"])
    assert "NATS is unreachable" in down.by_id("fetch-message").text()


def test_unknown_streams_and_sequences_are_404_and_pages_need_a_login(client, logged_in, db):
    tree = page(logged_in, "/events/NOPE/1/", 404)
    assert "has not seen a stream" in tree.by_id("missing").text()
    Stream.objects.create(name="HERE", created=datetime.now(UTC), retention="limits")
    assert "no sequence 7" in text(page(logged_in, "/events/HERE/7/", 404).by_id("missing"))
    page(logged_in, "/events/HERE/id/123/", 404)
    assert logged_in.get("/events/HERE/7/payload/").status_code == 404
    client.logout()
    for url in ("/events/HERE/7/", "/events/HERE/id/1/", "/events/HERE/7/payload/"):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
