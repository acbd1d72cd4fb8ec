"""`python manage.py tap`: thin adapter around eventbus.tap, which imports no Django."""

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand

from eventbus.tap import TapConfig, run


class Command(BaseCommand):
    help = "Watch every JetStream stream and record events and consumer lag in PostgreSQL."

    def handle(self, *args: object, **options: object) -> None:
        config = TapConfig.from_settings(settings)
        asyncio.run(run(config))
