"""OpenTelemetry for every Flowscope process: the tracer provider, set up from the standard
`OTEL_*` variables, and the spans of publishing and receiving NATS messages.

Setting up (once per process, before anything traced runs)::

    from eventbus import telemetry
    telemetry.setup("flowscope-tap")          # the web app calls setup_web() instead

Spans are exported over OTLP/HTTP only when asked: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER` says `otlp` (or
`console`). With none of them nothing is exported and nothing is said about it; spans are still
made, so trace ids reach the logs and W3C `traceparent` headers. `OTEL_SDK_DISABLED=true` turns
it all off; `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) replaces the
process's default name; the exporter reads `OTEL_EXPORTER_OTLP_*` (headers, timeout,
compression) and the batch processor `OTEL_BSP_*`, as the SDK documents.

Publishing a NATS message (messaging semantic conventions, span kind PRODUCER)::

    headers = {"Nats-Msg-Id": msg_id}
    with telemetry.producer_span(subject, headers) as span:
        await js.publish(subject, data, headers=headers)   # headers now carry `traceparent`

The span is a child of the current span, or of `parent_traceparent` when given (a replay passes
the original message's `traceparent`, so the replayed message joins the original trace). Any
`traceparent`/`tracestate` already in `headers`, in any letter case, is replaced.

Handling a received message (span kind CONSUMER, child of the span that published it)::

    with telemetry.consumer_span(msg.subject, msg.headers) as span:
        ...   # logs written here carry the span's trace id

Both set `messaging.system` = `nats`, `messaging.destination.name` = the subject,
`messaging.message.id` = `Nats-Msg-Id` when there is one, and `messaging.operation.type`
(`send` for a publish, the current name of the conventions' former `publish`; `process` or
`receive` for a consumer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("flowscope.telemetry")

PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")
# What the web app does not trace unless OTEL_PYTHON_DJANGO_EXCLUDED_URLS says otherwise: the
# probes and static files (a request every few seconds that would drown the rest).
DJANGO_EXCLUDED_URLS = "/healthz,/readyz,/metrics,/static/"

_provider: Any = None  # the SDK TracerProvider this process set up, if any
_instrumented = False


def envbool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def disabled(env: Mapping[str, str] | None = None) -> bool:
    return envbool(os.environ if env is None else env, "OTEL_SDK_DISABLED")


def exporter_kind(env: Mapping[str, str] | None = None) -> str | None:
    """Which exporter the environment asks for: "otlp", "console" or None (export nothing)."""
    env = os.environ if env is None else env
    if disabled(env):
        return None
    asked = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    asked = [e for e in asked if e]
    if not asked:  # the SDK's default is otlp; ours is to export only where told where to
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return "otlp" if endpoint and endpoint.strip() else None
    for kind in asked:
        if kind in ("otlp", "console"):
            return kind
        if kind != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", kind)
    return None


def _resource(service_name: str, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # Resource.create lets the attributes given here override OTEL_SERVICE_NAME: give the
    # default only when the environment names no service.
    named = env.get("OTEL_SERVICE_NAME", "").strip() or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return Resource.create({} if named else {SERVICE_NAME: service_name})


def setup(service_name: str, env: Mapping[str, str] | None = None) -> Any:
    """Install the process's SDK tracer provider (once; later calls return the first one).
    Returns it, or None when `OTEL_SDK_DISABLED` is set (the API's no-op provider stays)."""
    global _provider
    env = os.environ if env is None else env
    if _provider is not None or disabled(env):
        return _provider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=_resource(service_name, env))
    kind = exporter_kind(env)
    if kind == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol.strip() != "http/protobuf":
            log.warning("OTLP protocol %s is not supported: exporting over http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def setup_web(env: Mapping[str, str] | None = None) -> None:
    """The web app's tracing: the provider, Django's requests and psycopg's queries. Call it
    before Django builds its handler (dashboard/asgi.py does), so the middleware is in place."""
    global _instrumented
    env = os.environ if env is None else env
    if setup("flowscope-web", env) is None or _instrumented:
        return
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    DjangoInstrumentor().instrument(excluded_urls=_excluded(env), response_hook=_name_request)
    PsycopgInstrumentor().instrument()
    _instrumented = True


def _excluded(env: Mapping[str, str]) -> str:
    return env.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", DJANGO_EXCLUDED_URLS)


REQUEST_SPAN = "flowscope.request_span"  # the ASGI scope's key for the request's server span


def traced_http(app: Any, env: Mapping[str, str] | None = None) -> Any:
    """Django's ASGI app inside the request's server span. Django's own middleware span starts
    after some of a request's work and ends before the rest (its "Not Found" and error lines
    are written after the middleware chain), so the span that every line of a request
    carries is opened here, around all of it; Django's is its child, named after the route."""
    env = os.environ if env is None else env
    if _provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def method_only(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(scope.get("method", "HTTP")), {}  # the route, when known, is added later

    def keep_span(span: Span, scope: dict[str, Any]) -> None:
        scope[REQUEST_SPAN] = span

    return OpenTelemetryMiddleware(
        app,
        excluded_urls=_excluded(env),
        default_span_details=method_only,
        server_request_hook=keep_span,
        exclude_spans=["receive", "send"],  # no span per ASGI message
    )


def _name_request(span: Span, request: Any, response: Any) -> None:
    """Name the server span after Django's route ("GET api/events"), as the conventions ask
    (a path would make a name per event, stream and consumer)."""
    scope = getattr(request, "scope", None)
    server = scope.get(REQUEST_SPAN) if isinstance(scope, dict) else None
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if server is not None and route:
        server.update_name(f"{request.method} {route}")
        server.set_attribute("http.route", route)


def instrument_connection(conn: Any) -> Any:
    """Trace one psycopg connection's queries (the tap traces only its writer's, which run
    inside a span per committed batch, not every query of every loop it runs)."""
    if _provider is None:
        return conn
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    return PsycopgInstrumentor.instrument_connection(conn)


def flush(timeout_ms: int = 5000) -> None:
    """Export what is pending now (a process about to end; atexit does it too)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


# --- NATS messages ---------------------------------------------------------------------------


class HeaderGetter(Getter[Mapping[str, str]]):
    """NATS headers, read case-insensitively: `traceparent` may come as `Traceparent`."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        key = key.lower()
        for k, v in carrier.items():
            if k.lower() == key:
                return [v]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


GETTER = HeaderGetter()


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The context a message's `traceparent` names (an empty one without it)."""
    return PROPAGATOR.extract(headers or {}, getter=GETTER)


def inject(headers: MutableMapping[str, str], span: Span) -> None:
    """Write `span` into `headers` as `traceparent` (and `tracestate`), replacing any there."""
    for key in [k for k in headers if k.lower() in TRACE_HEADERS]:
        del headers[key]
    PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))


def _tracer(tracer: Tracer | None) -> Tracer:
    return tracer or trace.get_tracer("flowscope.nats")


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    found = GETTER.get(headers or {}, name)
    return found[0] if found else None


def messaging_attributes(
    subject: str, operation: str, msg_id: str | None, size: int | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": "send" if operation == "publish" else operation,
        "messaging.operation.name": operation,
    }
    if msg_id:
        attributes["messaging.message.id"] = msg_id
    if size is not None:
        attributes["messaging.message.body.size"] = size
    return attributes


@contextmanager
def producer_span(
    subject: str,
    headers: MutableMapping[str, str],
    parent_traceparent: str | None = None,
    *,
    msg_id: str | None = None,
    size: int | None = None,
    tracer: Tracer | None = None,
) -> Iterator[Span]:
    """The span of publishing one message on `subject`; `headers` (mutated) carry it. Its
    parent: the span `parent_traceparent` names, else the current span (none: a new trace)."""
    msg_id = msg_id or _header(headers, "Nats-Msg-Id")
    parent = extract({"traceparent": parent_traceparent}) if parent_traceparent else None
    with _tracer(tracer).start_as_current_span(
        f"publish {subject}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes=messaging_attributes(subject, "publish", msg_id, size),
    ) as span:
        inject(headers, span)
        yield span


@contextmanager
def consumer_span(
    subject: str,
    headers: Mapping[str, str] | None,
    *,
    operation: str = "process",
    msg_id: str | None = None,
    size: int | None = None,
    tracer: Tracer | None = None,
) -> Iterator[Span]:
    """The span of receiving or handling one message (`operation` "process" or "receive"),
    current while it is open: a child of the span that published the message."""
    msg_id = msg_id or _header(headers, "Nats-Msg-Id")
    with _tracer(tracer).start_as_current_span(
        f"{operation} {subject}",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=messaging_attributes(subject, operation, msg_id, size),
    ) as span:
        yield span
