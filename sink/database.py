"""Apply erasure commands to a database, as a sink mapping says, and answer with an ack.

`CommandApplier` is the database half of the sink: the Kafka half decodes and verifies a
command, asks `concerns` whether this sink serves it and `unmapped_categories` whether the
mapping covers it, then calls `apply` and sends the ack it returns. It uses SQLAlchemy Core
only and works on SQLite and PostgreSQL.

Nothing here writes a value, a subject id or an SQL parameter into an ack, an exception or a
log line: database errors are reported by their class and SQLSTATE (or SQLite error name),
never by their message, which carries the statement's parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import ReflectedForeignKeyConstraint
from sqlalchemy.sql.elements import ColumnElement

from privacy_pipeline.processors.instants import InstantError, format_instant, parse_instant

from .mapping import APPLIED_COMMANDS_TABLE, Constant, MappingError, SinkMapping, TableMapping
from .scopes import SCOPES_TABLE, ScopeStore

logger = logging.getLogger(__name__)

ACTIONS = ("erase", "anonymize", "restrict")
Status = Literal["done", "not_found", "failed", "retained"]

# SQLite primary result codes worth a retry: busy, locked, out of memory, I/O error, disk
# full, cannot open, lock protocol. SQLITE_ERROR (1) is also an OperationalError in Python
# (a missing table or column), and retrying that only repeats it.
_SQLITE_TRANSIENT = frozenset({5, 6, 7, 10, 13, 14, 15})
# A hex SHA-256 is 64 characters; a shorter text column cannot hold it.
_HASH_LENGTH = 64
_YEAR_PREFIX = re.compile(r"^(\d{4})")
_INTEGER = re.compile(r"^-?\d+$")


class CommandError(ValueError):
    """A command this sink cannot answer at all: no command id, or not meant for it.

    The caller should have filtered it out (see `CommandApplier.concerns`); the message
    holds no personal data.
    """


class DatabaseMismatchError(MappingError):
    """The database does not match the mapping: a table or column is missing, or has a type
    the mapping cannot use. The message names the database (without its password) and the
    mapping's field path of each problem."""


# -- the command --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Command:
    command_id: str
    controller: str
    subject_id: str
    action: str
    categories: tuple[str, ...]
    recorded_before: datetime | None


class _Invalid(Exception):
    """A command field that cannot be acted on; the message names the field, never its value."""


def _parse_command(command: Mapping[str, Any]) -> _Command:
    def text(name: str) -> str:
        value = command.get(name)
        if not isinstance(value, str) or not value:
            raise _Invalid(f"{name}: missing or not a non-empty string")
        return value

    action = command.get("action")
    if action not in ACTIONS:
        raise _Invalid(f"action: not one of {', '.join(ACTIONS)}")
    categories = command.get("categories")
    if (
        not isinstance(categories, list | tuple)
        or not categories
        or not all(isinstance(c, str) for c in categories)
    ):
        raise _Invalid("categories: missing or not a non-empty list of strings")
    before = command.get("recorded_before")
    recorded_before: datetime | None = None
    if before is not None:
        if not isinstance(before, str):
            raise _Invalid("recorded_before: not an ISO 8601 instant")
        try:
            recorded_before = parse_instant(before)
        except InstantError:
            raise _Invalid("recorded_before: not an ISO 8601 instant with a zone") from None
    return _Command(
        command_id=text("command_id"),
        controller=text("controller"),
        subject_id=text("subject_id"),
        action=str(action),
        categories=tuple(dict.fromkeys(categories)),
        recorded_before=recorded_before,
    )


def _attempt(command: Mapping[str, Any]) -> int:
    attempt = command.get("attempt")
    # The attempt only numbers the ack; a missing or odd one is the first.
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1:
        return attempt
    return 1


def unmapped_categories(mapping: SinkMapping, command: Mapping[str, Any]) -> list[str]:
    """The command's categories that no table of the mapping maps, in the command's order.

    The Kafka half dead-letters a command with any: acting on part of it and acking would
    tell the pipeline that data is gone which this sink does not even know about.
    """
    categories = command.get("categories")
    if not isinstance(categories, list | tuple):
        return []
    mapped = mapping.mapped_categories()
    return [c for c in dict.fromkeys(categories) if isinstance(c, str) and c not in mapped]


# -- the database side of one table -------------------------------------------------------

_RecordedKind = Literal["datetime", "datetime_tz", "date", "text"]
_SubjectKind = Literal["text", "integer", "uuid"]


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    table: sa.Table
    mapping: TableMapping
    subject_kind: _SubjectKind
    recorded_kind: _RecordedKind | None
    restricted_value: bool | int | None
    # One NOT EXISTS per foreign key that points at this table: a row still referenced
    # is kept (with its personal columns cleared) instead of deleted.
    unreferenced: tuple[ColumnElement[bool], ...]

    def column(self, name: str) -> sa.Column[Any]:
        return self.table.c[name]


def _check_table(name: str, table: sa.Table, tm: TableMapping) -> list[tuple[str, str]]:
    """Every way the reflected table does not fit its mapping, as (field path, problem)."""
    where = f"tables.{name}"
    problems: list[tuple[str, str]] = []
    roles = {
        "subject_column": tm.subject_column,
        "controller_column": tm.controller_column,
        "recorded_at_column": tm.recorded_at_column,
        "restricted_column": tm.restricted_column,
    }
    for role, column in roles.items():
        if column is not None and column not in table.c:
            problems.append((f"{where}.{role}", f"table {name} has no column '{column}'"))
    for column in tm.columns:
        if column not in table.c:
            problems.append((f"{where}.columns.{column}", f"table {name} has no such column"))
    if problems:
        return problems

    subject_type = table.c[tm.subject_column].type
    if not isinstance(subject_type, sa.String | sa.Integer | sa.Uuid | sa.types.NullType):
        problems.append((f"{where}.subject_column", "must be a text, integer or UUID column"))
    if tm.recorded_at_column is not None:
        recorded_type = table.c[tm.recorded_at_column].type
        if not isinstance(recorded_type, sa.DateTime | sa.Date | sa.String):
            problems.append(
                (f"{where}.recorded_at_column", "must be a timestamp, date or text column")
            )
    if tm.restricted_column is not None:
        restricted_type = table.c[tm.restricted_column].type
        if not isinstance(restricted_type, sa.Boolean | sa.Integer):
            problems.append((f"{where}.restricted_column", "must be a boolean column"))

    for column in tm.columns:
        col = table.c[column]
        path = f"{where}.columns.{column}"
        strategy = tm.strategy(column)
        # erase (and anonymize to NULL) must be able to clear the column in a row that stays;
        # only a table's single column is always cleared by deleting its row instead.
        if not col.nullable and (len(tm.columns) > 1 or strategy is None):
            problems.append((path, "is NOT NULL, but erase or anonymize would set it NULL"))
        if column in tm.anonymize:
            problem = _strategy_problem(col.type, strategy)
            if problem:
                problems.append((f"{where}.anonymize.{column}", problem))
    return problems


def _strategy_problem(col_type: sa.types.TypeEngine[Any], strategy: object) -> str | None:
    if strategy == "hash":
        if not isinstance(col_type, sa.String):
            return "hash writes text: the column must be a text column"
        if col_type.length is not None and col_type.length < _HASH_LENGTH:
            return f"hash writes {_HASH_LENGTH} characters: the column holds {col_type.length}"
    elif strategy == "year":
        if not isinstance(col_type, sa.DateTime | sa.Date | sa.String):
            return "year needs a date, timestamp or text column"
    elif isinstance(strategy, Constant):
        value = strategy.constant
        expected: tuple[type, ...] | None = None
        if isinstance(col_type, sa.Boolean):
            expected = (bool,)
        elif isinstance(col_type, sa.String):
            expected = (str,)
        elif isinstance(col_type, sa.DateTime | sa.Date):
            expected = (date,)
        elif isinstance(col_type, sa.Integer):
            expected = (int,)
        elif isinstance(col_type, sa.Numeric):
            expected = (int, float)
        wrong_bool = isinstance(value, bool) and expected is not None and bool not in expected
        if expected is not None and (not isinstance(value, expected) or wrong_bool):
            return f"the constant does not fit the column's type ({col_type})"
    return None


def _describe_table(
    name: str, table: sa.Table, tm: TableMapping, references: list[_IncomingKey]
) -> _Table:
    subject_type = table.c[tm.subject_column].type
    subject_kind: _SubjectKind = "text"
    if isinstance(subject_type, sa.Integer):
        subject_kind = "integer"
    elif isinstance(subject_type, sa.Uuid):
        subject_kind = "uuid"
    recorded_kind: _RecordedKind | None = None
    if tm.recorded_at_column is not None:
        recorded_type = table.c[tm.recorded_at_column].type
        if isinstance(recorded_type, sa.DateTime):
            recorded_kind = "datetime_tz" if recorded_type.timezone else "datetime"
        elif isinstance(recorded_type, sa.Date):
            recorded_kind = "date"
        else:
            recorded_kind = "text"
    restricted_value: bool | int | None = None
    if tm.restricted_column is not None:
        restricted_type = table.c[tm.restricted_column].type
        restricted_value = True if isinstance(restricted_type, sa.Boolean) else 1
    unreferenced: list[ColumnElement[bool]] = []
    for ref in references:
        child = sa.table(ref.table, *(sa.column(c) for c in ref.columns), schema=ref.schema).alias()
        joins = [child.c[c] == table.c[r] for c, r in zip(ref.columns, ref.referred, strict=True)]
        unreferenced.append(~sa.exists().where(*joins))
    return _Table(
        name, table, tm, subject_kind, recorded_kind, restricted_value, tuple(unreferenced)
    )


@dataclass(frozen=True, slots=True)
class _IncomingKey:
    """A foreign key of `schema.table` (`columns`) pointing at a mapped table (`referred`)."""

    schema: str | None
    table: str
    columns: tuple[str, ...]
    referred: tuple[str, ...]


def _incoming_foreign_keys(
    reflected: Mapping[tuple[str | None, str], list[ReflectedForeignKeyConstraint]],
    schema: str | None,
    mapped: Iterable[str],
) -> dict[str, list[_IncomingKey]]:
    """Every foreign key of the schema's tables, mapped or not, by the mapped table it names."""
    names = set(mapped)
    out: dict[str, list[_IncomingKey]] = {name: [] for name in names}
    for (child_schema, child), keys in reflected.items():
        for key in keys:
            parent = key["referred_table"]
            if parent not in names or key.get("referred_schema") not in (None, schema):
                continue
            out[parent].append(
                _IncomingKey(
                    child_schema,
                    child,
                    tuple(key["constrained_columns"]),
                    tuple(key["referred_columns"]),
                )
            )
    return out


# -- strategies ---------------------------------------------------------------------------


def _value_text(value: object) -> bytes:
    """The text a hash is taken of: strings as they are, dates in ISO 8601, numbers in
    decimal; bytes are hashed as they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, date):  # datetime too
        return value.isoformat().encode("utf-8")
    return str(value).encode("utf-8")


def hash_value(value: object) -> str:
    """The `hash` strategy: the hex SHA-256 of the value's text (see `_value_text`)."""
    return hashlib.sha256(_value_text(value)).hexdigest()


def year_value(value: object, col_type: sa.types.TypeEngine[Any]) -> object:
    """The `year` strategy for one raw database value.

    A date or timestamp becomes 1 January (00:00, same zone) of its year. A text that starts
    with a four-digit year becomes that year: as a date or timestamp again when the column is
    declared one (SQLite keeps those as text), else as the four digits. Anything else
    becomes NULL: a value the strategy cannot read must not survive anonymisation.
    """
    if isinstance(value, datetime):
        return value.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if isinstance(value, date):
        return date(value.year, 1, 1)
    if isinstance(value, str):
        found = _YEAR_PREFIX.match(value)
        if found is None:
            return None
        year = int(found.group(1))
        if isinstance(col_type, sa.DateTime | sa.Date):
            if year < 1:
                return None
            if isinstance(col_type, sa.DateTime):
                # Only SQLite hands a timestamp back as text, and it stores no zone.
                return datetime(year, 1, 1)  # noqa: DTZ001
            return date(year, 1, 1)
        return found.group(1)
    return None


# -- the applier ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    status: Status
    detail: str
    rows: dict[str, int] = field(default_factory=dict)
    retryable: bool = False


@dataclass(slots=True)
class _Progress:
    """Where the transaction was when it failed, for the ack's detail and the log."""

    where: str = "before any table"

    def on(self, table: str) -> None:
        self.where = f"on table {table}"


class _AlreadyStored(Exception):
    """The command id was stored by someone else while this apply ran."""


class CommandApplier:
    """Applies erasure commands for one target to one database, per a sink mapping.

    Each command runs in one transaction, together with the insert of its ack into the
    sink's own `applied_commands` table (created when missing): either all of it happens,
    or none of it.

    What is stored, and why:

    - `done`, `not_found` and `retained` are stored: a redelivered command (same
      `command_id`) changes nothing and gets the stored ack again, identical.
    - A `failed` ack that is not retryable (the mapping cannot serve the command, a
      constraint or a schema error, a malformed command) is stored too, in the same
      transaction when nothing was changed, so a redelivery does not run the failing
      statements again and answers the same. The failure usually needs a person to fix the
      mapping or the schema; after that, the pipeline's re-issue of the command (a higher
      `attempt`) is applied afresh, and its ack replaces the stored failure.
    - A retryable failure (lost connection, lock or statement timeout, a busy SQLite file)
      is not stored: the transaction was rolled back, and a redelivery tries again.
    """

    def __init__(
        self,
        engine: Engine,
        mapping: SinkMapping,
        *,
        schema: str | None = None,
        keep_scopes: bool = False,
    ) -> None:
        """Reflect the mapped tables and check them against the mapping, then create
        `applied_commands` if it is missing. Raises DatabaseMismatchError naming every
        missing table or column and every column type a strategy cannot write.

        With `keep_scopes`, each command answered `done`, `not_found` or `retained` also
        leaves its scope in `command_scopes`, in the command's transaction, for a
        :class:`~privacy_pipeline.sink.materialise.Materialiser` filling the same tables
        (see :mod:`privacy_pipeline.sink.scopes`)."""
        self._engine = engine
        self._mapping = mapping
        self._sqlite = engine.dialect.name == "sqlite"
        metadata = sa.MetaData(schema=schema)
        source = engine.url.render_as_string(hide_password=True)
        problems: list[tuple[str, str]] = []
        # One connection and one batched reflection (a few catalogue queries in all, not a
        # few per table): a sink starts often, in tests for every case.
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            existing = set(inspector.get_table_names(schema=schema))
            existing |= set(inspector.get_view_names(schema=schema))
            present = [name for name in mapping.tables if name in existing]
            metadata.reflect(conn, schema=schema, only=present, views=True)
            foreign_keys = inspector.get_multi_foreign_keys(schema=schema)
        tables: dict[str, sa.Table] = {}
        for name, tm in mapping.tables.items():
            if name not in existing:
                hint = ""
                if not self._sqlite and not name.islower():
                    hint = " (PostgreSQL folds unquoted names to lower case)"
                problems.append((f"tables.{name}", f"no table '{name}' in the database{hint}"))
                continue
            table = metadata.tables[f"{schema}.{name}" if schema else name]
            found = _check_table(name, table, tm)
            problems += found
            if not found:
                tables[name] = table
        if problems:
            raise DatabaseMismatchError(source, problems)
        references = _incoming_foreign_keys(foreign_keys, schema, tables)
        reflected = {
            name: _describe_table(name, table, mapping.tables[name], references[name])
            for name, table in tables.items()
        }
        # Children before parents, so a row is deleted before the row its foreign key names.
        order = [t.name for t in reversed(metadata.sorted_tables) if t.name in reflected]
        self._tables = [reflected[name] for name in order]
        self._applied = _applied_commands_table(metadata)
        self._prepare(source, existing)
        self._scopes = ScopeStore(engine, schema=schema) if keep_scopes else None

    def _prepare(self, source: str, existing: set[str]) -> None:
        if APPLIED_COMMANDS_TABLE not in existing:
            # checkfirst: another sink on the same database may be starting too.
            with self._engine.begin() as conn:
                self._applied.create(conn, checkfirst=True)
            return
        with self._engine.connect() as conn:
            columns = sa.inspect(conn).get_columns(
                APPLIED_COMMANDS_TABLE, schema=self._applied.schema
            )
        missing = sorted({c.name for c in self._applied.c} - {c["name"] for c in columns})
        if missing:
            problem = f"exists without column(s) {', '.join(missing)}"
            raise DatabaseMismatchError(source, [(APPLIED_COMMANDS_TABLE, problem)])

    @property
    def mapping(self) -> SinkMapping:
        """The mapping this applier serves."""
        return self._mapping

    def concerns(self, command: Mapping[str, Any]) -> bool:
        """True when the command names this sink's target and, if the mapping lists
        controllers, one of them."""
        return self._mapping.concerns(command)

    def apply(self, command: Mapping[str, Any], now: str) -> dict[str, Any]:
        """Apply one decoded erasure command and return its ack (an extended ErasureAck).

        `now` is the ISO instant (with a zone) the ack reports as `completed_at`; anything
        else raises InstantError. A command this sink does not serve, or one without a
        command id, raises CommandError: there is nothing it could answer for. Every other
        problem, database errors included, is answered with a `failed` ack.
        """
        completed_at = format_instant(parse_instant(now))
        command_id = command.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            raise CommandError("command without a command_id: nothing to acknowledge")
        if not self.concerns(command):
            raise CommandError(
                f"command {command_id} is not for this sink "
                f"(target {self._mapping.target}, controllers {self._mapping.controllers})"
            )
        attempt = _attempt(command)
        progress = _Progress()

        def ack(outcome: _Outcome) -> dict[str, Any]:
            return {
                "command_id": command_id,
                "target": self._mapping.target,
                "status": outcome.status,
                "completed_at": completed_at,
                "detail": outcome.detail,
                "attempt": attempt,
                "retryable": outcome.retryable,
                "rows": outcome.rows,
            }

        try:
            with self._engine.begin() as conn:
                if self._scopes is not None:
                    # Before anything else: a materialiser must not check the scopes and
                    # write between this command's statements and its commit.
                    self._scopes.lock(conn)
                stored = self._stored(conn, command_id)
                if stored is not None:
                    if not (stored["status"] == "failed" and attempt > stored.get("attempt", 1)):
                        return stored
                    conn.execute(
                        sa.delete(self._applied).where(self._applied.c.command_id == command_id)
                    )
                answer = ack(self._outcome(conn, command, progress))
                progress.on(APPLIED_COMMANDS_TABLE)
                self._store(conn, answer)
                if self._scopes is not None and answer["status"] != "failed":
                    progress.on(SCOPES_TABLE)
                    self._scopes.record(conn, command, parse_instant(completed_at))
                # Leaving the block commits; a deferred constraint fails only then.
                progress.where = "at commit"
                return answer
        except _AlreadyStored:
            stored = self.stored_ack(command_id)
            if stored is not None:
                return stored
            outcome = _Outcome("failed", "applied_commands: conflicting insert", retryable=True)
            return ack(outcome)
        except Exception as exc:  # every failure becomes an ack; the transaction rolled back
            outcome = _failure(exc, progress.where)
            logger.warning(
                "command %s failed %s: %s (retryable: %s)",
                command_id,
                progress.where,
                _error_name(exc),
                outcome.retryable,
            )
            answer = ack(outcome)
            if not outcome.retryable:
                self._store_failure(answer)
            return answer

    def stored_ack(self, command_id: str) -> dict[str, Any] | None:
        """The ack stored for `command_id`, or None when it was never applied."""
        with self._engine.connect() as conn:
            return self._stored(conn, command_id)

    # -- inside the transaction -----------------------------------------------------------

    def _stored(self, conn: Connection, command_id: str) -> dict[str, Any] | None:
        text = conn.execute(
            sa.select(self._applied.c.ack).where(self._applied.c.command_id == command_id)
        ).scalar_one_or_none()
        if text is None:
            return None
        stored: dict[str, Any] = json.loads(text)
        return stored

    def _store(self, conn: Connection, answer: dict[str, Any]) -> None:
        row = {
            "command_id": answer["command_id"],
            "status": answer["status"],
            "ack": json.dumps(answer, sort_keys=True, separators=(",", ":")),
            "applied_at": parse_instant(answer["completed_at"]),
        }
        try:
            conn.execute(sa.insert(self._applied).values(row))
        except sa_exc.IntegrityError:
            raise _AlreadyStored from None

    def _store_failure(self, answer: dict[str, Any]) -> None:
        # After a rollback, in a transaction of its own. Storing is an optimisation (a
        # redelivery answers without running again), so a failure to store is only logged.
        try:
            with self._engine.begin() as conn:
                stored = self._stored(conn, answer["command_id"])
                if stored is None:
                    self._store(conn, answer)
        except Exception as exc:  # noqa: BLE001  # see above
            logger.warning(
                "command %s: could not store its failed ack: %s",
                answer["command_id"],
                _error_name(exc),
            )

    def _outcome(
        self, conn: Connection, command: Mapping[str, Any], progress: _Progress
    ) -> _Outcome:
        try:
            cmd = _parse_command(command)
        except _Invalid as exc:
            return _Outcome("failed", f"invalid command: {exc}")
        categories = frozenset(cmd.categories)
        concerned = [(t, t.mapping.columns_of(categories)) for t in self._tables]
        concerned = [(t, cols) for t, cols in concerned if cols]
        unmapped = unmapped_categories(self._mapping, command)
        note = f"; categories not mapped here: {', '.join(unmapped)}" if unmapped else ""
        if not concerned:
            return _Outcome("failed", f"no table here maps the command's categories{note}")
        if cmd.action == "restrict":
            lacking = [t.name for t, _ in concerned if t.restricted_value is None]
            if lacking:
                return _Outcome(
                    "failed",
                    "restrict: no restricted_column on table(s) holding the categories: "
                    f"{', '.join(lacking)}; nothing changed{note}",
                )

        rows: dict[str, int] = {}
        present: dict[str, int] = {}
        parts: list[str] = []
        for t, cols in concerned:
            progress.on(t.name)
            person = self._person(t, cmd)
            if person is None:  # the subject id cannot occur in this column's type
                rows[t.name], present[t.name] = 0, 0
                continue
            if cmd.action == "erase":
                present[t.name], deleted, updated = self._erase(conn, t, cols, person)
                rows[t.name] = deleted + updated
                parts.append(f"{t.name} {updated} changed, {deleted} deleted")
            elif cmd.action == "anonymize":
                present[t.name], rows[t.name] = self._anonymize(conn, t, cols, person)
                parts.append(f"{t.name} {rows[t.name]} anonymised")
            else:
                present[t.name], rows[t.name] = self._restrict(conn, t, person)
                parts.append(f"{t.name} {rows[t.name]} restricted")
        progress.where = "after the tables"

        scope = " (rows recorded at or before recorded_before)" if cmd.recorded_before else ""
        what = f"{cmd.action} {', '.join(sorted(categories - set(unmapped)))}{scope}"
        if not any(present.values()):
            return _Outcome("not_found", f"{what}: no rows of the person{note}", rows)
        counts = "; ".join(parts)
        if cmd.action == "restrict":
            return _Outcome("retained", f"{what}: {counts}{note}", rows)
        if not any(rows.values()):
            counts += " (nothing left to change)"
        return _Outcome("done", f"{what}: {counts}{note}", rows)

    def _person(self, t: _Table, cmd: _Command) -> ColumnElement[bool] | None:
        """The WHERE clause for the person's rows the command covers."""
        tm = t.mapping
        subject: object = cmd.subject_id
        if t.subject_kind == "integer":
            if not _INTEGER.match(cmd.subject_id):
                return None
            subject = int(cmd.subject_id)
        elif t.subject_kind == "uuid":
            try:
                subject = uuid.UUID(cmd.subject_id)
            except ValueError:
                return None
        conditions: list[ColumnElement[bool]] = [t.column(tm.subject_column) == subject]
        if tm.controller_column is not None:
            conditions.append(t.column(tm.controller_column) == cmd.controller)
        if cmd.recorded_before is not None and tm.recorded_at_column is not None:
            conditions.append(
                self._recorded_before(t, t.column(tm.recorded_at_column), cmd.recorded_before)
            )
        return sa.and_(*conditions)

    def _recorded_before(
        self, t: _Table, col: sa.Column[Any], before: datetime
    ) -> ColumnElement[bool]:
        # A row whose recording time is NULL (or, on SQLite, unreadable) is not known to be
        # covered, so it is kept (SQL's NULL comparison does that). Values without a zone
        # are read as UTC.
        # A date column covers the whole day of `before` (in UTC): a day early at worst,
        # where the alternative would never erase the rows recorded on that day.
        utc = before.astimezone(UTC)
        if self._sqlite:
            # SQLite keeps dates as text (or numbers) in whatever format the writer chose;
            # its date functions read every ISO 8601 form, with 'T' or ' ', with or without
            # a zone, into one comparable UTC text. Milliseconds are its finest unit.
            if t.recorded_kind == "date":
                return sa.func.date(col) <= utc.date().isoformat()
            stamp = utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", col) <= stamp
        if t.recorded_kind == "date":
            return col <= utc.date()
        if t.recorded_kind == "datetime":
            return col <= utc.replace(tzinfo=None)
        if t.recorded_kind == "text":
            return sa.cast(col, sa.DateTime(timezone=True)) <= utc
        return col <= utc

    def _counts(
        self, conn: Connection, t: _Table, person: ColumnElement[bool], cols: Iterable[str]
    ) -> tuple[int, int]:
        """The person's rows, and how many of them hold a value in one of `cols`."""
        holding = sa.or_(*(t.column(c).is_not(None) for c in cols))
        query = (
            sa.select(sa.func.count(), sa.func.count(sa.case((holding, 1))))
            .select_from(t.table)
            .where(person)
        )
        present, holding_rows = conn.execute(query).one()
        return int(present), int(holding_rows)

    def _erase(
        self, conn: Connection, t: _Table, cols: list[str], person: ColumnElement[bool]
    ) -> tuple[int, int, int]:
        """Returns (the person's rows, rows deleted, rows changed but kept)."""
        present, _ = self._counts(conn, t, person, cols)
        if not present:
            return 0, 0, 0
        # Delete first the rows the erase would leave without any personal value, then
        # clear the columns in the rows that keep some: the two counts never overlap.
        # A row another row still references is not deleted: that would fail on the
        # foreign key (and fail the whole erase), or cascade into rows that are not the
        # command's to delete (e.g. invoices kept under the Bookkeeping Act). Its personal
        # columns are cleared like those of any kept row.
        others = [c for c in t.mapping.columns if c not in cols]
        empty_after = sa.and_(person, *(t.column(c).is_(None) for c in others))
        deleted = conn.execute(sa.delete(t.table).where(empty_after, *t.unreferenced)).rowcount
        holding = sa.or_(*(t.column(c).is_not(None) for c in cols))
        updated = conn.execute(
            sa.update(t.table).where(person, holding).values(dict.fromkeys(cols))
        ).rowcount
        return present, deleted, updated

    def _anonymize(
        self, conn: Connection, t: _Table, cols: list[str], person: ColumnElement[bool]
    ) -> tuple[int, int]:
        """Returns (the person's rows, rows changed)."""
        present, changing = self._counts(conn, t, person, cols)
        if not changing:
            return present, 0
        for name in cols:
            col = t.column(name)
            strategy = t.mapping.strategy(name)
            # A NULL stays NULL under every strategy: there is nothing in it to anonymise.
            where = sa.and_(person, col.is_not(None))
            if strategy is None:
                conn.execute(sa.update(t.table).where(where).values({name: None}))
            elif isinstance(strategy, Constant):
                conn.execute(sa.update(t.table).where(where).values({name: strategy.constant}))
            else:
                self._rewrite(conn, t, col, where, strategy)
        return present, changing

    def _rewrite(
        self,
        conn: Connection,
        t: _Table,
        col: sa.Column[Any],
        where: ColumnElement[bool],
        strategy: Literal["hash", "year"],
    ) -> None:
        """Compute `hash` or `year` in Python, the same on every database, and write the
        results back in one statement, so no row is rewritten twice (a hash that equals
        another row's value would otherwise be hashed again)."""
        # Raw values, without SQLAlchemy's result processing: SQLite hands dates back as
        # the text it stores, and a text SQLAlchemy cannot parse must not stop the command.
        raw = sa.type_coerce(col, sa.types.NullType())
        values = conn.execute(sa.select(raw).where(where).distinct()).scalars().all()
        if not values:
            return
        whens = []
        for old in values:
            new = hash_value(old) if strategy == "hash" else year_value(old, col.type)
            old_param = sa.bindparam(None, old, type_=sa.types.NullType())
            new_param = sa.bindparam(None, new, type_=col.type)
            whens.append((raw == old_param, new_param))
        conn.execute(sa.update(t.table).where(where).values({col.name: sa.case(*whens, else_=col)}))

    def _restrict(
        self, conn: Connection, t: _Table, person: ColumnElement[bool]
    ) -> tuple[int, int]:
        """Returns (the person's rows, rows newly restricted)."""
        assert t.mapping.restricted_column is not None  # noqa: S101  # checked by _outcome
        flag = t.column(t.mapping.restricted_column)
        present, _ = self._counts(conn, t, person, t.mapping.columns)
        if not present:
            return 0, 0
        value = t.restricted_value
        updated = conn.execute(
            sa.update(t.table)
            .where(person, sa.or_(flag.is_(None), flag != value))
            .values({flag.name: value})
        ).rowcount
        return present, updated


def _applied_commands_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        APPLIED_COMMANDS_TABLE,
        metadata,
        sa.Column("command_id", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("ack", sa.Text(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


def _error_name(exc: BaseException) -> str:
    """The error's class, and its SQLSTATE or SQLite error name; never its message."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        name = type(orig).__name__
        return f"{name} ({code})" if code else name
    return type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return (code & 0xFF) in _SQLITE_TRANSIENT
        # psycopg: lost connections, lock and statement timeouts, deadlocks, serialization
        # failures and a server shutting down are all OperationalError.
        return isinstance(exc, sa_exc.OperationalError)
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError)


def _failure(exc: BaseException, where: str) -> _Outcome:
    retryable = _retryable(exc)
    kind = "database error" if isinstance(exc, sa_exc.SQLAlchemyError) else "error"
    advice = "may succeed on retry" if retryable else "needs a fix before a retry"
    detail = f"{kind} {where}: {_error_name(exc)}; rolled back, nothing changed; {advice}"
    return _Outcome("failed", detail, retryable=retryable)
