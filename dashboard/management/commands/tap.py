"""`python manage.py tap`: thin adapter around eventbus.tap, which imports no Django."""

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from eventbus import telemetry
from eventbus.tap import TapConfig, TapFailed, run


class Command(BaseCommand):
    help = "Watch every JetStream stream and record events and consumer lag in PostgreSQL."

    def handle(self, *args: object, **options: object) -> None:
        config = TapConfig.from_settings(settings)
        telemetry.setup("flowscope-tap")  # a span per committed batch, exported if asked
        try:
            asyncio.run(run(config))
        except TapFailed as exc:  # exit non-zero: the process supervisor restarts the tap
            raise CommandError(f"the tap stopped: {exc}", returncode=3) from exc
