"""Refresh the README's screenshots from a running Flowscope (`make run`):

    .venv/bin/python scripts/screenshots.py http://127.0.0.1:8000 admin PASSWORD [PATH ...]

Logs in, then saves docs/<name>.png for each page path (default: the overview and the first
stream's page); a path ending in `@phone` is taken 390 px wide, whole, as docs/<name>-phone.png.
Uses Debian's chromium, like the browser tests."""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(base: str, user: str, password: str, paths: list[str]) -> None:
    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(base + "/login/")
        page.screenshot(path=str(DOCS / "login.png"))
        page.fill("#id_username", user)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        if not paths:
            paths = ["/"]
            first = page.locator("#streams tbody a").first
            if first.count():
                paths.append(first.get_attribute("href") or "/")
        for path in paths:
            path, phone = path.removesuffix("@phone"), path.endswith("@phone")
            page.set_viewport_size(
                {"width": 390 if phone else 1280, "height": 844 if phone else 800}
            )
            page.goto(base + path)
            page.wait_for_timeout(1500)  # charts drawn, the first push in
            name = path.strip("/").replace("/", "-") or "overview"
            name += "-phone" if phone else ""
            page.screenshot(path=str(DOCS / f"{name}.png"), full_page=phone or name == "overview")
            print(DOCS / f"{name}.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
