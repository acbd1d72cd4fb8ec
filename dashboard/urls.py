from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard import health, security, views
from dashboard.pages import audit, event, events, streams, tokens, topology

urlpatterns = [
    path("", views.overview, name="overview"),
    path("streams/<str:name>/", streams.stream_detail, name="stream"),
    path(
        "streams/<str:name>/consumers/<str:consumer>/",
        streams.consumer_detail,
        name="consumer",
    ),
    path("topology/", topology.topology, name="topology"),
    path("events/", events.events, name="events"),
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("audit/", audit.audit_log, name="audit"),
    path("events/<str:stream>/<int:seq>/", event.event_by_seq, name="event"),
    path("events/<str:stream>/id/<int:event_id>/", event.event_by_id, name="event-by-id"),
    path("events/<str:stream>/<int:seq>/payload/", event.full_payload, name="event-payload"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", views.Logout.as_view(), name="logout"),
    path("password/", security.PasswordChange.as_view(), name="password-change"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include("dashboard.api.urls")),
    # browsers ask for /favicon.ico whatever the page says
    path("favicon.ico", views.favicon),
]
