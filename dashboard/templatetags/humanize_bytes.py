import unicodedata
from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter(name="bytes")
def human_bytes(value: int | None) -> str:
    """1536 -> '1.5 KiB'. Sizes are shown with binary units, right-aligned in tables."""
    n = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@register.filter(name="ago")
def ago(value: datetime | None) -> str:
    """'4 s ago' under a minute (samples come every few seconds), else Django's timesince."""
    if value is None:
        return "never"
    seconds = (timezone.now() - value).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} s ago"
    return f"{timesince(value)} ago"


@register.filter(name="visible")
def visible(value: object) -> str:
    """Text from the wire, with invisible format characters (bidi overrides, zero-width
    joiners, ...) shown as escapes: a subject cannot pass for another one on screen."""
    text = "" if value is None else str(value)
    if text.isprintable():  # the common case; False for any control or format character
        return text
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cf", "Cc") else c for c in text
    )
