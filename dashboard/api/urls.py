"""Mounted at /api/ by dashboard/urls.py."""

from django.urls import path

from dashboard.api import api

urlpatterns = [path("", api.urls)]
