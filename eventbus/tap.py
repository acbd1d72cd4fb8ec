"""The tap: watches JetStream and records what it sees (stub: connects and logs)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import nats

log = logging.getLogger("flowscope.tap")


@dataclass
class TapConfig:
    nats_url: str
    database_url: str

    @classmethod
    def from_settings(cls, settings: Any) -> TapConfig:
        return cls(nats_url=settings.NATS_URL, database_url=settings.DATABASE_URL)


async def run(config: TapConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(config.nats_url, name="flowscope-tap")
    log.info("tap connected to %s", config.nats_url)
    await stop.wait()
    await nc.drain()
    log.info("tap stopped")
