"""The web app's Prometheus metrics, served at /metrics by each web process.

Each Daphne process counts for itself and answers /metrics with its own figures (Prometheus
scrapes each one; sum over `instance`). A registry of the web app's own: prometheus_client's
global one would also carry whatever else the process happens to import.

- HTTP: requests by method, route (the URL pattern, never the path: low cardinality) and
  status; their latency in seconds; exceptions raised by views.
- Live: websocket clients open now; digests received from the taps, topic renders, and pushes
  fanned out to the sockets' groups (the hub's own counters, read at scrape time); whether the
  hub's NATS connection is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.django import PrometheusDjangoView
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from eventbus.httpserver import bearer_ok

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
REGISTRY.register(GC_COLLECTOR)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "flowscope_http_requests",
    "HTTP requests answered, by method, route (URL pattern) and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "flowscope_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route (URL pattern).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
HTTP_EXCEPTIONS = Counter(
    "flowscope_http_exceptions",
    "Exceptions raised by views (answered 500), by route and exception type.",
    ["route", "exception"],
    registry=REGISTRY,
)


def websocket_clients() -> float:
    from dashboard.live import consumer

    return float(consumer.clients)


Gauge(
    "flowscope_websocket_clients",
    "Live websockets open in this web process.",
    registry=REGISTRY,
).set_function(websocket_clients)


class LiveCollector(Collector):
    """The live hub's counters (dashboard/live/hub.py), read when scraped."""

    def collect(self) -> Iterator[Metric]:
        from dashboard.live import hub

        live = hub._hub  # None until the first socket of this process
        figures = (
            ("flowscope_live_digests_received", "Digests received from the taps.", "digests"),
            ("flowscope_live_renders", "Live topics rendered (once per tick, for all the "
             "sockets that show them).", "renders"),
            ("flowscope_live_pushes", "Renderings fanned out to the sockets' groups.", "pushes"),
        )  # fmt: skip
        for name, text, attribute in figures:
            yield CounterMetricFamily(name, text, value=getattr(live, attribute, 0))
        seconds = SummaryMetricFamily(
            "flowscope_live_render_seconds",
            "Time spent rendering live topics, by kind (overview, stream, tail, ...).",
            labels=["kind"],
        )
        if live is not None:
            for kind in sorted(live.render_counts):
                seconds.add_metric([kind], live.render_counts[kind], live.render_seconds[kind])
        yield seconds
        yield GaugeMetricFamily(
            "flowscope_live_nats_connected",
            "1 while the live hub's NATS subscription is connected.",
            value=1 if live is not None and live.connected else 0,
        )
        yield GaugeMetricFamily(
            "flowscope_live_topics_watched",
            "Live topics some socket of this process shows.",
            value=len(live.watched) if live is not None else 0,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


REGISTRY.register(LiveCollector())


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.route or match.view_name or "unnamed") if match is not None else "unmatched"


class RequestMetrics:
    """Middleware (first in MIDDLEWARE, so it times everything after it): counts each request
    by method, route and status and observes its latency."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in METHODS else "other"
        route = route_of(request)
        HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - start)
        HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        HTTP_EXCEPTIONS.labels(route_of(request), type(exception).__name__).inc()


_SCRAPE = PrometheusDjangoView.as_view(registry=REGISTRY)


def scrape(request: HttpRequest) -> HttpResponseBase:
    """/metrics: this process's figures; with FLOWSCOPE_METRICS_TOKEN set, only for a request
    carrying it as a bearer token (401 and a Bearer challenge otherwise), as the tap's port."""
    if not bearer_ok(settings.FLOWSCOPE_METRICS_TOKEN, request.headers.get("Authorization")):
        response = HttpResponse("a bearer token is needed\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return _SCRAPE(request)
