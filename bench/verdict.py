"""The last lines of every benchmark here: which targets were missed, and the exit status
(`make bench` fails on a missed target; `--no-targets` prints the same and exits 0)."""

from __future__ import annotations


def exit_status(missed: list[str], no_targets: bool) -> int:
    if not missed:
        print("every target met")
        return 0
    print("target(s) MISSED: " + "; ".join(missed))
    if no_targets:
        print("exit 0 all the same (--no-targets)")
        return 0
    return 1
