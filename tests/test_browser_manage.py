"""Managing a stream in a real browser (issue #14): an admin creates a stream, sees it in the
overview and the topology (once the tap records it), purges it and deletes it after typing its
name; a viewer sees no management button. Real tap process, nats-server, PostgreSQL, Daphne,
chromium; screenshots in test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.taputil import tap_process
from tests.test_browser_streams import _log_in, _wait_for_text

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"manage-{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_an_admin_creates_purges_and_deletes_a_stream(
    web, page, alice, nats_server, database_url, unique, tmp_path
):
    name = f"SHOP_{unique}"
    tap = tap_process(nats_server.url, database_url, tmp_path / "tap.log")
    try:
        _log_in(page, web, alice)
        page.click("#new-stream")
        page.fill("#id_name", "has space")
        page.fill("#id_subjects", f"shop.{unique}.>")
        page.click("#submit-stream")
        error = page.locator('.field-error[data-field="name"]')
        assert "cannot contain spaces" in error.inner_text()
        assert page.input_value("#id_subjects") == f"shop.{unique}.>"  # kept as typed
        _shot(page, "field-error")

        page.fill("#id_name", name)
        page.fill("#id_max_age", "7d")
        page.fill("#id_description", "orders of the shop")
        page.click("#submit-stream")
        page.wait_for_url(web + "/")
        assert "created" in page.locator("#flash").inner_text()
        _wait_for_text(page, web + "/", "#streams", name)
        _shot(page, "overview")
        _wait_for_text(page, web + "/topology/", "#topology-list", name)

        page.goto(f"{web}/streams/{name}/")
        page.click("#purge-stream")
        page.check('input[name="mode"][value="all"]')
        page.fill("#id_confirm", "wrong")
        page.click("#submit-purge")
        assert "Type the name exactly" in page.locator(".field-error").inner_text()
        page.fill("#id_confirm", name)
        page.click("#submit-purge")
        page.wait_for_url(f"{web}/streams/{name}/")
        assert "Purged 0 messages" in page.locator("#flash").inner_text()
        _shot(page, "purged")

        page.click("#delete-stream")
        page.fill("#id_confirm", name)
        _shot(page, "delete")
        page.click("#submit-delete")
        page.wait_for_url(web + "/")
        assert "deleted" in page.locator("#flash").inner_text()
        deadline = time.monotonic() + 30
        while page.locator(f'#streams tr[data-stream="{name}"]').count():
            assert time.monotonic() < deadline, "the deleted stream stays on the overview"
            time.sleep(0.5)
            page.goto(web + "/")
    finally:
        tap.terminate()
        tap.wait(15)


def test_a_viewer_sees_no_management_button(web, page, nats_server, database_url, unique):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user("vera", password="vera-password-1")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    _log_in(page, web, ("vera", "vera-password-1"))
    assert page.locator("#new-stream").count() == 0
    assert page.locator(".manage-actions").count() == 0
    page.goto(web + "/streams/new/")
    assert "takes the admin role" in page.locator("#forbidden").inner_text()
