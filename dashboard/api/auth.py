"""Who may call the API. `API_AUTH` is the list NinjaAPI tries in order; the first that returns
a user wins, and none answers 401. The roles issue (#14) adds its bearer tokens to this list.

Django's session, as the browser holds it. CSRF is checked only for a request this class
authenticates: a request that carries no session (a script with a bearer token) is left to the
next class instead of failing the session's CSRF check first."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer
from ninja.security.apikey import APIKeyCookie
from ninja.utils import check_csrf

from dashboard import roles, tokens

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_FAILED = "CSRF check failed: send the csrftoken cookie's value as the X-CSRFToken header"


class SessionAuth(APIKeyCookie):
    """The logged-in user of Django's session; CSRF token required for unsafe methods."""

    param_name: str = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        super().__init__(csrf=False)  # checked below, once the session is known to be valid

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise HttpError(403, CSRF_FAILED)
        return user


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`: a live API token (dashboard/tokens.py) acts as its user,
    with the user's role. No CSRF: a token is not sent by the browser on its own."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = tokens.user_for(token)
        if user is not None:
            request.user = user
        return user


class PublicRead:
    """With FLOWSCOPE_PUBLIC_READ=1, anonymous callers may read (safe methods only)."""

    def __call__(self, request: HttpRequest) -> Any:
        if request.method in SAFE_METHODS and roles.public_read():
            return "public"
        return None


API_AUTH: list[Any] = [SessionAuth(), TokenAuth(), PublicRead()]


def need(request: HttpRequest, action: str) -> None:
    """Ask the role check (dashboard/roles.py) for an operation: 401 when nobody is logged in,
    403 naming the role it takes otherwise."""
    user = getattr(request, "user", None)
    if roles.can(user, action):
        return
    if user is None or not user.is_authenticated:
        raise HttpError(401, "Authentication required: log in, or send Authorization: Bearer")
    raise HttpError(
        403, f"This takes the {roles.NEEDS[action]} role; you have {roles.role_of(user)}"
    )


def docs_login(view: Any) -> Any:
    """The OpenAPI document and the docs page need what the API needs: a login (a session or
    a token), unless reading is public. A script gets 401 JSON, a browser the login page."""
    from django.contrib.auth.views import redirect_to_login
    from django.http import JsonResponse

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        user = getattr(request, "user", None)
        if not roles.can(user, "browse"):
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                user = tokens.user_for(header[7:].strip())
        if roles.can(user, "browse"):
            return view(request, *args, **kwargs)
        if request.path.endswith(".json"):
            return JsonResponse({"detail": "Authentication required: log in, or send "
                                 "Authorization: Bearer <token>"}, status=401)  # fmt: skip
        return redirect_to_login(request.get_full_path())

    return wrapped
