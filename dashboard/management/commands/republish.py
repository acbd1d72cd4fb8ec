"""`python manage.py republish STREAM [--off] [--headers-only]`: let the tap observe a work-queue
stream with sequences by turning on the stream's RePublish (an admin's decision: it changes the
stream's configuration)."""

import asyncio
from argparse import ArgumentParser
from typing import Any

import nats
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from eventbus.natsconn import servers
from eventbus.registry import JetStreamError
from eventbus.republish import set_republish


class Command(BaseCommand):
    help = "Turn a stream's RePublish to the tap on (or off with --off)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("stream")
        parser.add_argument("--off", action="store_true", help="turn it off again")
        parser.add_argument(
            "--headers-only", action="store_true", help="republish headers only (no payloads)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        async def change() -> dict[str, Any]:
            nc = await nats.connect(
                servers(settings.NATS_URL), connect_timeout=5, max_reconnect_attempts=0
            )
            try:
                return await set_republish(
                    nc,
                    options["stream"],
                    enabled=not options["off"],
                    prefix=settings.FLOWSCOPE_SUBJECT_PREFIX,
                    headers_only=options["headers_only"],
                )
            finally:
                await nc.close()

        try:
            config = asyncio.run(change())
        except (JetStreamError, OSError, nats.errors.Error) as exc:
            raise CommandError(str(exc)) from exc
        rp = config.get("republish")
        if rp:
            self.stdout.write(f"{options['stream']}: republishing to {rp['dest']}")
        else:
            self.stdout.write(f"{options['stream']}: RePublish is off")
