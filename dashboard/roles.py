"""Who may do what: the one place that decides (issue #14).

Roles are Django groups. A viewer browses; an operator also replays and discards dead letters;
an admin also manages streams, consumers and users. A logged-in user in no group is a viewer;
a superuser is an admin. With FLOWSCOPE_PUBLIC_READ=1 anonymous visitors may browse (only).
Every view, API endpoint and websocket asks `can()` on the server; pages show only the buttons
`can()` allows (the `can` context processor below).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
RANK = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}

# action -> the least role that may do it
NEEDS: dict[str, str] = {
    "browse": VIEWER,  # every page and read endpoint
    "tokens": VIEWER,  # one's own API tokens
    "replay": OPERATOR,  # replay dead letters
    "discard": OPERATOR,  # discard dead letters
    "manage": ADMIN,  # create, edit, purge, delete streams and consumers
    "audit": ADMIN,  # read the audit log
    "users": ADMIN,  # the Django admin
}


def role_of(user: Any) -> str | None:
    """The user's highest role; None for anonymous or inactive users."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    cached = getattr(user, "_flowscope_role", None)
    if cached is None:
        names = set(user.groups.values_list("name", flat=True))
        cached = max((r for r in ROLES if r in names), key=RANK.__getitem__, default=VIEWER)
        user._flowscope_role = cached
    return str(cached)


def can(user: Any, action: str) -> bool:
    need = NEEDS[action]  # an unknown action is a programming error, not a "no"
    role = role_of(user)
    if role is None:
        return action == "browse" and public_read()
    return RANK[role] >= RANK[need]


def public_read() -> bool:
    return bool(getattr(settings, "FLOWSCOPE_PUBLIC_READ", False))


def require(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view decorator: anonymous visitors who may not go to the login page; a logged-in user
    whose role may not gets a 403 page saying which role it takes."""

    def refused(request: HttpRequest) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return forbidden(request, action)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            @wraps(view)
            async def awaited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                user = await request.auser()  # type: ignore[attr-defined]
                allowed = await sync_to_async(can)(user, action)
                if allowed:
                    return await view(request, *args, **kwargs)  # type: ignore[no-any-return]
                return await sync_to_async(refused)(request)

            return awaited

        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if can(request.user, action):
                return view(request, *args, **kwargs)  # type: ignore[no-any-return]
            return refused(request)

        return wrapped

    return decorate


def forbidden(request: HttpRequest, action: str) -> HttpResponse:
    ctx = {"action": action, "needs": NEEDS[action], "role": role_of(request.user)}
    return render(request, "403.html", ctx, status=403)


def context(request: HttpRequest) -> dict[str, Any]:
    """Templates' `can.<action>` and `role`."""
    user = getattr(request, "user", None)
    return {"can": {a: can(user, a) for a in NEEDS}, "role": role_of(user)}
