"""Who may do what (issue #14): roles decided in one place (dashboard/roles.py), pages for each
persona, API tokens (shown once, stored hashed, revocable), and the audit log of logins and
token changes. Personas, as healthchecks' tests have them: vera the viewer, oscar the operator,
alice the admin, and nobody (anonymous)."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client, override_settings

from dashboard import roles, tokens
from dashboard.models import ApiToken, AuditEntry

PASSWORD = "a-long-password-1"


def persona(name: str, group: str | None = None, superuser: bool = False) -> User:
    make = User.objects.create_superuser if superuser else User.objects.create_user
    user = make(name, password=PASSWORD)
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture(autouse=True)
def fast_hashing(settings: object) -> None:
    """Five personas with PBKDF2 passwords cost seconds on a busy machine; MD5 here only."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


@pytest.fixture
def people(db: None) -> dict[str, User]:
    return {
        "vera": persona("vera", "viewer"),
        "oscar": persona("oscar", "operator"),
        "alice": persona("alice", "admin"),
        "root": persona("root", superuser=True),
        "nogroup": persona("nogroup"),
    }


def client_for(user: User | None) -> Client:
    c = Client()
    if user is not None:
        c.force_login(user)
    return c


def test_each_persona_has_the_role_of_its_highest_group(people: dict[str, User]) -> None:
    assert roles.role_of(people["vera"]) == "viewer"
    assert roles.role_of(people["oscar"]) == "operator"
    assert roles.role_of(people["alice"]) == "admin"
    assert roles.role_of(people["root"]) == "admin"
    assert roles.role_of(people["nogroup"]) == "viewer"
    both = persona("both", "viewer")
    both.groups.add(Group.objects.get(name="operator"))
    assert roles.role_of(User.objects.get(pk=both.pk)) == "operator"
    people["alice"].is_active = False
    assert roles.role_of(people["alice"]) is None


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("vera", {"browse", "tokens"}),
        ("oscar", {"browse", "tokens", "replay", "discard"}),
        ("alice", set(roles.NEEDS)),
    ],
)
def test_what_each_role_may_do(people: dict[str, User], who: str, allowed: set[str]) -> None:
    assert {a for a in roles.NEEDS if roles.can(people[who], a)} == allowed


def test_nobody_may_do_nothing_unless_reading_is_public(db: None) -> None:
    from django.contrib.auth.models import AnonymousUser

    assert not any(roles.can(AnonymousUser(), a) for a in roles.NEEDS)
    with override_settings(FLOWSCOPE_PUBLIC_READ=True):
        assert {a for a in roles.NEEDS if roles.can(AnonymousUser(), a)} == {"browse"}


PAGES = ["/", "/topology/", "/events/", "/tokens/", "/audit/"]


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (None, {"/": 302, "/topology/": 302, "/events/": 302, "/tokens/": 302, "/audit/": 302}),
        ("vera", {"/": 200, "/topology/": 200, "/events/": 200, "/tokens/": 200, "/audit/": 403}),
        ("oscar", {"/": 200, "/topology/": 200, "/events/": 200, "/tokens/": 200, "/audit/": 403}),
        ("alice", {"/": 200, "/topology/": 200, "/events/": 200, "/tokens/": 200, "/audit/": 200}),
    ],
)
def test_pages_answer_each_persona(
    people: dict[str, User], who: str | None, expected: dict[str, int]
) -> None:
    c = client_for(people[who] if who else None)
    got = {url: c.get(url).status_code for url in PAGES}
    assert got == expected
    if who == "vera":
        page = c.get("/audit/").content.decode()
        assert (
            "takes the <strong>admin</strong> role" in page
            and "with the <strong>viewer</strong> role" in page
        )


def test_public_read_lets_nobody_browse_but_not_manage_tokens_or_read_the_audit(
    people: dict[str, User],
) -> None:
    c = client_for(None)
    with override_settings(FLOWSCOPE_PUBLIC_READ=True):
        got = {u: c.get(u).status_code for u in PAGES}
    assert got == {"/": 200, "/topology/": 200, "/events/": 200, "/tokens/": 302, "/audit/": 302}
    with override_settings(FLOWSCOPE_PUBLIC_READ=True):
        assert 'href="/login/?next=' in c.get("/").content.decode()


def test_only_admins_see_the_audit_link(people: dict[str, User]) -> None:
    assert 'href="/audit/"' not in client_for(people["vera"]).get("/").content.decode()
    assert 'href="/audit/"' in client_for(people["alice"]).get("/").content.decode()


def test_a_token_is_shown_once_and_stored_hashed(people: dict[str, User]) -> None:
    c = client_for(people["vera"])
    page = c.post("/tokens/", {"name": "ci <replays>"}).content.decode()
    row = ApiToken.objects.get(user=people["vera"])
    start = page.index('id="token-value">') + len('id="token-value">')
    token = page[start : page.index("<", start)]
    assert token.startswith("fst_") and len(token) > 40
    assert row.digest == hashlib.sha256(token.encode()).hexdigest() and token not in row.digest
    assert row.prefix == token[:12]
    assert "ci &lt;replays&gt;" in page  # the name is text
    listed = c.get("/tokens/").content.decode()
    assert token not in listed and row.prefix in listed  # never shown again
    assert tokens.user_for(token) == people["vera"]
    assert tokens.user_for(token + "x") is None and tokens.user_for("nonsense") is None
    c.post(f"/tokens/{row.id}/revoke/")
    assert tokens.user_for(token) is None
    actions = list(AuditEntry.objects.filter(username="vera").values_list("action", "result"))
    assert ("token.create", "ok") in actions and ("token.revoke", "ok") in actions


def test_one_cannot_revoke_anothers_token(people: dict[str, User]) -> None:
    token, row = tokens.create(people["alice"], "alice's")
    response = client_for(people["vera"]).post(f"/tokens/{row.id}/revoke/")
    assert response.status_code == 404 and tokens.user_for(token) == people["alice"]


def test_a_token_without_a_name_is_refused_with_a_reason(people: dict[str, User]) -> None:
    response = client_for(people["vera"]).post("/tokens/", {"name": "  "})
    assert response.status_code == 400 and "Give the token a name" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_logins_and_failed_logins_are_audited_with_the_address(people: dict[str, User]) -> None:
    c = Client(REMOTE_ADDR="203.0.113.7")
    c.post("/login/", {"username": "vera", "password": "wrong"})
    c.post("/login/", {"username": "vera", "password": PASSWORD})
    rows = list(
        AuditEntry.objects.order_by("id").values_list("action", "result", "username", "address")
    )
    assert rows == [
        ("login.failed", "failed", "vera", "203.0.113.7"),
        ("login", "ok", "vera", "203.0.113.7"),
    ]


def test_the_audit_page_filters_and_pages(people: dict[str, User]) -> None:
    from dashboard.audit import record

    for i in range(130):
        record(
            None, "stream.purge" if i % 2 else "token.create", f"stream S{i}", user=people["alice"]
        )
    c = client_for(people["alice"])
    page = c.get("/audit/", {"action": "stream"}).content.decode()
    assert page.count('data-action="stream.purge"') == 65 and "token.create" not in page
    first = c.get("/audit/").content.decode()
    assert first.count("<tr data-action") == 100 and 'id="older"' in first
    href = first.split('id="older" href="')[1].split('"')[0].replace("&amp;", "&")
    second = c.get("/audit/" + href).content.decode()
    assert second.count("<tr data-action") == 31  # and the login of force_login
    assert c.get("/audit/", {"since": "yesterday"}).status_code == 400
    assert c.get("/audit/", {"cursor": "x"}).status_code == 400


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (None, {"/api/streams": 401, "/api/events": 401, "/api/audit": 401}),
        ("vera", {"/api/streams": 200, "/api/events": 200, "/api/audit": 403}),
        ("oscar", {"/api/streams": 200, "/api/events": 200, "/api/audit": 403}),
        ("alice", {"/api/streams": 200, "/api/events": 200, "/api/audit": 200}),
    ],
)
def test_the_api_answers_each_persona_by_session_and_by_token(
    people: dict[str, User], who: str | None, expected: dict[str, int]
) -> None:
    by_session = client_for(people[who] if who else None)
    assert {u: by_session.get(u).status_code for u in expected} == expected
    if who:
        token, _ = tokens.create(people[who], "matrix")
        bearer = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert {u: bearer.get(u).status_code for u in expected} == expected


def test_the_api_audit_log_lists_and_filters(people: dict[str, User]) -> None:
    from dashboard.audit import record

    record(None, "stream.purge", "stream A", user=people["alice"], result="failed", error="boom")
    record(None, "token.create", "token x", user=people["vera"])
    c = client_for(people["alice"])
    body = c.get("/api/audit", {"action": "stream"}).json()
    assert [(i["action"], i["result"], i["error"]) for i in body["items"]] == [
        ("stream.purge", "failed", "boom")
    ]
    assert [i["user"] for i in c.get("/api/audit", {"user": "vera"}).json()["items"]] == ["vera"]
    bad = c.get("/api/audit", {"result": "maybe"})
    assert bad.status_code == 400 and bad.json()["detail"][0]["field"] == "result"
    with override_settings(FLOWSCOPE_PUBLIC_READ=True):
        assert Client().get("/api/audit").status_code == 401
        assert Client().get("/api/streams").status_code == 200
