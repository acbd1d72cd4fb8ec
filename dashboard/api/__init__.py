"""Flowscope's JSON API: one NinjaAPI for the whole product, mounted at /api/.

The OpenAPI document is /api/openapi.json and the docs page /api/docs (Swagger UI, vendored).
Every operation needs a login (`auth.API_AUTH`: the session now, bearer tokens with #14);
errors answer 4xx JSON `{"detail": ...}` (`errors`); lists answer `{"items", "next"}` with
keyset cursors (`paging`). Each concern is a Router of its own module, added below."""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI

from dashboard.api import errors
from dashboard.api import manage as _manage  # noqa: F401  (adds its operations to /streams)
from dashboard.api import replays as _replays  # its own router, and POSTs on /dead-letters
from dashboard.api.audit import router as audit_router
from dashboard.api.auth import API_AUTH, docs_login
from dashboard.api.deadletters import router as deadletters_router
from dashboard.api.docs import VendoredSwagger
from dashboard.api.events import router as events_router
from dashboard.api.streams import router as streams_router
from dashboard.api.traces import router as traces_router


class FlowscopeAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation: Any) -> str:
        """The view's name (`list_streams`): stable, short, unique across the API's modules."""
        return str(operation.view_func.__name__)


api = FlowscopeAPI(
    title="Flowscope",
    version="1",
    description="What happens inside NATS JetStream, as Flowscope's tap recorded it.",
    urls_namespace="api",
    auth=API_AUTH,
    docs=VendoredSwagger(),
    docs_decorator=docs_login,
)
errors.install(api)
api.add_router("/streams", streams_router)
api.add_router("/events", events_router)
api.add_router("/audit", audit_router)
api.add_router("/dead-letters", deadletters_router)
api.add_router("/replays", _replays.router)
api.add_router("/traces", traces_router)
