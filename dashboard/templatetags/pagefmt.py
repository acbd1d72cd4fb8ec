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
    """Events or messages per second: a dash when unknown, one decimal under 10, whole above."""
    if value is None:
        return UNKNOWN
    if value == 0:
        return "0"
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


@register.filter(name="tojson")
def tojson(value: Any) -> str:
    """A value as JSON, for a data-* attribute. Not marked safe: autoescaping makes it a valid
    attribute value whatever names (from the wire) it holds, and the browser unescapes it."""
    if hasattr(value, "as_json"):
        value = value.as_json()
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
