"""API tokens (issue #14): `Authorization: Bearer <token>` acts as the token's user, with the
user's role. A token is shown once, when created; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.utils import timezone

from dashboard.models import ApiToken

PREFIX = "fst_"
TOUCH_EVERY = timedelta(minutes=1)  # last_used is written at most this often per token


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(user: Any, name: str) -> tuple[str, ApiToken]:
    """(the token, its row): the token itself is never stored."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.objects.create(user=user, name=name, prefix=token[:12], digest=digest(token))
    return token, row


def user_for(token: str) -> Any:
    """The active user of a live token, or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = (
        ApiToken.objects.select_related("user")
        .filter(digest=digest(token), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if row is None:
        return None
    now = timezone.now()
    if row.last_used is None or now - row.last_used > TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used=now)
    return row.user
