"""`python manage.py demo`: the demo microservices (eventbus.demo), until SIGINT/SIGTERM."""

import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from eventbus.demo.run import DemoConfig, run


class Command(BaseCommand):
    help = "Run the demo microservices (an order saga) against NATS_URL."

    def handle(self, *args: object, **options: object) -> None:
        config = DemoConfig(
            nats_url=settings.NATS_URL,
            rate=settings.FLOWSCOPE_DEMO_RATE,
            failure_rate=settings.FLOWSCOPE_DEMO_FAILURE_RATE,
            service_header=settings.FLOWSCOPE_SERVICE_HEADER,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await run(config, stop)

        asyncio.run(main())
