"""Supervised tasks: a long-running task that fails is seen, restarted, or ends the process.

A task of the tap (the writer, discovery, the lag sampler, retention, the heartbeat) is a
coroutine that runs until `stop` is set. If it raises, or returns while `stop` is not set, the
supervisor logs it at once with the traceback, calls the task's `on_crash` (which puts things
back in a known state: for the writer, stop the observers and give the streams back), waits a
backoff, and starts it again. A task that fails `max_failures` times within `window` seconds
is not retried: the supervisor records the failure as fatal and sets `stop`, so the process ends
and exits non-zero, and the process supervisor (systemd, compose, Kubernetes, `make run`)
restarts it. Never a process that looks alive and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from eventbus.aio import wait_event

log = logging.getLogger("flowscope.supervise")


class TaskEnded(Exception):
    """A supervised task returned although nobody asked it to stop."""


def backoff(failures: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before restart number `failures` (1, 2, ...): doubling, capped."""
    return float(min(cap, first * 2 ** max(0, failures - 1)))


@dataclass
class Supervised:
    name: str
    factory: Callable[[], Awaitable[None]]
    on_crash: Callable[[BaseException], Awaitable[None]] | None = None
    failures: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    restarts: int = 0
    last_error: str = ""
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(
        self,
        stop: asyncio.Event,
        *,
        max_failures: int = 5,
        window: float = 300.0,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ):
        self.stop = stop
        self.max_failures = max_failures
        self.window = window
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.tasks: dict[str, Supervised] = {}
        self.fatal: str | None = None  # why the process must end, once it must

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        on_crash: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> Supervised:
        entry = Supervised(name, factory, on_crash)
        entry.task = asyncio.create_task(self._keep(entry), name=f"supervised:{name}")
        self.tasks[name] = entry
        return entry

    async def _keep(self, entry: Supervised) -> None:
        while not self.stop.is_set():
            try:
                await entry.factory()
                if self.stop.is_set():
                    return
                raise TaskEnded(f"{entry.name} returned while the process runs")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.stop.is_set():  # failing while everything stops: say it, end
                    log.error("%s failed while stopping", entry.name, exc_info=exc)
                    return
                await self._failed(entry, exc)

    async def _failed(self, entry: Supervised, exc: Exception) -> None:
        now = time.monotonic()
        entry.failures.append(now)
        while entry.failures and entry.failures[0] < now - self.window:
            entry.failures.popleft()
        entry.last_error = f"{type(exc).__name__}: {exc}"
        count = len(entry.failures)
        if count >= self.max_failures:
            self.fatal = (
                f"{entry.name} failed {count} times in {self.window:.0f}s "
                f"(last: {entry.last_error}): exiting so the process supervisor restarts it"
            )
            log.critical("%s", self.fatal, exc_info=exc)
            self.stop.set()
            return
        delay = backoff(count, self.first_backoff, self.max_backoff)
        log.error("%s failed: restarting in %.1fs", entry.name, delay, exc_info=exc)
        if entry.on_crash is not None:
            try:
                await entry.on_crash(exc)
            except Exception as again:  # recovery failing is as fatal as the task failing
                self.fatal = f"{entry.name}: recovering from a failure failed too: {again!r}"
                log.critical("%s", self.fatal, exc_info=again)
                self.stop.set()
                return
        entry.restarts += 1
        await wait_event(self.stop, delay)

    def running(self) -> list[asyncio.Task[None]]:
        return [e.task for e in self.tasks.values() if e.task is not None]

    async def wait(self, names: list[str] | None = None, timeout: float = 30.0) -> None:
        """Wait for the named tasks (all by default) to end after `stop` was set; log any
        that did not end within `timeout`."""
        entries = [e for n, e in self.tasks.items() if names is None or n in names]
        tasks = [e.task for e in entries if e.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            log.error("%s did not stop in %.0fs: %s", t.get_name(), timeout, t.get_stack())
            t.cancel()
