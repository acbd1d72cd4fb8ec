"""Helpers for the metrics and probe tests: scrape and parse /metrics, poll a probe, run a tap
process with its port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.taputil import ROOT
from tests.webutil import get

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Series:
    """Every sample of `url` (a /metrics), parsed by prometheus_client's own parser (which
    raises on anything malformed): (sample name, labels) -> value."""
    status, body = get(url)
    assert status == 200, (status, body[:500])
    found: Series = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[s.name, frozenset(s.labels.items())] = s.value
    return found


def value(series: Series, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def names(series: Series) -> set[str]:
    return {n for n, _ in series}


def probe(url: str) -> tuple[int, dict[str, Any]]:
    status, body = get(url)
    return status, json.loads(body)


def tap_process(
    nats_url: str, database_url: str, log_path: Path, port: int, **env: str
) -> subprocess.Popen[bytes]:
    """`python manage.py tap` with its metrics port on `port`."""
    environ = dict(os.environ, NATS_URL=nats_url, DATABASE_URL=database_url,
                   FLOWSCOPE_LAG_INTERVAL="0.5", FLOWSCOPE_TAP_METRICS_PORT=str(port),
                   **env)  # fmt: skip
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "manage.py", "tap"], cwd=ROOT, env=environ, stdout=log, stderr=log
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
