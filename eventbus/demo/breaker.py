"""A circuit breaker: after `threshold` consecutive failures calls are refused for `cooldown`
seconds, then one trial call decides whether it closes again."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class CircuitOpen(Exception):
    def __init__(self, retry_in: float):
        super().__init__(f"circuit open: retry in {retry_in:.1f}s")
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False  # a half-open trial call is under way

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def before(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        state = self.state
        if state == "open" or (state == "half-open" and self.trial):
            assert self.opened_at is not None
            raise CircuitOpen(max(0.0, self.opened_at + self.cooldown - self.clock()))
        if state == "half-open":
            self.trial = True

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self.trial or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.trial = False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self.before()
        try:
            result = await fn()
        except Exception:
            self.failure()
            raise
        self.success()
        return result
