"""Shared fixtures: real nats-server processes, the test database's URL, browser, personas."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbus.embedded import EmbeddedNats, EmbeddedNatsCluster

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# The taps and demos tests start get no metrics port unless a test gives them a free one: a
# fixed default port would be taken by the first and refused (logged) to the others.
os.environ.setdefault("FLOWSCOPE_TAP_METRICS_PORT", "0")
os.environ.setdefault("FLOWSCOPE_DEMO_METRICS_PORT", "0")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own: free port, temporary store; `.stop()`, `.start()`,
    `.restart()` and `.stop(kill=True)` work mid-test."""
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    """Three nats-servers clustered on loopback, JetStream ready (a meta leader elected);
    `.url` lists them all, `.node(i).stop(kill=True)` and `.node(i).start()` work mid-test.
    They do not advertise each other to clients, so a client fails over only to servers it was
    given: a test of `NATS_URL`'s list fails if the list is ignored."""
    cluster = EmbeddedNatsCluster(tmp_path / "cluster", advertise=False).start()
    yield cluster
    cluster.stop(kill=True)


@pytest.fixture
def unique() -> str:
    """A short unique token for stream and subject names, so tests never share state."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def database_url(transactional_db: None) -> str:
    """The URL of the test database, for code that opens its own connections (the tap).
    Uses `transactional_db` so what those connections commit is visible, then truncated."""
    from django.db import connection

    s = connection.settings_dict
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgresql://{auth}@{host}:{port}/{s['NAME']}"


def chromium_path() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the browser tests")
        pytest.skip(message + ": skipping browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        yield b
        b.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    pg = context.new_page()
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture
def web(database_url: str, nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[str]:
    """The real web process, Daphne serving dashboard.asgi, on the test database. Yields its URL."""
    from tests.webutil import daphne

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs a loop here
    env = {"DATABASE_URL": database_url, "NATS_URL": nats_server.url}
    with daphne(env, tmp_path / "daphne.log") as url:
        yield url


@pytest.fixture
def alice(transactional_db: None) -> tuple[str, str]:
    """Alice is an admin (superuser in the admin group). Returns (username, password)."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_superuser("alice", password="alice-password-1")
    user.groups.add(Group.objects.get_or_create(name="admin")[0])
    return "alice", "alice-password-1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running in this thread for
    the session's browser, and asyncio tests cannot start their own loop after it."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


def role_client(name: str, role: str) -> object:
    """A Django test client logged in as a new user in the group `role`."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user(name, password="a-long-password-1")
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator(transactional_db: None) -> object:
    """Olga, an operator (replays and discards), logged in to a Django test client."""
    return role_client("olga", "operator")


@pytest.fixture
def viewer_client(transactional_db: None) -> object:
    """Vera, a viewer, logged in to a Django test client."""
    return role_client("vera", "viewer")
