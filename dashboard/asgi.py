"""ASGI entry point: Daphne serves `dashboard.asgi:application` (HTTP and websockets)."""

import os

from django.core.asgi import get_asgi_application

from eventbus import telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
# Before Django builds its handler: the tracing middleware must be in MIDDLEWARE by then.
telemetry.setup_web()
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs Django set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": telemetry.traced_http(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
