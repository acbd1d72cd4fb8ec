"""pytest plugin (loaded with `-p`, before Django's settings): give the tests a real PostgreSQL.

With DATABASE_URL set, the tests use that server (pytest-django creates its own test database on
it). Without, a throw-away embedded PostgreSQL (PyPI `pgserver`) starts for this run and is
stopped and deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

_server = None
_folder: Path | None = None

if not os.environ.get("DATABASE_URL"):
    warnings.filterwarnings("ignore", module="platformdirs")
    from eventbus.embedded import EmbeddedPostgres

    _folder = Path(tempfile.mkdtemp(prefix="flowscope-test-pg-"))
    _server = EmbeddedPostgres(_folder / "data").start()
    os.environ["DATABASE_URL"] = _server.url()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
