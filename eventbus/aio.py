"""Small asyncio helpers shared by the tap's loops."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it is set.

    asyncio.timeout, not asyncio.wait_for: on Python 3.11, wait_for loses a cancellation that
    arrives just as the awaited event fires (gh-86296), and a loop that lost its cancellation
    never stops. asyncio.timeout tells its own cancellation from the caller's."""
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
