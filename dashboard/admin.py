"""Flowscope's own records in the Django admin, read-only (issue #14): the tap and discovery own
streams, consumers and taps; the audit log is written only by dashboard/audit.py; API tokens are
created on /tokens/. Admins may look, search and filter here; the one change is revoking tokens
(audited, as on /tokens/). Who reaches /admin/ at all: dashboard/admin_site.py."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from dashboard import roles
from dashboard.audit import audited
from dashboard.models import ApiToken, AuditEntry, Consumer, Stream, TapInstance


class ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    """Lists and detail pages without add, change or delete, for every admin (the role, not
    Django's per-model permissions, decides: dashboard/roles.py)."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return roles.can(request.user, "users")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return roles.can(request.user, "users")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Stream)
class StreamAdmin(ReadOnly):
    list_display = ["name", "retention", "observed_by", "messages", "bytes", "last_seq",
                    "consumer_count", "created", "deleted_at"]  # fmt: skip
    list_filter = ["retention", "observed_by", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "subjects"]
    date_hierarchy = "created"


@admin.register(Consumer)
class ConsumerAdmin(ReadOnly):
    list_display = ["name", "stream", "num_pending", "num_ack_pending", "num_redelivered",
                    "last_seen", "deleted_at"]  # fmt: skip
    list_filter = [("deleted_at", admin.EmptyFieldListFilter), "stream__name"]
    list_select_related = ["stream"]
    search_fields = ["name", "stream__name"]


@admin.register(TapInstance)
class TapInstanceAdmin(ReadOnly):
    list_display = ["id", "hostname", "pid", "writer_state", "events_per_second",
                    "heartbeat_at", "last_commit_at", "restarts"]  # fmt: skip
    list_filter = ["writer_state", "hostname"]
    search_fields = ["id", "hostname"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnly):
    list_display = ["ts", "username", "address", "action", "target", "result"]
    list_filter = ["result", "action", "ts"]
    search_fields = ["username", "action", "target", "error", "address"]
    date_hierarchy = "ts"


@admin.action(description="Revoke the selected API tokens")
def revoke(modeladmin: ApiTokenAdmin, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
    count = 0
    for row in queryset.filter(revoked_at__isnull=True).select_related("user"):
        target = f"token {row.name}"
        detail = {"id": row.id, "prefix": row.prefix, "owner": row.user.get_username()}
        with transaction.atomic(), audited(request, "token.revoke", target, detail):
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at"])
        count += 1
    modeladmin.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnly):
    """Never the digest: it is all a stolen database would need to check a guessed token."""

    fields = ["name", "user", "prefix", "created", "last_used", "revoked_at"]
    list_display = ["name", "user", "prefix", "created", "last_used", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created"]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__username"]
    actions = [revoke]
