"""Login throttling, password change, the Content-Security-Policy and production settings
(issue #14, points 1 and 9). Personas as in test_roles.py: alice the admin, vera the viewer,
and mallory, who guesses alice's password from one address."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

import dashboard.urls
from dashboard import tokens
from dashboard.models import AuditEntry, Consumer, Stream
from tests.test_roles import PASSWORD, persona

ROOT = Path(__file__).resolve().parent.parent
MALLORY, NEIGHBOUR = "203.0.113.7", "198.51.100.20"
WRONG = "not-the-password"


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret-internal-detail")


# this module is also the URLconf of the tests marked urls(...): Flowscope's, plus a view that fails
urlpatterns = [path("boom/", boom), *dashboard.urls.urlpatterns]


@pytest.fixture(autouse=True)
def fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db: None) -> User:
    return persona("alice", "admin")


def from_address(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def log_in(client: Client, username: str, password: str) -> Any:
    return client.post("/login/", {"username": username, "password": password})


def audit_rows(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


# --- failed logins -------------------------------------------------------------------------


def test_it_locks_out_a_user_from_one_address_after_five_failures(alice: User) -> None:
    mallory = from_address(MALLORY)
    for attempt in range(1, 5):
        response = log_in(mallory, "alice", WRONG)
        assert response.status_code == 200, attempt
        assert "didn't match" in response.content.decode()
    assert not audit_rows("login.locked_out")

    fifth = log_in(mallory, "alice", WRONG)
    assert fifth.status_code == 429
    page = fifth.content.decode()
    assert (
        "Too many failed attempts for this user from your address; try again in 15 minutes." in page
    )
    assert 'id="locked-out"' in page and "didn't match" not in page

    # now even her right password is refused from that address, and nobody is logged in
    refused = log_in(mallory, "alice", PASSWORD)
    assert refused.status_code == 429 and "try again in 15 minutes" in refused.content.decode()
    assert "_auth_user_id" not in mallory.session
    # ... but not from another address, and not for another user from that one
    assert log_in(from_address(NEIGHBOUR), "alice", PASSWORD).status_code == 302
    persona("vera", "viewer")
    assert log_in(mallory, "vera", PASSWORD).status_code == 302


def test_the_audit_log_has_each_failure_once_and_the_lock_out(alice: User) -> None:
    mallory = from_address(MALLORY)
    for _ in range(5):
        log_in(mallory, "alice", WRONG)
    failed = audit_rows("login.failed")
    assert [(r.username, r.address, r.result, r.error) for r in failed] == [
        ("alice", MALLORY, "failed", "wrong username or password")
    ] * 5
    (locked,) = audit_rows("login.locked_out")
    assert (locked.username, locked.address, locked.target) == ("alice", MALLORY, "user alice")
    assert locked.detail == {"failures": 5, "minutes": 15}

    # an attempt during the lock-out: one more failed row saying so, no second lock-out row
    log_in(mallory, "alice", PASSWORD)
    assert len(audit_rows("login.failed")) == 6
    assert audit_rows("login.failed")[-1].error.startswith("locked out")
    assert len(audit_rows("login.locked_out")) == 1
    assert not audit_rows("login")


def test_the_lock_out_ends_after_the_configured_minutes(alice: User) -> None:
    mallory = from_address(MALLORY)
    for _ in range(5):
        log_in(mallory, "alice", WRONG)
    AccessAttempt.objects.update(attempt_time=datetime.now(UTC) - timedelta(minutes=11))
    assert "try again in 4 minutes" in log_in(mallory, "alice", PASSWORD).content.decode()
    AccessAttempt.objects.update(attempt_time=datetime.now(UTC) - timedelta(minutes=16))
    assert log_in(mallory, "alice", PASSWORD).status_code == 302


def test_a_successful_login_forgets_the_earlier_failures(alice: User) -> None:
    client = from_address(MALLORY)
    for _ in range(4):
        log_in(client, "alice", WRONG)
    assert log_in(client, "alice", PASSWORD).status_code == 302
    client.post("/logout/")
    for _ in range(4):
        assert log_in(client, "alice", WRONG).status_code == 200


def test_sessions_and_bearer_tokens_keep_working_with_the_throttle(alice: User) -> None:
    token, _ = tokens.create(alice, "ci")
    mallory = from_address(MALLORY)
    for _ in range(5):
        log_in(mallory, "alice", WRONG)  # alice is locked out from 127.0.0.1 too, below
    for _ in range(5):
        log_in(Client(), "alice", WRONG)
    assert log_in(Client(), "alice", PASSWORD).status_code == 429

    session = Client()
    session.force_login(alice)
    assert session.get("/").status_code == 200
    assert session.get("/api/streams").status_code == 200
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert bearer.get("/api/streams").status_code == 200
    assert Client().get("/api/streams").status_code == 401
    # Django's test client logs in without a request: nothing to throttle by, not an error
    assert Client().login(username="alice", password=PASSWORD) is True
    assert authenticate(None, username="alice", password=PASSWORD) == alice


# --- password change -----------------------------------------------------------------------


def test_it_changes_the_password_and_audits_it(alice: User) -> None:
    client = Client()
    client.force_login(alice)
    assert 'href="/password/"' in client.get("/").content.decode()  # linked from the header
    assert client.get("/password/").status_code == 200

    wrong = client.post("/password/", {"old_password": WRONG, "new_password1": "x-new-pass-42",
                                       "new_password2": "x-new-pass-42"})  # fmt: skip
    assert wrong.status_code == 200 and "old password was entered incorrectly" in wrong.text
    (refused,) = audit_rows("password.change")
    assert (refused.result, refused.username) == ("failed", "alice")
    assert "incorrectly" in refused.error

    done = client.post("/password/", {"old_password": PASSWORD, "new_password1": "x-new-pass-42",
                                      "new_password2": "x-new-pass-42"})  # fmt: skip
    assert done.status_code == 302 and done["Location"] == "/password/?changed=1"
    assert "Your password was changed." in client.get(done["Location"]).text
    assert client.get("/").status_code == 200  # still logged in
    ok = audit_rows("password.change")[-1]
    assert (ok.result, ok.username, ok.target) == ("ok", "alice", "user alice")
    assert log_in(Client(), "alice", "x-new-pass-42").status_code == 302
    assert log_in(Client(), "alice", PASSWORD).status_code == 200


def test_nobody_is_sent_to_log_in_before_changing_a_password(db: None) -> None:
    response = Client().get("/password/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- Content-Security-Policy and inline code ----------------------------------------------


def policy(response: Any) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in header.split(";") if d.strip()}


def test_every_page_has_a_policy_without_inline_script_or_style(alice: User) -> None:
    client = Client()
    client.force_login(alice)
    csp = policy(client.get("/"))
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["connect-src"] == ["'self'", "ws://testserver", "wss://testserver"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    for url in ("/login/", "/api/streams", "/api/docs", "/healthz", "/nowhere/"):
        header = client.get(url)["Content-Security-Policy"]
        assert "script-src 'self'" in header and "unsafe" not in header, url


INLINE = {
    "style attribute": re.compile(r"<[^>]*\sstyle\s*=", re.I),
    "style element": re.compile(r"<style[\s>]", re.I),
    # a data block (json_script's <script type="application/json">) is not run: allowed
    "inline script": re.compile(r"<script(?![^>]*\s(src\s*=|type=.application/json))[^>]*>", re.I),
    "event handler attribute": re.compile(r"<[^>]*\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}


def inline_code(html: str) -> list[str]:
    return [what for what, pattern in INLINE.items() if pattern.search(html)]


def test_the_inline_code_finder_finds_each_kind() -> None:
    assert inline_code('<p style="color:red">') == ["style attribute"]
    assert inline_code("<style>p{}</style>") == ["style element"]
    assert inline_code("<script>alert(1)</script>") == ["inline script"]
    assert inline_code('<a onclick="x()">') == ["event handler attribute"]
    assert inline_code('<script src="/static/js/a.js" defer></script><p data-style="x">') == []
    assert inline_code('<script type="application/json" id="d">{"a": 1}</script>') == []


def test_no_page_has_inline_style_or_script(alice: User) -> None:
    now = datetime.now(UTC)
    subjects = ["orders.>"]
    stream = Stream.objects.create(name="ORDERS", created=now, retention="limits", state_at=now,
                                   subjects=subjects, config={"subjects": subjects})  # fmt: skip
    Consumer.objects.create(stream=stream, name="inventory", last_seen=now, num_pending=3)
    AuditEntry.objects.create(action="login", username="alice", target="user alice")
    alice.is_staff = True  # for the Django admin's pages too
    alice.save()
    client = Client()
    client.force_login(alice)
    pages = ["/", "/streams/ORDERS/", "/streams/ORDERS/consumers/inventory/", "/topology/",
             "/events/", "/tokens/", "/audit/", "/password/", "/api/docs", "/nowhere/",
             "/streams/GONE/", "/admin/", "/admin/dashboard/stream/"]  # fmt: skip
    for url in pages:
        response = client.get(url)
        assert response.status_code in (200, 404), (url, response.status_code)
        assert inline_code(response.content.decode()) == [], url
    anonymous = Client().get("/login/")
    assert inline_code(anonymous.content.decode()) == []
    assert '<meta name="htmx-config" content=\'{"includeIndicatorStyles": false}\'>' in (
        client.get("/").text
    )


# --- production settings -------------------------------------------------------------------

PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "k" * 20 + "production-secret-for-the-check-only-0123456789abcdef",
    "ALLOWED_HOSTS": "flowscope.example.com",
    "FLOWSCOPE_HSTS_SECONDS": "31536000",
    "FLOWSCOPE_BEHIND_PROXY": "1",
    "FLOWSCOPE_SSL_REDIRECT": "1",
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/unused",  # settings only: not connected
}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWSCOPE_", "DJANGO_"))}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_check_deploy_passes_with_production_settings() -> None:
    done = manage(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


SHOW = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({k: getattr(s, k, None) for k in [
    "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER",
    "SECURE_SSL_REDIRECT", "SESSION_COOKIE_AGE", "SESSION_EXPIRE_AT_BROWSER_CLOSE",
    "AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME"]}, default=str))
"""


def settings_under(env: dict[str, str]) -> dict[str, Any]:
    done = manage(env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_environment_sets_cookies_hsts_proxy_session_and_throttle() -> None:
    prod = settings_under(PRODUCTION)
    assert prod == {
        "DEBUG": False, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_AGE": 12 * 3600,
        "SESSION_EXPIRE_AT_BROWSER_CLOSE": False, "AXES_FAILURE_LIMIT": 5,
        "AXES_COOLOFF_TIME": "0:15:00",
    }  # fmt: skip
    dev = settings_under({
        "DATABASE_URL": PRODUCTION["DATABASE_URL"],
        "FLOWSCOPE_SESSION_HOURS": "2", "FLOWSCOPE_SESSION_AT_BROWSER_CLOSE": "1",
        "FLOWSCOPE_LOGIN_ATTEMPTS": "3", "FLOWSCOPE_LOCKOUT_MINUTES": "2",
    })  # fmt: skip
    assert dev["DEBUG"] is True and dev["SESSION_COOKIE_SECURE"] is False
    assert dev["SECURE_PROXY_SSL_HEADER"] is None and dev["SECURE_HSTS_SECONDS"] == 0
    assert (dev["SESSION_COOKIE_AGE"], dev["SESSION_EXPIRE_AT_BROWSER_CLOSE"]) == (7200, True)
    assert (dev["AXES_FAILURE_LIMIT"], dev["AXES_COOLOFF_TIME"]) == (3, "0:02:00")
    plain = settings_under({**PRODUCTION, "FLOWSCOPE_SECURE_COOKIES": "0"})
    assert plain["SESSION_COOKIE_SECURE"] is False and plain["CSRF_COOKIE_SECURE"] is False


@pytest.mark.urls("tests.test_security")
@override_settings(DEBUG=False)
def test_an_error_answers_our_500_page_never_the_debug_page(alice: User) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    assert 'id="server-error"' in page and "Something went wrong" in page
    assert "Traceback" not in page and "secret-internal-detail" not in page
    assert "RuntimeError" not in page
    assert "script-src 'self'" in response["Content-Security-Policy"]
    missing = client.get("/no/such/page/")
    assert missing.status_code == 404 and 'id="not-found"' in missing.text
    assert "Using the URLconf" not in missing.text  # Django's debug 404
