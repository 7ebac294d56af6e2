"""Fixtures every test tier shares: a real PostgreSQL server, started once per session, and
Prometheus's promtool."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of promtool (Debian package `prometheus`; .ci/run installs it).

    Skips on a developer machine without it, but fails in CI: there the check must run.
    """
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs the prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a real PostgreSQL 16 server from the pgserver wheel.

    The server lives as long as the test session; tests keep apart by their own table
    names or schemas.
    """
    import pgserver

    datadir: Path = tmp_path_factory.mktemp("pgdata")
    server = pgserver.get_server(datadir, cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()
