"""Structured logs for every Flowscope process (structlog over the standard library).

Every `logging.getLogger(...)` call goes through structlog's ProcessorFormatter: one JSON object
per line in production, a readable line in development, each with the time (UTC, ISO 8601),
level, logger and, when written inside a span (a web request, a NATS message being handled, a
tap batch), the OpenTelemetry `trace_id` and `span_id`.

`FLOWSCOPE_LOG_FORMAT` picks `json` or `console`; by default `json` when `DJANGO_DEBUG` is off
(production) and `console` otherwise (`make run`). `FLOWSCOPE_LOG_LEVEL` sets the level (INFO).

Django processes get it from settings.LOGGING (`logging_config()`); others call `configure()`.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import trace

FORMATS = ("json", "console")


def log_format(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    chosen = env.get("FLOWSCOPE_LOG_FORMAT", "").strip().lower()
    if chosen in FORMATS:
        return chosen
    if chosen:
        raise ValueError(f"FLOWSCOPE_LOG_FORMAT must be json or console, not {chosen!r}")
    debug = env.get("DJANGO_DEBUG", "True").strip().lower() in ("1", "true", "yes", "on")
    return "console" if debug else "json"


def add_trace_context(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` of the span current where the line was written, if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def _shared() -> list[Any]:
    """What every line gets, whether written through logging or structlog."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]


def formatter(fmt: str = "console") -> structlog.stdlib.ProcessorFormatter:
    """The logging.Formatter rendering each record as `fmt` (for dictConfig's "()")."""
    render: list[Any]
    if fmt == "json":
        render = [
            structlog.processors.format_exc_info,  # the traceback as one string field
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        render = [
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    _configure_structlog()
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )


def _configure_structlog() -> None:
    """structlog.get_logger() lines go the same way as logging's."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def logging_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A logging.config.dictConfig for the whole process: stderr, structured."""
    env = os.environ if env is None else env
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {"()": "eventbus.logs.formatter", "fmt": log_format(env)},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "structured"},
        },
        "root": {"handlers": ["console"], "level": env.get("FLOWSCOPE_LOG_LEVEL", "INFO")},
        "loggers": {
            "django.channels.server": {"level": "WARNING"},
            # Django's own handlers (its plain console one with DEBUG on, mail to admins) go:
            # its records reach the root's structured handler once
            "django": {"handlers": [], "level": "INFO", "propagate": True},
        },
    }


def configure(env: Mapping[str, str] | None = None) -> None:
    """Set up logging for a process that does not load Django's settings."""
    logging.config.dictConfig(logging_config(env))
