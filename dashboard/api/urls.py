"""Mounted at /api/ by dashboard/urls.py: the API's operations, then a JSON 404 for any other
path under /api/ (a client reads `{"detail": ...}` there too, not Django's HTML page)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path

from dashboard.api import api


def no_such_endpoint(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "no such API endpoint: see /api/docs"}, status=404)


# "/api/" itself first: ninja's own view there raises Django's HTML 404
urlpatterns = [path("", no_such_endpoint), path("", api.urls), re_path(r"", no_such_endpoint)]
