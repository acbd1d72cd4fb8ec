"""The real web process (Daphne serving dashboard.asgi) for tests, on a database of their choice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventbus.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def daphne(env: dict[str, str], log_path: Path, port: int | None = None) -> Iterator[str]:
    """Daphne with `env` over this process's environment, logging to `log_path` (appending);
    yields its URL. `port`: a given one (to start it again on the same address)."""
    port = port or free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "dashboard.asgi:application"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def no_page_overflow(page: Any) -> None:
    """The page fits its viewport: nothing wider than the window (wide tables and dumps scroll
    in their own boxes) and every link of the navigation in view, none cut off."""
    viewport = page.viewport_size["width"]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport, f"the page is {width}px wide"
    cut = page.evaluate(
        """(viewport) => [...document.querySelectorAll('.topbar nav a')]
          .filter(a => a.getBoundingClientRect().right > viewport).map(a => a.textContent)""",
        viewport,
    )
    assert not cut, f"navigation cut off at {viewport}px: {cut}"


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; AssertionError with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def wait_js(page: Any, expression: str, timeout: float = 10.0) -> None:
    """Until a JavaScript expression in the page is truthy, polled from here.
    (Playwright's wait_for_function evaluates its predicate inside the page with eval() once
    the first try fails, which the pages' Content-Security-Policy refuses: it passes only when
    the condition already holds.)"""
    wait_until(lambda: page.evaluate(f"!!({expression})"), timeout, expression, step=0.05)


# Every cell of the page's `table.data.cards` tables: [table id, label, its ::before text, left,
# right, display of its row], the tables' boxes that scroll sideways, and how many cells there are.
CARD_CELLS = """() => {
    const cells = [...document.querySelectorAll('table.data.cards tbody:not([hidden]) td')]
        .filter(td => td.offsetParent !== null);
    const boxes = [...document.querySelectorAll('.table-scroll')]
        .filter(b => b.querySelector('table.cards') && b.scrollWidth > b.clientWidth + 1);
    return [cells.map(td => {
        const r = td.getBoundingClientRect();
        return [td.closest('table').id, td.dataset.label || '',
                getComputedStyle(td, '::before').content, r.left, r.right,
                getComputedStyle(td.parentElement).display];
    }), boxes.map(b => b.querySelector('table').id)];
}"""


def cards_fit(page: Any, at_least: int = 1) -> int:
    """At a phone's width every row of a `cards` table is a card: each cell in the window,
    under its column's name, and no such table scrolls sideways. Returns the cells seen."""
    viewport = page.viewport_size["width"]
    cells, scrolling = page.evaluate(CARD_CELLS)
    assert len(cells) >= at_least, f"only {len(cells)} card cells"
    assert not scrolling, f"card tables scrolling sideways at {viewport}px: {scrolling}"
    for table, label, before, left, right, display in cells:
        assert display == "grid", (table, label, display)
        assert left >= 0 and right <= viewport, f"{table}: {label or 'a title'} cut off"
        if label:
            assert before == f'"{label}"', (table, label, before)
    return len(cells)


def tables_not_cards(page: Any) -> None:
    """At a desktop's width the same tables are tables: rows, and the header row in view."""
    rows, heads = page.evaluate(
        """() => [[...document.querySelectorAll('table.data.cards tbody tr')]
                .map(tr => getComputedStyle(tr).display),
            [...document.querySelectorAll('table.data.cards thead')]
                .filter(h => h.closest('table').offsetParent !== null)
                .map(h => h.getBoundingClientRect().height)]"""
    )
    assert rows and set(rows) == {"table-row"}, set(rows)
    assert all(h > 10 for h in heads), heads
