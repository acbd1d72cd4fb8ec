"""Websocket routes. The live consumers arrive with the live-dashboard issue."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
