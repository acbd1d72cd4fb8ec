"""The first thing a user does: log in and see the overview."""

import pytest

pytestmark = pytest.mark.browser


def test_it_logs_in_and_shows_the_empty_overview(web, page, alice):
    username, password = alice
    page.goto(web + "/")
    assert "/login/" in page.url  # anonymous users are sent to the login page
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(web + "/")
    assert page.locator("h1").inner_text() == "Overview"
    assert page.locator("#no-streams").is_visible()
    assert page.locator(".who a").inner_text() == "alice"
    assert page.locator(".who .role").inner_text() == "admin"
    # the stylesheet is served (by WhiteNoise, under Daphne)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(248, 250, 252)"


def test_it_refuses_a_wrong_password(web, page, alice):
    page.goto(web + "/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "not-her-password")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text().startswith("Your username and password didn't match")
    assert "/login/" in page.url
