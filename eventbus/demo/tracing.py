"""W3C trace context in NATS headers: each message carries the producer span that sent it, and
whatever a service publishes while handling a message is a child of that message's span. The
spans themselves are eventbus.telemetry's (messaging conventions); this picks the tracer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span

from eventbus import telemetry


class Tracing:
    """The demo's spans, from `provider` (tests) or the process's own (eventbus.telemetry)."""

    def __init__(self, provider: TracerProvider | None = None):
        if provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
        ):
            # No SDK set up in this process (the demo run in-process, not by its command): a
            # provider of its own, exporting nothing, so its messages still carry real
            # traceparents (no-op spans would inject none) and make journeys.
            provider = TracerProvider()
        self.provider = provider
        self.tracer = (provider or trace).get_tracer("flowscope.demo")

    @contextmanager
    def consuming(self, subject: str, headers: Mapping[str, str] | None) -> Iterator[Span]:
        """The span of handling one message, child of the span that published it."""
        with telemetry.consumer_span(subject, headers, tracer=self.tracer) as span:
            yield span

    @contextmanager
    def producing(
        self,
        subject: str,
        headers: MutableMapping[str, str],
        parent: Span | None,
        size: int | None = None,
    ) -> Iterator[Span]:
        """The span of publishing one message, child of `parent` (None: a new trace); it is
        written into `headers`."""
        context = otel_context.Context()  # no parent: a new trace, whatever span is current
        if parent is not None:
            context = trace.set_span_in_context(parent)
        token = otel_context.attach(context)
        try:
            with telemetry.producer_span(subject, headers, size=size, tracer=self.tracer) as span:
                yield span
        finally:
            otel_context.detach(token)
