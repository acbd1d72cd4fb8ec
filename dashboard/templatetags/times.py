"""Times as people read them: local time with its zone on screen, ISO 8601 for machines (the
`datetime` and `title` attributes), and durations in nanoseconds (NATS configs) in words."""

from __future__ import annotations

import re
from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter(name="local")
def local(value: datetime | None) -> str:
    """'2025-05-01 14:03:05 CEST': the date, the time to the second and the zone's abbreviation,
    in the current time zone (settings.TIME_ZONE)."""
    if value is None:
        return "never"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


@register.filter(name="iso")
def iso(value: datetime | None) -> str:
    """ISO 8601 with the offset, to the millisecond, in the current time zone."""
    if value is None:
        return ""
    return timezone.localtime(value).isoformat(timespec="milliseconds")


_CODE = re.compile(r"`([^`]+)`")


@register.filter(name="code_spans")
def code_spans(value: str) -> list[tuple[str, bool]]:
    """'run `make`' -> [('run ', False), ('make', True)]: the template puts the True parts in
    <code> (each part autoescaped), so a note can name a command without literal backticks."""
    parts: list[tuple[str, bool]] = []
    for i, text in enumerate(_CODE.split(value or "")):
        if text:
            parts.append((text, i % 2 == 1))
    return parts
