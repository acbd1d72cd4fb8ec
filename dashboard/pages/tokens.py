"""/tokens/: a user's API tokens (issue #14). Created with a name and shown once; listed with
their first characters, when created and last used; revoked with a POST. Both are audited."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from dashboard import tokens
from dashboard.audit import audited
from dashboard.models import ApiToken
from dashboard.roles import require

MAX_TOKENS = 50  # live tokens per user


def _uid(request: HttpRequest) -> int:
    return int(request.user.pk or 0)  # `require` let only a logged-in user in


@require("tokens")
def token_list(request: HttpRequest) -> HttpResponse:
    error = ""
    new_token = ""
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        live = ApiToken.objects.filter(user_id=_uid(request), revoked_at__isnull=True).count()
        if not name or len(name) > 100 or not name.isprintable():
            error = "Give the token a name of 1 to 100 printable characters (what uses it)."
        elif live >= MAX_TOKENS:
            error = f"You have {MAX_TOKENS} live tokens: revoke one first."
        else:
            with audited(request, "token.create", f"token {name}") as info:
                new_token, row = tokens.create(request.user, name)
                info.update(id=row.id, prefix=row.prefix)
    rows = ApiToken.objects.filter(user_id=_uid(request))
    ctx = {"tokens": rows, "new_token": new_token, "error": error, "form": request.POST}
    return render(request, "dashboard/tokens.html", ctx, status=400 if error else 200)


@require_POST
@require("tokens")
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    row = get_object_or_404(ApiToken, pk=token_id, user_id=_uid(request))
    if row.revoked_at is None:
        with audited(
            request, "token.revoke", f"token {row.name}", {"id": row.id, "prefix": row.prefix}
        ):
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at"])
    return redirect("tokens")
