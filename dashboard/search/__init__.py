"""Searching the stored events (the event browser, its live tail and `GET /api/events`)."""

from dashboard.search.filters import KINDS, RANGES, EventFilter, FilterError, parse_filter
from dashboard.search.query import MAX_LIMIT, Coverage, Page, search_events

__all__ = [
    "KINDS",
    "MAX_LIMIT",
    "RANGES",
    "Coverage",
    "EventFilter",
    "FilterError",
    "Page",
    "parse_filter",
    "search_events",
]
