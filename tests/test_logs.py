"""Structured logs (issue #16, item 6): JSON lines in production, readable lines in
development, each written inside a span carrying its trace and span ids."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from eventbus import logs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of its own writing through a handler whose formatter the test sets."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger(f"flowscope.test.{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out, handler
    logger.removeHandler(handler)


def test_it_picks_json_in_production_and_console_in_development():
    assert logs.log_format({}) == "console"  # DJANGO_DEBUG defaults to on, as in settings
    assert logs.log_format({"DJANGO_DEBUG": "0"}) == "json"
    assert logs.log_format({"DJANGO_DEBUG": "0", "FLOWSCOPE_LOG_FORMAT": "console"}) == "console"
    assert logs.log_format({"FLOWSCOPE_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="json or console"):
        logs.log_format({"FLOWSCOPE_LOG_FORMAT": "xml"})


def test_a_json_line_inside_a_span_carries_its_trace_and_span_ids(capture):
    logger, out, handler = capture
    handler.setFormatter(logs.formatter("json"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logger.warning("stream %s: %d events", "ORDERS", 3)
    logger.info("outside")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["message"] == "stream ORDERS: 3 events"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["level"] == "warning" and inside["logger"] == logger.name
    assert inside["timestamp"].endswith("Z")
    assert "trace_id" not in outside and outside["message"] == "outside"


def test_a_json_line_keeps_the_traceback_in_one_field(capture):
    logger, out, handler = capture
    handler.setFormatter(logs.formatter("json"))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("writer failed: restarting")
    [line] = out.getvalue().splitlines()  # one line, whatever the traceback
    record = json.loads(line)
    assert record["message"] == "writer failed: restarting"
    assert "ZeroDivisionError: division by zero" in record["exception"]


def test_a_console_line_reads_as_text_with_the_ids_after_it(capture):
    logger, out, handler = capture
    handler.setFormatter(logs.formatter("console"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("message") as span:
        logger.info("tap %s connected to %s", "t1", "nats://127.0.0.1:4222")
    [line] = out.getvalue().splitlines()
    assert "tap t1 connected to nats://127.0.0.1:4222" in line
    assert "[info" in line and not line.startswith("{")
    assert f"trace_id={span.get_span_context().trace_id:032x}" in line


LOG_FROM_DJANGO = """
import logging, django, structlog
django.setup()
logging.getLogger("flowscope.demo").warning("demo: %s", "plain logging")
structlog.get_logger("flowscope.other").info("structlog too", orders=3)
logging.getLogger("django.request").warning("Not Found: %s", "/no/such/page/")
"""


@pytest.mark.parametrize(
    ("env", "json_lines"),
    [({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50}, True), ({}, False)],
)
def test_a_django_process_logs_structured_lines_to_stderr(env, json_lines, database_url):
    """What manage.py commands and Daphne get from settings.LOGGING."""
    import os

    run_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
               "DATABASE_URL": database_url, **env}  # fmt: skip
    run_env.pop("FLOWSCOPE_LOG_FORMAT", None)
    done = subprocess.run([sys.executable, "-c", LOG_FROM_DJANGO], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # once, structured: not also by Django's own console handler (it prints with DEBUG on)
    assert done.stderr.count("Not Found: /no/such/page/") == 1, done.stderr
    lines = done.stderr.splitlines()[-3:-1]  # after what apps say as they load (axes)
    assert len(lines) == 2, done.stderr
    if json_lines:
        first, second = (json.loads(line) for line in lines)
        assert first["message"] == "demo: plain logging" and first["logger"] == "flowscope.demo"
        assert second["message"] == "structlog too" and second["orders"] == 3
    else:
        assert "demo: plain logging" in lines[0] and "[flowscope.demo]" in lines[0]
        assert "structlog too" in lines[1] and "orders=3" in lines[1]


def test_structlog_configuration_is_left_usable_in_this_process():
    logs.formatter("json")  # configures structlog as a side effect
    assert structlog.is_configured()
