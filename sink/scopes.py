"""What a sink remembers of each command it applied, so a late record cannot bring data back.

A downstream service that fills its tables from the tagged records (the
:class:`~privacy_pipeline.sink.materialise.Materialiser`) and applies erasure commands to
the same tables (the :class:`~privacy_pipeline.sink.database.CommandApplier`) reads two
topics at two paces. A person's older tagged record can therefore reach the tables *after*
the command that erased the person: the order of records across topics is not defined.

The answer here makes the two orders end in the same tables (two exceptions, both on the
side of erasing more, are in :mod:`privacy_pipeline.sink.materialise`). When the applier keeps
scopes (``CommandApplier(..., keep_scopes=True)``), every command it answers ``done``,
``not_found`` or ``retained`` leaves a :class:`Scope` in the ``command_scopes`` table, in
the command's own transaction: which person (a hash of ``controller:subject_id``), which
categories, which action, and up to which instant the command covers the person's records
(its ``recorded_before`` when it has one, else its ``issued_at``: the pipeline had seen
every record of the person up to then). The materialiser applies each scope that covers a
record to that record before writing it, exactly as the command would have applied to
the row had the record come first: erased columns stay empty (and a row left with no
personal column is not written), anonymised ones get their strategy, restricted rows their
flag.

Both sides first update the single row of ``command_scopes_lock`` in their transaction.
That serialises them (SQLite's write lock, PostgreSQL's row lock), so a materialiser can
never check the scopes, miss a command committed a moment later, and then write a row that
command did not see.

The person is kept as a SHA-256 of ``controller:subject_id``, never in the clear: the
table outlives the person's data. Subject ids are often guessable, so this is
pseudonymisation, not anonymisation; :meth:`ScopeStore.forget` removes scopes old enough
that no record they cover can still arrive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from privacy_pipeline.processors.instants import InstantError, parse_instant

__all__ = ["LOCK_TABLE", "SCOPES_TABLE", "Scope", "ScopeStore", "scope_of", "subject_key"]

#: The sink's record of the scopes of applied commands.
SCOPES_TABLE = "command_scopes"
#: One row that the applier and the materialiser update first in each transaction.
LOCK_TABLE = "command_scopes_lock"

# Fixed-width UTC text: sorts as it compares, and reads back the same on every database
# (SQLite keeps no zone with a timestamp).
_INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def subject_key(controller: str, subject_id: str) -> str:
    """The hex SHA-256 of ``controller:subject_id``: how scopes name a person."""
    return hashlib.sha256(f"{controller}:{subject_id}".encode()).hexdigest()


def _text(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime(_INSTANT_FORMAT)


def _instant(text: str) -> datetime:
    return datetime.strptime(text, _INSTANT_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one applied command covers: the person's records up to `covers_until`."""

    command_id: str
    action: str
    categories: frozenset[str]
    covers_until: datetime

    def covers(self, occurred_at: datetime) -> bool:
        """True for a record of the person that occurred at or before `covers_until`."""
        return occurred_at <= self.covers_until


def scope_of(command: Mapping[str, Any]) -> tuple[str, Scope] | None:
    """The person's key and the scope of a decoded erasure command; None when the command
    lacks what a scope needs (the applier has answered such a command ``failed``)."""
    try:
        controller, subject_id = str(command["controller"]), str(command["subject_id"])
        categories = frozenset(str(c) for c in command["categories"])
        until_text = command.get("recorded_before") or command["issued_at"]
        covers_until = parse_instant(str(until_text))
        scope = Scope(str(command["command_id"]), str(command["action"]), categories, covers_until)
    except (KeyError, TypeError, InstantError):
        return None
    return subject_key(controller, subject_id), scope


def _tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    scopes = sa.Table(
        SCOPES_TABLE,
        metadata,
        sa.Column("command_id", sa.String(200), primary_key=True),
        sa.Column("subject_key", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("covers_until", sa.String(32), nullable=False),
        sa.Column("applied_at", sa.String(32), nullable=False),
    )
    lock = sa.Table(
        LOCK_TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("writes", sa.BigInteger, nullable=False),
    )
    return scopes, lock


class ScopeStore:
    """The ``command_scopes`` and ``command_scopes_lock`` tables of one database."""

    def __init__(self, engine: Engine, *, schema: str | None = None) -> None:
        """Create both tables (and the lock's row) when they are missing."""
        self._engine = engine
        self.scopes, self._lock = _tables(sa.MetaData(schema=schema))
        with engine.begin() as conn:
            # checkfirst: the applier and the materialiser may both be starting.
            self.scopes.create(conn, checkfirst=True)
            self._lock.create(conn, checkfirst=True)
        with engine.begin() as conn:
            # The other side may insert it at the same moment: whoever comes second
            # leaves it as it is.
            insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
            conn.execute(insert(self._lock).values(id=1, writes=0).on_conflict_do_nothing())

    def lock(self, conn: Connection) -> None:
        """Take the lock both sides take first, until `conn`'s transaction ends."""
        conn.execute(
            sa.update(self._lock).where(self._lock.c.id == 1).values(writes=self._lock.c.writes + 1)
        )

    def record(self, conn: Connection, command: Mapping[str, Any], applied_at: datetime) -> None:
        """Keep the scope of an applied command, in the transaction that applied it."""
        found = scope_of(command)
        if found is None:
            return
        key, scope = found
        conn.execute(
            sa.insert(self.scopes).values(
                command_id=scope.command_id,
                subject_key=key,
                action=scope.action,
                categories=",".join(sorted(scope.categories)),
                covers_until=_text(scope.covers_until),
                applied_at=_text(applied_at),
            )
        )

    def read(self, conn: Connection, keys: Iterable[str]) -> dict[str, list[Scope]]:
        """The scopes of the persons `keys`, each person's in the order they were applied."""
        wanted = sorted(set(keys))
        out: dict[str, list[Scope]] = {}
        s = self.scopes.c
        # Chunks well under every database's limit of bound parameters.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                sa.select(s.subject_key, s.command_id, s.action, s.categories, s.covers_until)
                .where(s.subject_key.in_(chunk))
                .order_by(s.applied_at, s.command_id)
            )
            for key, command_id, action, categories, until in rows:
                scope = Scope(command_id, action, frozenset(categories.split(",")), _instant(until))
                out.setdefault(key, []).append(scope)
        return out

    def forget(self, applied_before: datetime) -> int:
        """Delete the scopes applied before `applied_before`; return how many.

        Safe once every record a scope covers has been materialised or can no longer
        arrive: for the pipeline's tagged topics, some margin past their retention (7 days)
        plus the materialiser's lag.
        """
        with self._engine.begin() as conn:
            self.lock(conn)
            result = conn.execute(
                sa.delete(self.scopes).where(self.scopes.c.applied_at < _text(applied_before))
            )
        return int(result.rowcount)
