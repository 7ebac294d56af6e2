"""Fill a sink's tables from the tagged records, as a downstream service would.

A target system holds what the pipeline's tagged records tell it, for the purposes it
serves. :class:`Materialiser` is the database half of such a service: given decoded
``TaggedRecord`` values (topics ``tagged-customers``, ``tagged-orders``,
``tagged-clicks``), it writes the personal columns the sink mapping declares, for the
mapping's controllers only, and only from records that still carry a purpose the target
serves (not suppressed, not expired). :class:`~privacy_pipeline.sink.service.MaterialiserConsumer`
is the Kafka half.

Each table is filled by a :class:`Feed`: from which record type, and whether it holds one
row per record (keyed by ``event_id``: clicks, orders) or one row per person (updated by
each of the person's records: a customer register). Columns are the mapping's, filled
from the record field of the same name (for customer records, from ``fields``) unless
the feed names another.

**Ordering against commands.** Records and commands arrive on different topics, so a
person's older record can arrive after the command that erased the person. The
materialiser reads the scopes of the commands the sink applied
(:mod:`privacy_pipeline.sink.scopes`; the applier must run with ``keep_scopes=True``) and
applies each one that covers a record to it before writing: whichever comes first, the
tables end the same. A record that occurred after a command's scope is written as it is:
the person came back, or the data is new.

Two limits, both on the side of erasing more: a one-row-per-person table keeps the time
of the row's *first* record in its ``recorded_at_column``, so a command with
``recorded_before`` erases the whole row even when a later record updated it; and a table
without a ``recorded_at_column`` loses, to any command, rows written from records newer
than the command if they were written before it was applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from privacy_pipeline.processors.instants import InstantError, parse_instant

from .database import DatabaseMismatchError, hash_value, year_value
from .mapping import Constant, SinkMapping, TableMapping
from .scopes import Scope, ScopeStore, subject_key

__all__ = ["Feed", "MaterialiseStats", "Materialiser", "target_purposes"]

logger = logging.getLogger(__name__)

RecordType = Literal["customer", "order", "click"]
RECORD_TYPES: tuple[str, ...] = ("customer", "order", "click")


@dataclass(frozen=True, slots=True)
class Feed:
    """Which tagged records fill one table of the mapping, and how.

    `key_column` holds the record's ``event_id`` and makes one row per record (it must be
    the table's primary key or unique); without it the table holds one row per person,
    found by the mapping's subject (and controller) column and updated by each record.
    `fields` maps a column to the record field it is filled from, where the names differ;
    `actions` limits the feed to records with these ``action`` values (e.g. customer
    records ``created`` and ``updated``).
    """

    table: str
    record_type: RecordType
    key_column: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    actions: frozenset[str] | None = None


@dataclass
class MaterialiseStats:
    """What :meth:`Materialiser.write` did with the records it was given, in all."""

    records: int = 0
    rows_written: int = 0  # rows inserted or updated (a redelivered record writes nothing)
    withheld: int = 0  # rows not written: a command applied before left nothing to write
    no_purpose: int = 0  # records without a live purpose the target serves
    not_ours: int = 0  # other controllers, other record types, nothing mapped in the record

    def add(self, other: MaterialiseStats) -> None:
        """Add `other`'s counts to these."""
        self.records += other.records
        self.rows_written += other.rows_written
        self.withheld += other.withheld
        self.no_purpose += other.no_purpose
        self.not_ours += other.not_ours


def target_purposes(policies: str | Path, target: str) -> dict[str, frozenset[str]]:
    """For each controller whose pack names `target` as a recipient, the purposes for
    which that target holds data (the recipient's ``purposes``)."""
    from privacy_pipeline.processors.policy import load_packs

    out: dict[str, frozenset[str]] = {}
    for controller, pack in load_packs(policies).items():
        for recipient in pack.recipients:
            if recipient.id == target:
                out[controller] = frozenset(recipient.purposes)
    return out


@dataclass(frozen=True, slots=True)
class _Target:
    """One fed table, reflected and checked."""

    feed: Feed
    mapping: TableMapping
    table: sa.Table
    columns: tuple[tuple[str, str], ...]  # (column, record field), mapping order
    restricted_value: bool | int | None


@dataclass(slots=True)
class _Row:
    """One row to write: its key values, its personal values, and the record's time."""

    target: _Target
    person: str  # subject_key
    occurred_at: datetime
    keys: dict[str, Any]
    values: dict[str, Any]
    restricted: bool = False


class Materialiser:
    """Writes tagged records into the tables of one sink mapping, respecting the commands
    the sink already applied."""

    def __init__(
        self,
        engine: Engine,
        mapping: SinkMapping,
        feeds: Sequence[Feed],
        *,
        purposes: Mapping[str, frozenset[str]] | None = None,
        schema: str | None = None,
    ) -> None:
        """Reflect the fed tables and check the feeds against mapping and database.

        `purposes` maps a controller to the purposes the target serves for it (see
        :func:`target_purposes`); a record is written only when one of its purposes is
        among them and has not expired. None writes every record of the mapping's
        controllers. Raises DatabaseMismatchError naming each problem.
        """
        if not feeds:
            raise ValueError("a materialiser needs at least one feed")
        self._engine = engine
        self._mapping = mapping
        self._purposes = None if purposes is None else dict(purposes)
        self._controllers = None if mapping.controllers is None else frozenset(mapping.controllers)
        self._scopes = ScopeStore(engine, schema=schema)
        self._sqlite = engine.dialect.name == "sqlite"
        source = engine.url.render_as_string(hide_password=True)
        metadata = sa.MetaData(schema=schema)
        names = [f.table for f in feeds if f.table in mapping.tables]
        problems: list[tuple[str, str]] = []
        for i, f in enumerate(feeds):
            if f.table not in mapping.tables:
                problems.append((f"feeds.{i}.table", f"'{f.table}' is not a table of the mapping"))
            if f.record_type not in RECORD_TYPES:
                problems.append((f"feeds.{i}.record_type", f"not one of {', '.join(RECORD_TYPES)}"))
        with engine.connect() as conn:
            existing = set(sa.inspect(conn).get_table_names(schema=schema))
            metadata.reflect(conn, schema=schema, only=[n for n in names if n in existing])
        self._targets: dict[str, list[_Target]] = {}
        for i, f in enumerate(feeds):
            if f.table not in mapping.tables:
                continue
            if f.table not in existing:
                problems.append((f"tables.{f.table}", f"no table '{f.table}' in the database"))
                continue
            table = metadata.tables[f"{schema}.{f.table}" if schema else f.table]
            found, target = _check_feed(i, f, mapping.tables[f.table], table)
            problems += found
            if target is not None:
                self._targets.setdefault(f.record_type, []).append(target)
        if problems:
            raise DatabaseMismatchError(source, problems)

    @property
    def mapping(self) -> SinkMapping:
        """The mapping whose tables this materialiser fills."""
        return self._mapping

    @property
    def record_types(self) -> frozenset[str]:
        """The record types some feed takes (which ``tagged-*`` topics to read)."""
        return frozenset(self._targets)

    def concerns_key(self, key: bytes | None) -> bool:
        """Whether a record keyed ``controller:subject_id`` may concern this sink: a cheap
        test on the Kafka key, before the record is decoded."""
        if self._controllers is None:
            return True
        if key is None:
            return False
        controller, sep, _ = key.partition(b":")
        return bool(sep) and controller.decode("utf-8", "replace") in self._controllers

    # -- writing ----------------------------------------------------------------------

    def write(self, records: Iterable[Mapping[str, Any]], now: datetime) -> MaterialiseStats:
        """Write decoded tagged records in one transaction; return what became of them.

        `now` (aware) decides which purposes have expired. Records are applied in the
        order given; a record is skipped, and counted, when it is not for this sink.
        """
        stats = MaterialiseStats()
        rows: list[_Row] = []
        for record in records:
            stats.records += 1
            rows += self._rows(record, now, stats)
        if not rows:
            return stats
        with self._engine.begin() as conn:
            # First: from here to the commit, no command can be applied in between.
            self._scopes.lock(conn)
            scopes = self._scopes.read(conn, {row.person for row in rows})
            kept: list[_Row] = []
            for row in rows:
                if _apply_scopes(row, scopes.get(row.person, ())):
                    kept.append(row)
                else:
                    stats.withheld += 1
            stats.rows_written += self._write_rows(conn, kept)
        return stats

    def _rows(
        self, tagged: Mapping[str, Any], now: datetime, stats: MaterialiseStats
    ) -> list[_Row]:
        record = tagged.get("record")
        controller, subject_id = tagged.get("controller"), tagged.get("subject_id")
        targets = self._targets.get(str(tagged.get("type")))
        if (
            not isinstance(record, Mapping)
            or not isinstance(controller, str)
            or not isinstance(subject_id, str)
            or not targets
            or (self._controllers is not None and controller not in self._controllers)
        ):
            stats.not_ours += 1
            return []
        if not self._has_purpose(controller, tagged.get("purposes"), now):
            stats.no_purpose += 1
            return []
        try:
            occurred_at = parse_instant(str(record.get("occurred_at")))
        except InstantError:
            stats.not_ours += 1
            return []
        person = subject_key(controller, subject_id)
        fields = record.get("fields") if tagged.get("type") == "customer" else record
        source: Mapping[str, Any] = fields if isinstance(fields, Mapping) else {}
        out: list[_Row] = []
        for target in targets:
            actions = target.feed.actions
            if actions is not None and record.get("action") not in actions:
                continue
            values = {c: source[f] for c, f in target.columns if source.get(f) is not None}
            if not values:
                continue
            tm = target.mapping
            keys: dict[str, Any] = {tm.subject_column: subject_id}
            if tm.controller_column is not None:
                keys[tm.controller_column] = controller
            if target.feed.key_column is not None:
                keys[target.feed.key_column] = record.get("event_id")
            out.append(_Row(target, person, occurred_at, keys, values))
        if not out:
            stats.not_ours += 1
        return out

    def _has_purpose(self, controller: str, purposes: object, now: datetime) -> bool:
        if self._purposes is None:
            return True
        served = self._purposes.get(controller)
        if not served or not isinstance(purposes, list):
            return False
        for p in purposes:
            if not isinstance(p, Mapping) or p.get("purpose") not in served:
                continue
            expires = p.get("expires_at")
            if expires is None:
                return True
            try:
                if parse_instant(str(expires)) > now:
                    return True
            except InstantError:
                continue
        return False

    def _write_rows(self, conn: Connection, rows: list[_Row]) -> int:
        written = 0
        per_record: dict[str, tuple[_Target, list[dict[str, Any]]]] = {}
        for row in rows:
            target = row.target
            tm = target.mapping
            if target.feed.key_column is not None:
                # Every column named, so the rows of a table go in one executemany.
                full = {c: row.values.get(c) for c, _ in target.columns}
                if tm.restricted_column is not None and target.restricted_value is not None:
                    unrestricted = False if target.restricted_value is True else 0
                    full[tm.restricted_column] = (
                        target.restricted_value if row.restricted else unrestricted
                    )
                batch = per_record.setdefault(target.table.name, (target, []))[1]
                batch.append({**row.keys, **full, **self._at(row)})
                continue
            values = dict(row.values)
            if row.restricted and tm.restricted_column is not None:
                values[tm.restricted_column] = target.restricted_value
            where = [target.table.c[c] == v for c, v in row.keys.items()]
            updated = conn.execute(sa.update(target.table).where(*where).values(values)).rowcount
            if not updated:
                conn.execute(
                    sa.insert(target.table).values({**row.keys, **values, **self._at(row)})
                )
            written += 1
        for target, batch in per_record.values():
            # A redelivered record finds its row and writes nothing; RETURNING counts the
            # rows inserted on every database (an executemany's rowcount may be -1).
            key = target.table.c[str(target.feed.key_column)]
            insert = (sqlite.insert if self._sqlite else postgresql.insert)(target.table)
            statement = insert.on_conflict_do_nothing().returning(key)
            written += len(conn.execute(statement, batch).all())
        return written

    def _at(self, row: _Row) -> dict[str, Any]:
        """The recorded-at column's value: the record's time, in the column's type."""
        column = row.target.mapping.recorded_at_column
        if column is None:
            return {}
        col_type = row.target.table.c[column].type
        utc = row.occurred_at.astimezone(UTC)
        if isinstance(col_type, sa.DateTime):
            return {column: utc if col_type.timezone else utc.replace(tzinfo=None)}
        if isinstance(col_type, sa.Date):
            return {column: utc.date()}
        return {column: utc.isoformat().replace("+00:00", "Z")}


def _apply_scopes(row: _Row, scopes: Iterable[Scope]) -> bool:
    """Apply to the row what each scope covering its record did to the person's rows;
    False when nothing is left to write."""
    target = row.target
    tm = target.mapping
    for scope in scopes:
        if not scope.covers(row.occurred_at):
            continue
        columns = [c for c in tm.columns_of(scope.categories) if c in row.values]
        if scope.action == "restrict":
            row.restricted = True
        elif scope.action == "anonymize":
            for c in columns:
                row.values[c] = _anonymised(tm, target.table.c[c], row.values[c])
        else:
            for c in columns:
                if target.feed.key_column is None:
                    # A person's row: leave the column as the command left it (empty, or
                    # filled by a newer record), rather than write an erased value.
                    del row.values[c]
                else:
                    row.values[c] = None
    if target.feed.key_column is None:
        return bool(row.values)
    # As erase deletes a row left without any personal value, such a row is not written.
    return any(v is not None for v in row.values.values())


def _anonymised(tm: TableMapping, column: sa.Column[Any], value: Any) -> Any:
    strategy = tm.strategy(column.name)
    if value is None or strategy is None:
        return None
    if isinstance(strategy, Constant):
        return strategy.constant
    if strategy == "hash":
        return hash_value(value)
    return year_value(value, column.type)


def _check_feed(
    i: int, feed: Feed, tm: TableMapping, table: sa.Table
) -> tuple[list[tuple[str, str]], _Target | None]:
    where = f"feeds.{i}"
    problems: list[tuple[str, str]] = []
    for column in feed.fields:
        if column not in tm.columns:
            problems.append(
                (f"{where}.fields.{column}", "not a personal column of the mapping's table")
            )
    key = feed.key_column
    if key is not None:
        if key not in table.c:
            problems.append((f"{where}.key_column", f"table {feed.table} has no column '{key}'"))
        elif not _unique(table, key):
            problems.append(
                (f"{where}.key_column", f"'{key}' is neither the primary key nor unique")
            )
        if key in tm.columns:
            problems.append((f"{where}.key_column", f"'{key}' is also a personal column"))
    if problems:
        return problems, None
    restricted: bool | int | None = None
    if tm.restricted_column is not None and tm.restricted_column in table.c:
        flag_type = table.c[tm.restricted_column].type
        restricted = True if isinstance(flag_type, sa.Boolean) else 1
    columns = tuple((c, feed.fields.get(c, c)) for c in tm.columns)
    return [], _Target(feed, tm, table, columns, restricted)


def _unique(table: sa.Table, column: str) -> bool:
    if [c.name for c in table.primary_key.columns] == [column]:
        return True
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint) and [c.name for c in constraint.columns] == [
            column
        ]:
            return True
    return any(
        index.unique and [c.name for c in index.columns] == [column] for index in table.indexes
    )
