"""Tracing (issue #16, item 3): the real web process, tap and demo export their spans over
OTLP/HTTP to a receiver the test runs (decoded with opentelemetry-proto), and their logs carry
the trace ids; NATS spans follow the messaging conventions; nothing is exported, and nothing
said, when no OTEL_* variable asks for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventbus import telemetry
from eventbus.records import parse_traceparent
from tests.otlputil import CLIENT, CONSUMER, PRODUCER, SERVER, ReceivedSpan, otlp_receiver
from tests.taputil import tap_process
from tests.webutil import daphne, get

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def exporting_to(url: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "FLOWSCOPE_LOG_FORMAT": "json"}  # fmt: skip


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:  # the last line, still being written
                continue
    return lines


# --- the NATS span helpers -------------------------------------------------------------------


@pytest.fixture
def memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_publish_is_a_producer_span_carried_in_the_headers(memory):
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    headers = {"Nats-Msg-Id": "o-1.orders.created", "Traceparent": "00-" + "1" * 32 + "-" +
               "2" * 16 + "-01"}  # fmt: skip
    with telemetry.producer_span("orders.created", headers, size=42, tracer=tracer) as span:
        pass
    [finished] = exporter.get_finished_spans()
    assert finished.kind == SpanKind.PRODUCER
    assert finished.name == "publish orders.created"
    assert dict(finished.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.destination.name": "orders.created",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.message.id": "o-1.orders.created",
        "messaging.message.body.size": 42,
    }
    # the old Traceparent (another letter case) is replaced, not doubled
    assert [k for k in headers if k.lower() == "traceparent"] == ["traceparent"]
    ctx = span.get_span_context()
    assert parse_traceparent(headers["traceparent"]) == (
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
    )
    assert finished.parent is None  # nothing current, no parent given: a new trace


def test_a_publish_joins_the_trace_it_is_given_and_a_receive_continues_it(memory):
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    original = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    headers: dict[str, str] = {}
    with telemetry.producer_span("replays.x", headers, parent_traceparent=original, tracer=tracer):
        pass
    received = {"Traceparent": headers["traceparent"], "Nats-Msg-Id": "m-7"}
    with telemetry.consumer_span("replays.x", received, tracer=tracer) as current:
        assert current.get_span_context().trace_id == int("ab" * 16, 16)
    producer, consumer = exporter.get_finished_spans()
    assert producer.context.trace_id == int("ab" * 16, 16)
    assert producer.parent is not None and producer.parent.span_id == int("cd" * 8, 16)
    assert consumer.kind == SpanKind.CONSUMER and consumer.name == "process replays.x"
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.message.id"] == "m-7"


def test_the_exporter_is_chosen_by_the_standard_variables():
    kind = telemetry.exporter_kind
    assert kind({}) is None
    assert kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "otlp"
    assert kind({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == "otlp"
    assert kind({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert kind({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert kind({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) is None
    assert kind({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) is None


SETUP = """
from opentelemetry import trace
from eventbus import telemetry
provider = telemetry.setup("flowscope-probe")
with trace.get_tracer("t").start_as_current_span("s") as span:
    assert span.get_span_context().is_valid  # trace ids for the logs and headers all the same
print(provider.resource.attributes["service.name"],
      len(provider._active_span_processor._span_processors))
"""


def test_nothing_is_exported_or_said_without_otel_variables():
    done = subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["flowscope-probe", "0"]  # no span processor at all
    assert done.stderr == ""
    named = clean_env(OTEL_SERVICE_NAME="orders-eu", OTEL_EXPORTER_OTLP_ENDPOINT="http://x:1")
    done = subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=named,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["orders-eu", "1"], done.stderr


# --- real processes --------------------------------------------------------------------------


def _path_of(span: ReceivedSpan) -> str:
    a = span.attributes
    return str(a.get("url.path") or a.get("http.target") or "")


def test_web_requests_and_their_queries_are_traced_and_logged_with_the_trace_id(
    database_url, nats_server, tmp_path
):
    from dashboard.tokens import PREFIX

    log = tmp_path / "daphne.log"
    with otlp_receiver() as receiver:
        env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
               **exporting_to(receiver.url)}  # fmt: skip
        with daphne(env, log) as web:
            assert get(web + "/no-such-page-here/")[0] == 404
            request = urllib.request.Request(
                web + "/api/events", headers={"Authorization": f"Bearer {PREFIX}not-a-token"}
            )
            try:
                urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
            assert get(web + "/healthz")[0] == 200  # probes are not traced

            def server_span(path: str) -> Any:
                return lambda spans: [s for s in spans if s.kind == SERVER and _path_of(s) == path]

            [missing] = receiver.wait_for(server_span("/no-such-page-here/"), what="the 404")
            [api] = receiver.wait_for(server_span("/api/events"), what="the API request")
            queries = receiver.wait_for(
                lambda spans: [
                    s for s in spans
                    if s.kind == CLIENT and s.trace_id == api.trace_id
                ],
                what="the API request's queries",
            )  # fmt: skip
    assert missing.service == api.service == "flowscope-web"
    assert missing.name == "GET"  # no route
    assert api.name == "GET api/events" and api.attributes["http.route"] == "api/events"
    assert all(q.attributes["db.system"] == "postgresql" for q in queries)
    statements = [str(q.attributes.get("db.statement")) for q in queries]
    assert any("flowscope_api_token" in statement for statement in statements), statements
    assert not [s for s in receiver.received() if _path_of(s) == "/healthz"]
    # The line Django writes inside the request carries the request's trace and span ids.
    lines = json_lines(log.read_text())
    [not_found] = [line for line in lines if "Not Found: /no-such-page-here/" in line["message"]]
    assert not_found["trace_id"] == missing.trace_id
    assert not_found["span_id"] == missing.span_id
    assert not_found["level"] == "warning" and not_found["logger"] == "django.request"


def test_live_sockets_and_renders_are_traced_each_render_with_its_queries(
    database_url, nats_server, tmp_path
):
    """A socket's connect is a server span, the renders it asks for its children; the hub's
    own renders (here its periodic refresh) are traces of their own, never children of the
    socket that started the hub; every query of a render is the render's child."""
    from tests.test_metrics import _open_socket

    with otlp_receiver() as receiver:
        env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
               "FLOWSCOPE_PUBLIC_READ": "1", **exporting_to(receiver.url)}  # fmt: skip
        with daphne(env, tmp_path / "daphne.log") as web:
            ws = _open_socket(web)
            try:

                def named(name: str) -> Any:
                    return lambda spans: [s for s in spans if s.name == name]

                [connect] = receiver.wait_for(named("websocket connect"), what="the connect")
                renders = receiver.wait_for(
                    lambda spans: len(named("live render overview")(spans)) >= 2 and
                    named("live render overview")(spans), timeout=20, what="two renders"
                )  # fmt: skip
            finally:
                ws.close()
            spans = receiver.received()
    assert connect.kind == SERVER and connect.service == "flowscope-web"
    assert connect.attributes["flowscope.live.topics"] == ["overview"]
    first, *later = renders
    assert (first.trace_id, first.parent_span_id) == (connect.trace_id, connect.span_id)
    assert later and all(r.trace_id != connect.trace_id and not r.parent_span_id for r in later)
    for render in renders:
        queries = [s for s in spans if s.kind == CLIENT and s.parent_span_id == render.span_id]
        assert queries and all(q.trace_id == render.trace_id for q in queries)
    # no query of a render was left a root span of its own
    assert not [s for s in spans if s.kind == CLIENT and not s.parent_span_id]


def test_the_web_process_without_otel_variables_exports_nothing_and_says_nothing(
    database_url, nats_server, tmp_path
):
    log = tmp_path / "daphne.log"
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OTEL_")}
    try:
        env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url,
               "FLOWSCOPE_LOG_FORMAT": "json"}  # fmt: skip
        with daphne(env, log) as web:
            assert get(web + "/no-such-page-here/")[0] == 404
            time.sleep(1)
    finally:
        os.environ.update(saved)
    text = log.read_text()
    for word in ("export", "otlp", "opentelemetry", "Traceback"):
        assert word not in text.lower() if word != "Traceback" else word not in text, text
    [not_found] = [line for line in json_lines(text) if "Not Found" in line["message"]]
    assert len(not_found["trace_id"]) == 32  # ids in the logs all the same


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_demo_and_the_tap_export_nats_and_batch_spans_and_log_trace_ids(
    database_url, nats_server, tmp_path
):
    demo_log, tap_log = tmp_path / "demo.log", tmp_path / "tap.log"
    with otlp_receiver() as receiver:
        os.environ.update(exporting_to(receiver.url))
        try:
            tap = tap_process(nats_server.url, database_url, tap_log)
        finally:
            for key in exporting_to(receiver.url):
                os.environ.pop(key)
        env = clean_env(NATS_URL=nats_server.url, DATABASE_URL=database_url,
                        FLOWSCOPE_DEMO_RATE="5", FLOWSCOPE_DEMO_FAILURE_RATE="1",
                        **exporting_to(receiver.url))  # fmt: skip
        with open(demo_log, "ab") as out:
            demo = subprocess.Popen(
                [sys.executable, "manage.py", "demo", "--wait-for-tap", "30"],
                cwd=ROOT, env=env, stdout=out, stderr=out,
            )  # fmt: skip
        try:

            def caused(spans: list[ReceivedSpan]) -> list[tuple[ReceivedSpan, ReceivedSpan]]:
                producers = {s.span_id: s for s in spans if s.kind == PRODUCER}
                return [
                    (producers[s.parent_span_id], s)
                    for s in spans
                    if s.kind == CONSUMER and s.parent_span_id in producers
                ]

            pairs = receiver.wait_for(caused, timeout=40, what="a publish and its receipt")
            commits = receiver.wait_for(
                lambda spans: [s for s in spans if s.name == "tap commit"],
                timeout=20,
                what="the tap's batch spans",
            )
            receiver.wait_for(
                lambda spans: [
                    s for s in spans
                    if s.kind == CLIENT and s.parent_span_id in {c.span_id for c in commits}
                ],
                what="a batch's checkpoint query",
            )  # fmt: skip
            deadline = time.monotonic() + 30  # and a retry logged (a fifth of orders fail so)
            while time.monotonic() < deadline and not [
                line for line in json_lines(demo_log.read_text()) if "retry" in line["message"]
            ]:
                time.sleep(0.2)
        finally:
            _stop(demo)
            _stop(tap)
    producer, consumer = pairs[0]
    assert producer.service == consumer.service == "flowscope-demo"
    assert producer.trace_id == consumer.trace_id
    subject = producer.attributes["messaging.destination.name"]
    assert consumer.attributes["messaging.destination.name"] == subject
    for span, operation in ((producer, "send"), (consumer, "process")):
        assert span.attributes["messaging.system"] == "nats"
        assert span.attributes["messaging.operation.type"] == operation
    msg_id = producer.attributes["messaging.message.id"]  # the demo's Nats-Msg-Id
    assert consumer.attributes["messaging.message.id"] == msg_id and subject in msg_id
    assert producer.attributes["messaging.message.body.size"] > 0
    assert commits[0].service == "flowscope-tap"
    assert any(c.attributes["flowscope.batch.events"] > 0 for c in commits)
    # The demo's lines written while handling a message carry its trace: every order fails on
    # purpose (FAILURE_RATE 1), so retries and poison messages are logged inside consumer spans.
    consumers = {s.span_id: s for s in receiver.received() if s.kind == CONSUMER}
    traced = [line for line in json_lines(demo_log.read_text()) if "trace_id" in line]
    assert traced, demo_log.read_text()[-3000:]
    for line in traced:
        span = consumers.get(line["span_id"])
        assert span is not None and span.trace_id == line["trace_id"], line
    assert any("retry" in line["message"] for line in traced), traced
