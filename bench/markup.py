"""What the live benchmark reads in the HTML the overview pushes (kept apart from bench/live.py,
so tests can check it against the template without the benchmark's websocket client)."""

from __future__ import annotations

import re


def recorded_pattern(stream: str) -> re.Pattern[bytes]:
    """Finds the stream's recorded counter, as shown ("12,345"), in a push of the overview
    (tests/test_live.py checks it against the template: a pattern that finds nothing measures
    nothing)."""
    return re.compile(
        rb'data-stream="'
        + re.escape(stream.encode())
        + rb'".*?data-field="recorded"[^>]*>([\d,]+)',
        re.DOTALL,
    )
