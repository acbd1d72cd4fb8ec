"""Topology discovery in the tap: real nats-server (a nats-py micro service, named client
connections), real PostgreSQL. The parsers are fed replies captured from the real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
from nats.micro import add_service

from eventbus import topology
from eventbus.embedded import EmbeddedNats
from tests.taputil import eventually, query, tap_running


async def _orders_service(url: str):
    """A micro service 'orders' (two instances) on connections named 'orders-api', and a
    connection 'billing' with a queue subscription: what the tests discover."""
    conns = []
    for _ in range(2):
        nc = await nats.connect(url, name="orders-api")
        conns.append(nc)
        svc = await add_service(nc, name="orders", version="1.2.0", description="<b>orders</b>")

        async def handle(req) -> None:
            await req.respond(b"ok")

        await svc.add_endpoint(name="create", subject="orders.create", handler=handle)
        await svc.add_group(name="orders.admin").add_endpoint(name="purge", handler=handle)
    billing = await nats.connect(url, name="billing")
    await billing.subscribe("payments.>", queue="billing")
    await billing.subscribe("_INBOX.push-deliver")  # a push consumer's deliver subject
    conns.append(billing)
    await conns[0].request("orders.create", b"{}", timeout=2)
    return conns


async def _ask(url: str, subject: str, payload: bytes = b"") -> list[bytes]:
    nc = await nats.connect(url, name="flowscope-tap-test")
    try:
        return await topology.gather(nc, subject, payload, asyncio.Event(), timeout=0.5)
    finally:
        await nc.close()


async def test_service_rows_from_real_srv_info_and_stats(nats_server):
    conns = await _orders_service(nats_server.url)
    try:
        info = await _ask(nats_server.url, "$SRV.INFO")
        stats = await _ask(nats_server.url, "$SRV.STATS")
    finally:
        for nc in conns:
            await nc.close()
    assert len(info) == 2 and len(stats) == 2  # one answer per instance
    (row,) = topology.service_rows([*info, b"not json", b"[]"], stats)
    assert (row.kind, row.name) == ("service", "orders")
    assert row.subjects == ["orders.admin.purge", "orders.create"]
    assert row.detail["instances"] == 2
    assert row.detail["versions"] == ["1.2.0"]
    assert row.detail["description"] == "<b>orders</b>"
    assert row.detail["requests"] == {"orders.admin.purge": 0, "orders.create": 1}


async def test_connection_rows_from_real_connz(nats_server):
    conns = await _orders_service(nats_server.url)
    web = await nats.connect(nats_server.url, name="flowscope-web")  # a web process's digests
    await web.subscribe("flowscope.digest.>")
    conns.append(web)
    try:
        request = json.dumps({"subscriptions": True, "subscriptions_detail": True}).encode()
        replies = await _ask(nats_server.url, "$SYS.REQ.ACCOUNT.PING.CONNZ", request)
    finally:
        for nc in conns:
            await nc.close()
    assert len(replies) == 1
    rows, probe = topology.connection_rows(replies, keep=["_INBOX.push-deliver"])
    assert probe.ok and probe.source == "connz"
    by_name = {r.name: r for r in rows}
    assert set(by_name) == {"orders-api", "billing"}  # Flowscope's own connections left out
    assert by_name["billing"].subjects == ["_INBOX.push-deliver", "payments.>"]
    assert by_name["billing"].detail["queue_groups"] == ["billing"]
    # $SRV.* and inboxes are plumbing; the endpoints are the application's subscriptions
    assert by_name["orders-api"].subjects == ["orders.admin.purge", "orders.create"]
    assert by_name["orders-api"].detail["connections"] == 2


def test_connz_refused_or_unanswered_is_said_not_hidden():
    rows, probe = topology.connection_rows([])
    assert rows == [] and not probe.ok and "no server answered" in probe.note
    refusal = json.dumps({"server": {}, "error": {"code": 403, "description": "not allowed"}})
    rows, probe = topology.connection_rows([refusal])
    assert not probe.ok and "refused: not allowed" in probe.note


async def test_a_server_that_forbids_sys_requests_degrades_quietly(tmp_path: Path):
    conf = tmp_path / "nats.conf"
    conf.write_text(
        "authorization { users = [ { user: app, password: app-secret, "
        'permissions: { publish: { deny: ["$SYS.>"] } } } ] }\n'
    )
    server = EmbeddedNats(tmp_path / "n", extra_args=("-c", str(conf))).start()
    try:
        url = f"nats://app:app-secret@127.0.0.1:{server.port}"
        conns = await _orders_service(url)
        nc = await nats.connect(url, name="flowscope-tap-test")
        try:
            rows, probes = await topology.discover(nc, [], asyncio.Event())
        finally:
            await nc.close()
            for c in conns:
                await c.close()
    finally:
        server.stop(kill=True)
    assert [r.name for r in rows] == ["orders"]  # micro services still found
    srv, connz = probes
    assert srv.ok and not connz.ok and "no server answered" in connz.note


async def test_the_tap_stores_micro_services_and_connections(nats_server, database_url):
    conns = await _orders_service(nats_server.url)
    try:
        async with tap_running(nats_server.url, database_url):

            async def stored():
                rows = await query(
                    database_url,
                    "SELECT kind, name, subjects FROM flowscope_endpoint ORDER BY kind, name",
                )
                return rows if len(rows) == 3 else None

            rows = await eventually(stored, timeout=20, what="endpoints stored")
            probes = await query(
                database_url, "SELECT source, ok FROM flowscope_discovery_probe ORDER BY 1"
            )
    finally:
        for nc in conns:
            await nc.close()
    assert rows == [
        ("connection", "billing", ["payments.>"]),
        ("connection", "orders-api", ["orders.admin.purge", "orders.create"]),
        ("service", "orders", ["orders.admin.purge", "orders.create"]),
    ]
    assert probes == [("connz", True), ("srv", True)]


async def test_connections_beyond_one_connz_answer_are_paged_in(nats_server):
    """CONNZ answers at most `limit` connections a server: the rest are asked for by offset, so
    a busy server's clients are not cut off (here pages of 5 for 13 named connections)."""
    conns = [await nats.connect(nats_server.url, name=f"client-{i:02d}") for i in range(13)]
    for i, nc in enumerate(conns):
        await nc.subscribe(f"app.{i}")
    asker = await nats.connect(nats_server.url, name="flowscope-tap-test")
    try:
        replies = await topology.connz_pages(asker, asyncio.Event(), limit=5)
        one_page = await topology.connz_pages(asker, asyncio.Event(), limit=5, pages=1)
    finally:
        for nc in [*conns, asker]:
            await nc.close()
    assert len(replies) == 3  # 5 + 5 + 4 (the asker is a connection too)
    rows, probe = topology.connection_rows(replies)
    assert {r.name for r in rows} == {f"client-{i:02d}" for i in range(13)}
    assert "only the first" not in probe.note
    rows, probe = topology.connection_rows(one_page)
    assert len(rows) == 5 and "only the first 5 connections" in probe.note
