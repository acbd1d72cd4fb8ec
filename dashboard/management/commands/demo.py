"""`python manage.py demo`: the demo services (stub until the demo issue lands)."""

import asyncio
import logging
import signal

from django.core.management.base import BaseCommand

log = logging.getLogger("flowscope.demo")


class Command(BaseCommand):
    help = "Run the demo microservices against NATS_URL."

    def handle(self, *args: object, **options: object) -> None:
        async def wait() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            log.info("demo services: not built yet")
            await stop.wait()

        asyncio.run(wait())
