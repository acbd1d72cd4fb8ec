from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard import health, metrics, security, views
from dashboard.pages import (
    audit,
    deadletters,
    event,
    events,
    manage,
    replays,
    streams,
    tokens,
    topology,
    traces,
)

urlpatterns = [
    path("", views.overview, name="overview"),
    # before streams/<name>/: a stream named "new" is managed, not shown, at /streams/new/
    path("streams/new/", manage.stream_new, name="stream-new"),
    path("streams/<str:name>/", streams.stream_detail, name="stream"),
    path("streams/<str:name>/edit/", manage.stream_edit, name="stream-edit"),
    path("streams/<str:name>/purge/", manage.stream_purge, name="stream-purge"),
    path("streams/<str:name>/delete/", manage.stream_delete, name="stream-delete"),
    path("streams/<str:name>/messages/delete/", manage.message_delete, name="message-delete"),
    path("streams/<str:name>/consumers/new/", manage.consumer_new, name="consumer-new"),
    path(
        "streams/<str:name>/consumers/<str:consumer>/",
        streams.consumer_detail,
        name="consumer",
    ),
    path(
        "streams/<str:name>/consumers/<str:consumer>/edit/",
        manage.consumer_edit,
        name="consumer-edit",
    ),
    path(
        "streams/<str:name>/consumers/<str:consumer>/pause/",
        manage.consumer_pause,
        name="consumer-pause",
    ),
    path(
        "streams/<str:name>/consumers/<str:consumer>/resume/",
        manage.consumer_resume,
        name="consumer-resume",
    ),
    path(
        "streams/<str:name>/consumers/<str:consumer>/delete/",
        manage.consumer_delete,
        name="consumer-delete",
    ),
    path("topology/", topology.topology, name="topology"),
    path("events/", events.events, name="events"),
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("audit/", audit.audit_log, name="audit"),
    path("dead-letters/", deadletters.dead_letter_list, name="dead-letters"),
    path("dead-letters/<int:letter_id>/", deadletters.dead_letter_detail, name="dead-letter"),
    path(
        "dead-letters/<int:letter_id>/replay/",
        replays.dead_letter_replay,
        name="dead-letter-replay",
    ),
    path(
        "dead-letters/<int:letter_id>/discard/",
        replays.dead_letter_discard,
        name="dead-letter-discard",
    ),
    path("dead-letters/replay/", replays.bulk_replay, name="dead-letters-replay"),
    path("dead-letters/discard/", replays.bulk_discard, name="dead-letters-discard"),
    path("replays/", replays.replay_list, name="replays"),
    path("replays/<int:job_id>/", replays.replay_detail, name="replay"),
    path("replays/<int:job_id>/cancel/", replays.replay_cancel, name="replay-cancel"),
    path("events/<str:stream>/<int:seq>/", event.event_by_seq, name="event"),
    path("events/<str:stream>/id/<int:event_id>/", event.event_by_id, name="event-by-id"),
    path("events/<str:stream>/<int:seq>/payload/", event.full_payload, name="event-payload"),
    path("traces/", traces.trace_search, name="traces"),
    path("traces/<str:trace_id>/", traces.trace_detail, name="trace"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", views.Logout.as_view(), name="logout"),
    path("password/", security.PasswordChange.as_view(), name="password-change"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # this process's own figures (each Daphne process answers for itself): dashboard/metrics.py
    path("metrics", metrics.scrape, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("dashboard.api.urls")),
    # browsers ask for /favicon.ico whatever the page says
    path("favicon.ico", views.favicon),
]
