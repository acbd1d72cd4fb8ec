"""The Content-Security-Policy in a real browser (issue #14, point 9): every main page loads under
it with no violation (the live websocket stays connected, the API docs render), and a locked-out
login shows its message under Daphne."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytestmark = pytest.mark.browser

# collected before any page script runs (Playwright injects this outside the page's CSP)
LISTEN = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " "
                    + e.sourceFile + ":" + e.lineNumber);
});
"""


def watch(page: Any) -> list[str]:
    """Console errors and CSP messages of the page (the browser logs each violation too)."""
    seen: list[str] = []
    page.add_init_script(LISTEN)

    def console(message: Any) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            seen.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: seen.append(f"page error: {e}"))
    return seen


def log_in(page: Any, web: str, username: str, password: str) -> None:
    page.goto(web + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def violations(page: Any) -> list[str]:
    found: list[str] = page.evaluate("window.__csp || []")
    return found


def test_every_page_loads_under_the_policy_with_no_violation(web, page, alice):
    from dashboard.models import Consumer, ConsumerSample, Stream

    now = datetime.now(UTC)
    subjects = ["orders.>"]
    stream = Stream.objects.create(name="ORDERS", created=now, retention="limits", state_at=now,
                                   subjects=subjects, config={"subjects": subjects})  # fmt: skip
    Consumer.objects.create(stream=stream, name="inventory", last_seen=now, num_pending=3)
    for i in range(10):  # so the stream and consumer pages draw their charts (uPlot)
        ConsumerSample.objects.create(stream=stream, consumer="inventory", num_pending=i,
                                      ts=now - timedelta(seconds=30 * (10 - i)))  # fmt: skip
    console = watch(page)
    log_in(page, web, *alice)
    page.wait_for_url(web + "/")
    header = page.request.get(web + "/").headers["content-security-policy"]
    assert "script-src 'self'" in header and "unsafe-inline" not in header

    # the live socket connects under connect-src and stays connected
    page.wait_for_selector("#live-status[data-state=live]", timeout=15000)
    page.wait_for_timeout(2000)
    assert page.get_attribute("#live-status", "data-state") == "live"
    assert violations(page) == []

    for url in ["/streams/ORDERS/", "/streams/ORDERS/consumers/inventory/", "/topology/",
                "/events/", "/tokens/", "/audit/", "/password/", "/no/such/page/"]:  # fmt: skip
        page.goto(web + url)
        page.wait_for_load_state("networkidle")
        assert violations(page) == [], url
    page.goto(web + "/streams/ORDERS/")
    page.wait_for_selector(".chart canvas")  # uPlot drew, setting its styles from script
    page.goto(web + "/events/")
    page.check("#live-tail")  # the event browser's own socket (static/js/tail.js)
    page.wait_for_selector("#live-status[data-state=live]", timeout=15000)
    page.goto(web + "/topology/")
    page.wait_for_selector("#topology-list")
    page.wait_for_timeout(500)
    assert violations(page) == []

    # Swagger UI sets style from its scripts (CSSOM, which style-src 'self' allows): it renders
    page.goto(web + "/api/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=15000)
    page.click(".swagger-ui .opblock-summary")  # an operation opens, with its parameters
    page.wait_for_selector(".swagger-ui .parameters-container", timeout=5000)
    page.wait_for_timeout(500)
    assert violations(page) == []
    assert [m for m in console if "Content Security Policy" in m or "Refused" in m] == []


def test_a_locked_out_login_says_so_in_the_browser(web, page, alice):
    console = watch(page)
    for _ in range(5):
        log_in(page, web, "alice", "not-her-password")
    message = page.locator("#locked-out").inner_text()
    assert message == (
        "Too many failed attempts for this user from your address; try again in 15 minutes."
    )
    log_in(page, web, *alice)  # her own password too, from this address
    assert page.locator("#locked-out").is_visible() and "/login/" in page.url
    assert violations(page) == []
    assert [m for m in console if "Content Security Policy" in m] == []
