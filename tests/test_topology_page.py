"""The topology page for a small hand-made flow recorded by a real tap (real nats-server and
PostgreSQL): publishers, subjects, streams, consumers and services in the plain list, rates,
health, and wire text shown as text."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.micro import add_service

from dashboard.pages.topology import cache_clear, topology_live_html
from tests.taputil import eventually, query, tap_running

EVIL_SERVICE = "<script>alert('pwned')</script>"


class ListReader(HTMLParser):
    """Text of each `li[data-node-id]` of #topology-list (its edges included), and its health."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, str] = {}
        self.health: dict[str, str] = {}
        self.stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "li":
            node = a.get("data-node-id")
            self.stack.append(node)
            if node is not None:
                self.nodes[node] = ""
                self.health[node] = a.get("data-health") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "li" and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for node in {n for n in self.stack if n is not None}:
            self.nodes[node] += data

    def text(self, node: str) -> str:
        return re.sub(r"\s+", " ", self.nodes[node]).strip()


def read_list(html: str) -> ListReader:
    start = html.index('id="topology-list"')
    reader = ListReader()
    reader.feed(html[start - 5 :])
    return reader


async def _flow(url: str, database_url: str, u: str) -> None:
    """Stream F<u>_ORDERS (max 20 messages) gets 17: 10 from 'checkout', 5 from a service whose
    name is markup, 2 without the header. Consumer 'billing' (filtered, nobody reads it: its lag
    grows) and 'inventory' (the demo's name: the inventory service's). A micro service 'pricing'."""
    nc = await nats.connect(url, name=f"pricing-{u}")
    js = nc.jetstream()
    stream = f"F{u}_ORDERS"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"flow{u}.>"], max_msgs=20))
    for name, filt in (("billing", f"flow{u}.orders.created"), ("inventory", None)):
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT, filter_subject=filt),
        )
    svc = await add_service(nc, name=f"pricing-{u}", version="1.0.0")

    async def handle(req) -> None:
        await req.respond(b"1")

    await svc.add_endpoint(name="get", subject=f"price{u}.get", handler=handle)
    try:
        async with tap_running(url, database_url):
            for _i in range(10):
                await js.publish(
                    f"flow{u}.orders.created", b"{}", headers={"Flowscope-Service": "checkout"}
                )
            for _i in range(5):
                await js.publish(
                    f"flow{u}.<b>bold</b>&amp;", b"{}", headers={"Flowscope-Service": EVIL_SERVICE}
                )
            for _i in range(2):
                await js.publish(f"flow{u}.audit.x", b"{}")

            async def recorded():
                events = await query(
                    database_url,
                    "SELECT count(*) FROM flowscope_event e JOIN flowscope_stream s "
                    "ON s.id = e.stream_id WHERE s.name = %s",
                    stream,
                )
                lag = await query(
                    database_url,
                    "SELECT num_pending FROM flowscope_consumer WHERE name = 'billing'",
                )
                state = await query(
                    database_url, "SELECT messages FROM flowscope_stream WHERE name = %s", stream
                )
                services = await query(
                    database_url, "SELECT name FROM flowscope_endpoint WHERE kind = 'service'"
                )
                return (
                    events == [(17,)]
                    and lag == [(10,)]
                    and state == [(17,)]
                    and services == [(f"pricing-{u}",)]
                )

            await eventually(recorded, timeout=30, what="the flow recorded")
        # The lag a minute ago was 2: it is growing.
        await query(
            database_url,
            "INSERT INTO flowscope_consumer_sample (ts, stream_id, consumer, num_pending, "
            "num_ack_pending, num_redelivered, num_waiting, delivered_stream_seq, "
            "ack_floor_stream_seq, downsampled) SELECT now() - interval '70 seconds', id, "
            "'billing', 2, 0, 0, 0, 0, 0, false FROM flowscope_stream WHERE name = %s "
            "RETURNING id",
            stream,
        )
    finally:
        await nc.close()


@pytest.fixture
def flow(nats_server, database_url, unique) -> str:
    asyncio.run(_flow(nats_server.url, database_url, unique))
    return str(unique)


def test_the_page_lists_the_flow_with_rates_and_health(client, alice, flow):
    u = flow
    client.login(username=alice[0], password=alice[1])
    response = client.get("/topology/")
    assert response.status_code == 200
    html = response.content.decode()
    nodes = read_list(html)
    stream = f"stream:F{u}_ORDERS"
    # publishers, with messages/s per edge (10 in the 5-minute window: 0.033/s)
    assert nodes.text("publisher:checkout") == (
        f"checkout service header → flow{u}.orders.> 0.033/s"
    )
    assert f"→ flow{u}.audit.> 0.0067/s" in nodes.text("publisher:(no service header)")
    # subjects grouped, with how many subjects each group holds, feeding the stream
    assert (
        nodes.text(f"subject:flow{u}.orders.>")
        == f"flow{u}.orders.> 1 subject → F{u}_ORDERS 0.033/s"
    )
    # the stream at 17 of max_msgs 20: near its limits
    assert nodes.health[stream] == "warn"
    assert "messages at 85% of max_msgs" in nodes.text(stream)
    assert "→ billing 0.033/s" in nodes.text(stream)
    assert "→ inventory 0.057/s" in nodes.text(stream)  # no filter: all 17
    # billing's lag went from 2 to 10 in a minute: growing; inventory's did not
    billing = f"consumer:F{u}_ORDERS/billing"
    assert nodes.health[billing] == "warn"
    assert "lag growing (2 → 10 in a minute)" in nodes.text(billing)
    assert f"filters flow{u}.orders.created" in nodes.text(billing)
    assert nodes.health[f"consumer:F{u}_ORDERS/inventory"] == "ok"
    # consuming services: the demo's durable name, the micro service's endpoint
    assert nodes.text(f"consumer:F{u}_ORDERS/inventory").endswith("→ inventory consumes")
    assert nodes.text("service:inventory") == "inventory demo naming"
    # its connection has the same name: one node, both sources said
    assert nodes.text(f"service:pricing-{u}") == f"pricing-{u} micro service, connection"
    assert f"→ pricing-{u} serves" in nodes.text(f"subject:price{u}.get")
    assert "billing" in nodes.text(billing) and "→" not in nodes.text(billing).split("lag")[0]
    # links
    assert f'href="/streams/F{u}_ORDERS/"' in html
    assert f'href="/streams/F{u}_ORDERS/consumers/billing/"' in html
    assert f'href="/events/?subject=flow{u}.orders.%3E"' in html
    # the summary
    assert "2</strong> need attention" in html


def test_wire_text_shows_as_text(client, alice, flow):
    u = flow
    client.login(username=alice[0], password=alice[1])
    html = client.get("/topology/").content.decode()
    assert EVIL_SERVICE not in html and f"flow{u}.<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    nodes = read_list(html)
    assert nodes.text(f"publisher:{EVIL_SERVICE}").startswith(EVIL_SERVICE)
    assert nodes.text(f"subject:flow{u}.<b>bold</b>&amp;").startswith(f"flow{u}.<b>bold</b>&amp;")
    # in the graph's JSON, markup cannot end the script element
    data = html[html.index('id="topology-data"') :]
    data = data[: data.index("</script>")]
    assert "<" not in data.split(">", 1)[1] and "\\u003Cscript\\u003E" in data


def test_live_html_is_the_partials_marked_out_of_band(flow, django_assert_max_num_queries):
    cache_clear()
    with django_assert_max_num_queries(8):
        html = topology_live_html()
    for element_id in ("topology-data", "topology-summary", "topology-list"):
        assert re.search(rf'id="{element_id}"[^>]*hx-swap-oob="true"', html), element_id
    assert f"F{flow}_ORDERS" in html and "<html" not in html
    assert html.count('hx-swap-oob="true"') == 3


def test_without_data_the_page_says_so(client, alice):
    client.login(username=alice[0], password=alice[1])
    html = client.get("/topology/").content.decode()
    assert "Nothing recorded yet" in html
    assert "not discovered yet" in html
    assert 'ws-connect="/ws/live/?topics=topology"' in html
