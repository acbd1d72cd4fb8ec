"""The Django admin for Flowscope's admins only (issue #14): superusers, and staff in the admin
group (dashboard/roles.py decides the group). Installed as `FlowscopeAdminConfig` in place of
django.contrib.admin, so `admin.site` everywhere is this site; the models are in admin.py."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect


class FlowscopeAdminSite(admin.AdminSite):
    site_header = "Flowscope admin"
    site_title = "Flowscope admin"
    index_title = "Users, groups and Flowscope's records"

    def has_permission(self, request: HttpRequest) -> bool:
        from dashboard import roles

        user = request.user
        if not user.is_active:
            return False
        return bool(user.is_superuser or (user.is_staff and roles.can(user, "users")))

    def password_change(  # type: ignore[override]  # a redirect, not a TemplateResponse
        self, request: HttpRequest, extra_context: object = None
    ) -> HttpResponse:
        """The admin's "change password" link goes to Flowscope's page, which audits it."""
        return redirect("password-change")


class FlowscopeAdminConfig(AdminConfig):
    default_site = "dashboard.admin_site.FlowscopeAdminSite"
