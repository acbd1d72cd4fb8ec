"""/metrics of the tap (its own port) and of the web app, from real processes on real servers:
parsed by prometheus_client's parser, and their counters move when events flow."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlparse

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from eventbus.embedded import free_port
from eventbus.httpserver import ProbeServer, parse_port, readiness
from tests.metricsutil import names, scrape, stop, tap_process, value
from tests.webutil import daphne, get, wait_until


def test_readiness_is_ok_only_when_every_check_is():
    assert readiness({"nats": "ok", "database": "ok"}) == (
        200,
        {"status": "ok", "checks": {"nats": "ok", "database": "ok"}},
    )
    assert readiness({"nats": "unreachable", "database": "ok"}) == (
        503,
        {"status": "unavailable", "checks": {"nats": "unreachable", "database": "ok"}},
    )


def test_a_port_setting_is_a_port_or_off():
    assert parse_port("", 9470) == 9470
    assert parse_port(" 0 ", 9470) == 0
    assert parse_port("9999", 9470) == 9999
    for bad in ("70000", "-1", "http"):
        with pytest.raises(ValueError):
            parse_port(bad, 9470)


def _get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    """(status, WWW-Authenticate, body) of a GET, with `Authorization: Bearer <token>`."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("WWW-Authenticate", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate", ""), exc.read()


async def test_a_metrics_token_guards_the_tap_ports_metrics_not_its_probes():
    """FLOWSCOPE_METRICS_TOKEN: /metrics only with the token as a bearer; probes stay open."""
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("flowscope_probe_test", "a test counter", registry=registry).inc()
    for token, wanted in (("", 200), ("s3cret-token", 401)):
        port = ProbeServer("test", registry, lambda: {"x": "ok"}, port=0, token=token)
        assert await port.start()
        try:
            status, challenge, body = await asyncio.to_thread(_get, port.url + "/metrics")
            assert status == wanted and (challenge == 'Bearer realm="metrics"') == bool(token)
            if token:
                assert b"flowscope_probe_test" not in body
                for wrong in ("s3cret", "s3cret-token2", ""):
                    assert (await asyncio.to_thread(_get, port.url + "/metrics", wrong))[0] == 401
                ok = await asyncio.to_thread(_get, port.url + "/metrics", token)
                assert ok[0] == 200 and b"flowscope_probe_test_total 1.0" in ok[2]
            for probe in ("/healthz", "/readyz"):
                assert (await asyncio.to_thread(_get, port.url + probe))[0] == 200
        finally:
            await port.close()


def test_a_metrics_token_guards_the_web_apps_metrics(client, settings, db):
    settings.FLOWSCOPE_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200
    settings.FLOWSCOPE_METRICS_TOKEN = "s3cret-token"
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"flowscope_http_requests" not in refused.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-token").status_code == 401
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert scraped.status_code == 200 and b"flowscope_http_requests" in scraped.content
    assert client.get("/healthz").status_code == 200


async def publish(url: str, stream: str, subject: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    for i in range(count):
        await js.publish(f"{subject}.n", str(i).encode())
    await nc.close()


async def terminate_one(url: str, stream: str, subject: str) -> None:
    """A consumer gives up on one message (+TERM): a MSG_TERMINATED advisory, a dead letter."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.publish(f"{subject}.poison", b"{not json")
    config = ConsumerConfig(
        durable_name="worker", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{subject}.poison"
    )
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind("worker", stream)
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.term()
    await nc.flush()
    await nc.close()


def test_the_tap_counts_events_batches_lag_and_dead_letters(
    nats_server, database_url, unique, tmp_path
):
    stream, subject = f"M_{unique}", f"m{unique}"
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log", port)
    try:
        before = wait_until(lambda: scrape(metrics), 30, "the tap's /metrics")
        assert value(before, "flowscope_tap_events_ingested_total", stream=stream) == 0
        asyncio.run(publish(nats_server.url, stream, subject, 250))

        def recorded() -> object:
            series = scrape(metrics)
            return series if value(
                series, "flowscope_tap_events_ingested_total", stream=stream
            ) >= 250 else None  # fmt: skip

        series = wait_until(recorded, 30, "250 events counted")
        assert value(series, "flowscope_tap_events_ingested_total", stream=stream) == 250
        assert value(series, "flowscope_tap_batch_write_seconds_count") >= 1
        assert value(series, "flowscope_tap_batch_write_seconds_sum") > 0
        assert value(series, "flowscope_tap_batch_events_sum") >= 250
        assert value(series, "flowscope_tap_digests_published_total", kind="events") >= 1
        assert value(series, "flowscope_tap_streams_owned") >= 1
        assert value(series, "flowscope_tap_nats_connected") == 1
        assert value(series, "flowscope_tap_database_up") == 1
        assert "process_resident_memory_bytes" in names(series)

        # behind: the lag sampler (every 0.5 s here) sees the stream's last sequence recorded
        def caught_up() -> object:
            s = scrape(metrics)
            key = ("flowscope_tap_stream_behind_messages", frozenset({("stream", stream)}))
            return key in s and s[key] == 0

        wait_until(caught_up, 15, "the stream's behind gauge at 0")

        asyncio.run(terminate_one(nats_server.url, stream, subject))

        def captured() -> object:
            s = scrape(metrics)
            n = value(s, "flowscope_deadletters_captured_total", stream=stream)
            return s if n else None

        series = wait_until(captured, 30, "the dead letter counted")
        assert value(
            series, "flowscope_deadletters_captured_total", stream=stream, reason="terminated"
        ) == 1  # fmt: skip
        assert value(series, "flowscope_tap_events_ingested_total", stream=stream) == 251
    finally:
        stop(tap)


def _open_socket(web: str) -> socket.socket:
    """A websocket on the overview's topic (anonymous: FLOWSCOPE_PUBLIC_READ=1), kept open."""
    parts = urlparse(web)
    s = socket.create_connection((parts.hostname, parts.port), timeout=10)
    s.sendall(
        (
            f"GET /ws/live/?topics=overview HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {web}\r\n\r\n"
        ).encode()
    )
    answer = s.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 101"), answer[:200]
    s.settimeout(0.05)
    return s


def _drain(s: socket.socket) -> None:
    """Read what the server pushed, so its sends never block on this socket."""
    try:
        while s.recv(65536):
            pass
    except (TimeoutError, BlockingIOError):
        pass


def test_the_web_app_counts_requests_sockets_digests_and_pushes(
    nats_server, database_url, unique, tmp_path
):
    tap_port = free_port()
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log", tap_port)
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
           "FLOWSCOPE_PUBLIC_READ": "1"}  # fmt: skip
    try:
        with daphne(env, tmp_path / "daphne.log") as web:
            metrics = web + "/metrics"
            first = scrape(metrics)
            assert value(first, "flowscope_websocket_clients") == 0
            assert get(web + "/healthz")[0] == 200
            assert get(web + "/no/such/page/")[0] == 404
            series = scrape(metrics)
            assert value(series, "flowscope_http_requests_total", method="GET", route="healthz",
                         status="200") == 1  # fmt: skip
            assert value(series, "flowscope_http_requests_total", route="unmatched",
                         status="404") == 1  # fmt: skip
            # the first scrape counted itself once it was answered
            assert value(series, "flowscope_http_requests_total", route="metrics") == 1
            assert value(series, "flowscope_http_request_duration_seconds_count",
                         route="healthz") == 1  # fmt: skip
            assert "process_resident_memory_bytes" in names(series)

            ws = _open_socket(web)
            try:
                wait_until(
                    lambda: value(scrape(metrics), "flowscope_websocket_clients") == 1,
                    10, "one websocket client",
                )  # fmt: skip
                before = scrape(metrics)
                asyncio.run(publish(nats_server.url, f"W_{unique}", f"w{unique}", 20))

                def pushed() -> object:
                    _drain(ws)
                    s = scrape(metrics)
                    moved = all(
                        value(s, n) > value(before, n)
                        for n in ("flowscope_live_digests_received_total",
                                  "flowscope_live_renders_total",
                                  "flowscope_live_pushes_total")
                    )  # fmt: skip
                    return s if moved else None

                series = wait_until(pushed, 30, "digests received, rendered and pushed")
                assert value(series, "flowscope_live_nats_connected") == 1
                assert value(series, "flowscope_live_topics_watched") == 1
                renders = value(series, "flowscope_live_render_seconds_count", kind="overview")
                assert 0 < renders <= value(series, "flowscope_live_renders_total")
                assert value(series, "flowscope_live_render_seconds_sum", kind="overview") > 0
            finally:
                ws.close()
            wait_until(
                lambda: value(scrape(metrics), "flowscope_websocket_clients") == 0,
                10, "the websocket gone",
            )  # fmt: skip
    finally:
        stop(tap)
