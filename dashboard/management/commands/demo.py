"""`python manage.py demo`: the demo microservices (eventbus.demo), until SIGINT/SIGTERM."""

import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from eventbus import telemetry
from eventbus.demo.run import DemoConfig, run


class Command(BaseCommand):
    help = "Run the demo microservices (an order saga) against NATS_URL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait-for-tap",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="before the first order, wait up to SECONDS for a tap to watch every demo "
            "stream (make run starts the tap and the demo together)",
        )

    def handle(self, *args: object, **options: object) -> None:
        wait = options["wait_for_tap"]
        assert isinstance(wait, float)
        config = DemoConfig(
            nats_url=settings.NATS_URL,
            rate=settings.FLOWSCOPE_DEMO_RATE,
            failure_rate=settings.FLOWSCOPE_DEMO_FAILURE_RATE,
            service_header=settings.FLOWSCOPE_SERVICE_HEADER,
            wait_for_tap=wait,
            tap_prefix=settings.FLOWSCOPE_SUBJECT_PREFIX,
            metrics_host=settings.FLOWSCOPE_METRICS_HOST,
            metrics_port=settings.FLOWSCOPE_DEMO_METRICS_PORT,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await run(config, stop)

        telemetry.setup("flowscope-demo")  # the services' spans, exported if asked
        asyncio.run(main())
