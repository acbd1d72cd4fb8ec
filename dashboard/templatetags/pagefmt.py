"""Numbers and chart data for the stream and consumer pages."""

from __future__ import annotations

import json
from typing import Any

from django import template

UNKNOWN = "\N{EN DASH}"  # a figure not known (yet)

register = template.Library()


@register.filter(name="num")
def num(value: int | float | None) -> str:
    """12345 -> '12,345' (tables right-align these)."""
    if value is None:
        return UNKNOWN
    return f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"


@register.filter(name="rate")
def rate(value: float | None) -> str:
    """Events or messages per second: a dash when unknown; two decimals under 1, one under 10,
    whole numbers above (7 events in 5 minutes is 0.02/s, not 0.0)."""
    if value is None:
        return UNKNOWN
    if value == 0:
        return "0"
    if value < 1:
        return f"{value:.2f}"
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


@register.filter(name="tojson")
def tojson(value: Any) -> str:
    """A value as JSON, for a data-* attribute. Not marked safe: autoescaping makes it a valid
    attribute value whatever names (from the wire) it holds, and the browser unescapes it."""
    if hasattr(value, "as_json"):
        value = value.as_json()
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
