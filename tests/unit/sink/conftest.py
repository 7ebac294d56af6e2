"""Real databases for the sink tests: a SQLite file per test, and the session's PostgreSQL
server (``postgres_url`` in tests/conftest.py) with a schema of its own per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa


@dataclass
class _Postgres:
    """One engine for the session: SQLAlchemy caches compiled statements (reflection's
    catalogue queries among them) per engine, so an engine per test would cost ~50 ms each.
    Each connection is pointed at the current test's schema when it is checked out."""

    url: str
    engine: sa.Engine
    schema: str = "public"


@pytest.fixture(scope="session")
def postgres(postgres_url: str) -> Iterator[_Postgres]:
    """The session's PostgreSQL engine, its search path following the current test."""
    # UTC sessions, so timestamps read back the same on every machine.
    engine = sa.create_engine(postgres_url, connect_args={"options": "-c timezone=UTC"})
    pg = _Postgres(postgres_url, engine)

    @sa.event.listens_for(engine, "checkout")
    def _search_path(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET search_path TO "{pg.schema}"')
        cursor.close()
        dbapi_connection.commit()

    try:
        yield pg
    finally:
        engine.dispose()


@dataclass
class Database:
    """One test's database: an engine, and a way to open more engines onto the same data."""

    dialect: str
    engine: sa.Engine
    url: str
    connect_args: dict[str, Any]
    _extra: list[sa.Engine]
    schema: str | None  # PostgreSQL: the test's own schema

    def another_engine(self, *, lock_timeout_ms: int | None = None) -> sa.Engine:
        """A second engine onto the same database; with a short lock wait if asked."""
        args = dict(self.connect_args)
        if lock_timeout_ms is not None:
            if self.dialect == "sqlite":
                args["timeout"] = lock_timeout_ms / 1000
            else:
                args["options"] = f"{args['options']} -c lock_timeout={lock_timeout_ms}"
        engine = sa.create_engine(self.url, connect_args=args)
        self._extra.append(engine)
        return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database of each kind; on PostgreSQL a schema of the test's own,
    the only one on the search path, so tests never see each other's tables."""
    extra: list[sa.Engine] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sink.db'}"
        database = Database("sqlite", sa.create_engine(url), url, {}, extra, None)
        try:
            yield database
        finally:
            for engine in [database.engine, *extra]:
                engine.dispose()
        return
    pg: _Postgres = request.getfixturevalue("postgres")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg.engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    pg.schema = schema
    args = {"options": f"-c search_path={schema} -c timezone=UTC"}
    database = Database("postgresql", pg.engine, pg.url, args, extra, schema)
    try:
        yield database
    finally:
        for engine in extra:
            engine.dispose()
        pg.schema = "public"
        with pg.engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
