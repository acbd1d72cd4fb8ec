from django import template

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
