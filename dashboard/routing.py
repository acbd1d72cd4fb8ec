"""Websocket routes (asgi.py wraps them in the origin check and the session's user)."""

from django.urls import URLPattern, path

from dashboard.live.consumer import LiveConsumer

websocket_urlpatterns: list[URLPattern] = [path("ws/live/", LiveConsumer.as_asgi())]
