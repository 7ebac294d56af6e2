"""Fixtures every test tier shares: a real PostgreSQL server, started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
