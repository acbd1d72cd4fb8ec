"""W3C trace context in NATS headers: each message carries the producer span that sent it, and
whatever a service publishes while handling a message is a child of that message's span."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()


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


def extract(headers: Mapping[str, str] | None) -> Context:
    return PROPAGATOR.extract(headers or {}, getter=GETTER)


def inject(headers: dict[str, str], span: Span) -> None:
    PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))


class Tracing:
    def __init__(self, provider: TracerProvider | None = None):
        self.provider = provider or TracerProvider()
        self.tracer = self.provider.get_tracer("flowscope.demo")

    @contextmanager
    def consuming(self, subject: str, headers: Mapping[str, str] | None) -> Iterator[Span]:
        """The span of handling one message, child of the span that published it."""
        with self.tracer.start_as_current_span(
            f"{subject} process",
            context=extract(headers),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject},
        ) as span:
            yield span

    @contextmanager
    def producing(self, subject: str, msg_id: str, parent: Span | None) -> Iterator[Span]:
        context = trace.set_span_in_context(parent) if parent is not None else Context()
        with self.tracer.start_as_current_span(
            f"{subject} publish",
            context=context,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": msg_id,
            },
        ) as span:
            yield span
