"""`{% tracing_link trace_id %}`: the link to the team's tracing UI (FLOWSCOPE_TRACE_URL) beside
a trace id, or nothing when it is not configured. One place for every page that shows one."""

from __future__ import annotations

from typing import Any

from django import template

from dashboard.traces import tracing_url

register = template.Library()


@register.inclusion_tag("dashboard/traces/_tracing_link.html")
def tracing_link(trace_id: str | None) -> dict[str, Any]:
    return {"url": tracing_url(trace_id)}


@register.filter(name="duration_ms")
def duration_ms(value: float | None) -> str:
    """Milliseconds as people read them, always with a unit: '0.42 ms', '12.3 ms', '845 ms',
    '1.25 s', '2 min 05 s'."""
    if value is None:
        return "\N{EN DASH}"
    ms = float(value)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1:
        return f"{sign}{ms:.2f} ms"
    if ms < 100:
        return f"{sign}{ms:.1f} ms"
    if ms < 1000:
        return f"{sign}{ms:.0f} ms"
    if ms < 60_000:
        return f"{sign}{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{sign}{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours} h {minutes:02d} min"
