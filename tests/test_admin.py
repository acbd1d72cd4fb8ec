"""The Django admin (issue #14, point 4): only admins reach it, and it lists Flowscope's own
records read-only (API tokens without their digest; revoking them is the one change, audited).
Personas as in test_roles.py: vera the viewer, alice the admin (staff), root the superuser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from dashboard import tokens
from dashboard.models import ApiToken, AuditEntry, Consumer, Stream, TapInstance
from tests.test_roles import persona

MODELS = ["stream", "consumer", "tapinstance", "auditentry", "apitoken"]


@pytest.fixture(autouse=True)
def fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def staff(user: User) -> User:
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def people(db: None) -> dict[str, User]:
    return {
        "vera": staff(persona("vera", "viewer")),
        "oscar": staff(persona("oscar", "operator")),
        "alice": staff(persona("alice", "admin")),
        "adam": persona("adam", "admin"),  # an admin, but not staff
        "root": persona("root", superuser=True),
    }


def client_for(user: User) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def records(people: dict[str, User]) -> dict[str, Any]:
    now = datetime.now(UTC)
    stream = Stream.objects.create(name="ORDERS", created=now, retention="limits")
    Consumer.objects.create(stream=stream, name="inventory", last_seen=now)
    TapInstance.objects.create(id="tap-1", hostname="box", pid=1, started_at=now, heartbeat_at=now)
    AuditEntry.objects.create(action="stream.create", username="alice", target="stream ORDERS")
    secret, token = tokens.create(people["vera"], "ci")
    return {"stream": stream, "token": token, "secret": secret}


def test_only_admins_reach_the_admin(people: dict[str, User]) -> None:
    got = {who: client_for(u).get("/admin/").status_code for who, u in people.items()}
    assert got == {"vera": 302, "oscar": 302, "alice": 200, "adam": 302, "root": 200}
    assert Client().get("/admin/").status_code == 302


def test_the_admins_password_change_is_flowscopes_audited_one(people: dict[str, User]) -> None:
    response = client_for(people["alice"]).get("/admin/password_change/")
    assert response.status_code == 302 and response["Location"] == "/password/"


def test_ensure_admin_makes_a_user_who_reaches_the_admin(db: None) -> None:
    call_command("ensure_admin", stdout=open("/dev/null", "w"))  # noqa: SIM115
    admin = User.objects.get(username="admin")
    assert client_for(admin).get("/admin/").status_code == 200


def test_the_admin_lists_flowscopes_records_read_only(
    people: dict[str, User], records: dict[str, Any]
) -> None:
    alice = client_for(people["alice"])
    index = alice.get("/admin/").text
    for model in MODELS:
        assert f'href="/admin/dashboard/{model}/"' in index, model
        listing = alice.get(f"/admin/dashboard/{model}/")
        assert listing.status_code == 200, model
        assert f'href="/admin/dashboard/{model}/add/"' not in listing.text
        assert alice.get(f"/admin/dashboard/{model}/add/").status_code == 403
    stream = records["stream"]
    assert alice.get(f"/admin/dashboard/stream/{stream.pk}/change/").status_code == 200
    change = f"/admin/dashboard/stream/{stream.pk}/change/"
    assert alice.post(change, {"name": "X"}).status_code == 403
    assert alice.post(change.replace("change", "delete"), {"post": "yes"}).status_code == 403
    assert Stream.objects.get(pk=stream.pk).name == "ORDERS"
    # search and filters
    assert "ORDERS" in alice.get("/admin/dashboard/stream/", {"q": "ORD"}).text
    assert "ORDERS" not in alice.get("/admin/dashboard/stream/", {"q": "nothing"}).text
    audit = alice.get("/admin/dashboard/auditentry/").text
    assert 'id="changelist-filter"' in audit and "stream.create" in audit


def test_tokens_show_no_digest_and_can_be_revoked_with_an_audit_row(
    people: dict[str, User], records: dict[str, Any]
) -> None:
    token: ApiToken = records["token"]
    alice = client_for(people["alice"])
    for url in ("/admin/dashboard/apitoken/", f"/admin/dashboard/apitoken/{token.pk}/change/"):
        page = alice.get(url).text
        assert token.prefix in page and token.digest not in page and "digest" not in page.lower()
    response = alice.post("/admin/dashboard/apitoken/",
                          {"action": "revoke", "_selected_action": [token.pk]})  # fmt: skip
    assert response.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert tokens.user_for(records["secret"]) is None
    (row,) = AuditEntry.objects.filter(action="token.revoke")
    assert (row.username, row.target, row.result) == ("alice", "token ci", "ok")
    assert row.detail["owner"] == "vera"
