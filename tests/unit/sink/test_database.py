"""CommandApplier on real databases (SQLite and PostgreSQL): exact outcomes of erase,
anonymize and restrict, acks, idempotency and atomicity. No mocks."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from privacy_pipeline.sink.database import (
    CommandApplier,
    CommandError,
    DatabaseMismatchError,
    hash_value,
    unmapped_categories,
    year_value,
)
from privacy_pipeline.sink.mapping import MappingError, SinkMapping, load_mapping, parse_mapping

from .conftest import Database
from .test_mapping import EXAMPLE

NOW = "2026-01-10T09:00:00Z"
LATER = "2026-01-11T10:30:00Z"
ALICE = "subj-alice-7f3a"
BOB = "subj-bob-91c2"
NOBODY = "subj-nobody-0000"

MAPPING: dict[str, Any] = {
    "target": "business-systems",
    "controllers": ["inrego"],
    "tables": {
        "customers": {
            "subject_column": "subject_id",
            "controller_column": "controller",
            "recorded_at_column": "created_at",
            "columns": {
                "name": "contact",
                "email": "contact",
                "phone": "contact",
                "personnummer": "identity",
                "birth_date": "identity",
                "last_login": "account",
            },
            "anonymize": {
                "name": {"constant": "anonymised"},
                "email": "hash",
                "personnummer": "year",
                "birth_date": "year",
                "last_login": "year",
            },
            "restricted_column": "restricted",
        },
        "orders": {
            "subject_column": "subject_id",
            "recorded_at_column": "created_at",
            "columns": {"amount": "order", "currency": "order", "address": "contact"},
            "restricted_column": "restricted",
        },
    },
}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


CUSTOMERS: list[dict[str, Any]] = [
    {
        "id": 1,
        "subject_id": ALICE,
        "controller": "inrego",
        "name": "Alice Andersson",
        "email": "alice@example.se",
        "phone": "+46701234567",
        "personnummer": "19850314-1234",
        "birth_date": date(1985, 3, 14),
        "last_login": utc("2024-06-30T22:15:00+00:00"),
        "created_at": utc("2020-02-01T10:00:00+00:00"),
        "restricted": False,
    },
    {
        "id": 2,
        "subject_id": BOB,
        "controller": "inrego",
        "name": "Bob Berg",
        "email": "bob@example.se",
        "phone": "+46709876543",
        "personnummer": "19900101-5678",
        "birth_date": date(1990, 1, 1),
        "last_login": utc("2024-01-02T08:00:00+00:00"),
        "created_at": utc("2021-05-05T05:05:00+00:00"),
        "restricted": False,
    },
    {  # the same subject id under another controller: never touched by inrego's commands
        "id": 3,
        "subject_id": ALICE,
        "controller": "rego",
        "name": "Alice Andersson",
        "email": "alice@rego.example",
        "phone": None,
        "personnummer": "19850314-1234",
        "birth_date": None,
        "last_login": None,
        "created_at": utc("2019-09-09T09:09:00+00:00"),
        "restricted": False,
    },
]
ORDERS: list[dict[str, Any]] = [
    {
        "id": 10,
        "customer_id": 1,
        "subject_id": ALICE,
        "amount": 1200,
        "currency": "SEK",
        "address": "Storgatan 1, Täby",
        "created_at": utc("2021-03-01T12:00:00+00:00"),
        "restricted": False,
    },
    {
        "id": 11,
        "customer_id": 1,
        "subject_id": ALICE,
        "amount": 800,
        "currency": "SEK",
        "address": "Storgatan 1, Täby",
        "created_at": utc("2024-05-01T09:30:00+00:00"),
        "restricted": False,
    },
    {
        "id": 12,
        "customer_id": 2,
        "subject_id": BOB,
        "amount": 500,
        "currency": "SEK",
        "address": "Kungsgatan 2, Stockholm",
        "created_at": utc("2023-07-07T07:07:00+00:00"),
        "restricted": False,
    },
]

# Every personal value and subject id of the data: none may ever appear in an ack.
PERSONAL = sorted(
    {
        str(v)
        for row in CUSTOMERS + ORDERS
        for k, v in row.items()
        if k in {"subject_id", "name", "email", "phone", "personnummer", "address"} and v
    }
    | {"1985-03-14", "Storgatan", "Alice", "alice"}
)

Snapshot = dict[str, dict[int, dict[str, Any]]]


@dataclass
class Schema:
    customers: sa.Table
    orders: sa.Table

    def insert(self, engine: sa.Engine, customers: list[dict[str, Any]] = CUSTOMERS) -> None:
        ids = {c["id"] for c in customers}
        with engine.begin() as conn:
            conn.execute(self.customers.insert(), customers)
            orders = [o for o in ORDERS if o["customer_id"] in ids]
            if orders:
                conn.execute(self.orders.insert(), orders)

    def snapshot(self, engine: sa.Engine) -> Snapshot:
        with engine.connect() as conn:
            return {
                t.name: {
                    row.id: {k: _plain(v) for k, v in row._asdict().items()}
                    for row in conn.execute(sa.select(t).order_by(t.c.id))
                }
                for t in (self.customers, self.orders)
            }


def _plain(value: Any) -> Any:
    # SQLite hands timestamps back without a zone; PostgreSQL (in a UTC session) with one.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def expected_rows() -> Snapshot:
    return {
        "customers": {c["id"]: {k: _plain(v) for k, v in c.items()} for c in CUSTOMERS},
        "orders": {o["id"]: {k: _plain(v) for k, v in o.items()} for o in ORDERS},
    }


def build(engine: sa.Engine, *, reachable_check: bool = False, insert: bool = True) -> Schema:
    """A customers table and an orders table whose rows reference it, with data."""
    metadata = sa.MetaData()
    checks = (
        [sa.CheckConstraint("email IS NOT NULL OR phone IS NOT NULL", name="reachable")]
        if reachable_check
        else []
    )
    customers = sa.Table(
        "customers",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("controller", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("email", sa.String(200)),
        sa.Column("phone", sa.String(40)),
        sa.Column("personnummer", sa.String(13)),
        sa.Column("birth_date", sa.Date),
        sa.Column("last_login", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restricted", sa.Boolean, nullable=False),
        *checks,
    )
    orders = sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.Integer),
        sa.Column("currency", sa.String(3)),
        sa.Column("address", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restricted", sa.Boolean, nullable=False),
    )
    metadata.create_all(engine)
    schema = Schema(customers, orders)
    if insert:
        schema.insert(engine)
    return schema


def mapping(**changes: Any) -> SinkMapping:
    data = copy.deepcopy(MAPPING)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return parse_mapping(data)


_ids = iter(range(1, 1_000_000))


def command(
    action: str,
    categories: list[str],
    subject: str = ALICE,
    *,
    command_id: str | None = None,
    recorded_before: str | None = None,
    attempt: int = 1,
    controller: str = "inrego",
) -> dict[str, Any]:
    """A decoded ErasureCommand with every field of schemas/erasure_command.avsc."""
    return {
        "decision": "erasure",
        "command_id": command_id or f"cmd-{next(_ids)}",
        "controller": controller,
        "subject_id": subject,
        "target": "business-systems",
        "action": action,
        "purposes": ["contract"],
        "categories": categories,
        "reason": "erasure_request",
        "rule": "inrego.contract.orders",
        "issued_at": "2026-01-10T08:00:00Z",
        "deadline": "2026-02-10T08:00:00Z",
        "policy_version": "2023-10",
        "recorded_before": recorded_before,
        "due_at": None,
        "request_id": None,
        "attempt": attempt,
        "signature": None,
    }


def assert_no_personal_data(ack: dict[str, Any]) -> None:
    text = json.dumps(ack, ensure_ascii=False)
    for value in PERSONAL:
        assert value not in text, f"personal value in the ack: {ack}"
    assert set(ack) == {
        "command_id",
        "target",
        "status",
        "completed_at",
        "detail",
        "attempt",
        "retryable",
        "rows",
    }


def apply(applier: CommandApplier, cmd: dict[str, Any], now: str = NOW) -> dict[str, Any]:
    ack = applier.apply(cmd, now)
    assert_no_personal_data(ack)
    assert ack["command_id"] == cmd["command_id"]
    assert ack["target"] == "business-systems"
    return ack


@pytest.fixture
def schema(db: Database) -> Schema:
    return build(db.engine)


@pytest.fixture
def applier(db: Database, schema: Schema) -> CommandApplier:
    return CommandApplier(db.engine, mapping())


def cleared(row: dict[str, Any], *columns: str) -> None:
    for column in columns:
        row[column] = None


# -- erase ---------------------------------------------------------------------------------


def test_erase_clears_the_categorys_columns_in_the_persons_rows_only(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    cmd = command("erase", ["contact"])
    ack = apply(applier, cmd)
    assert ack == {
        "command_id": cmd["command_id"],
        "target": "business-systems",
        "status": "done",
        "completed_at": NOW,
        "detail": "erase contact: orders 2 changed, 0 deleted; customers 1 changed, 0 deleted",
        "attempt": 1,
        "retryable": False,
        "rows": {"orders": 2, "customers": 1},
    }
    want = expected_rows()
    cleared(want["customers"][1], "name", "email", "phone")
    cleared(want["orders"][10], "address")
    cleared(want["orders"][11], "address")
    assert schema.snapshot(db.engine) == want


def test_erase_deletes_a_row_left_without_personal_data(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    ack = apply(applier, command("erase", ["identity", "contact", "account", "order"]))
    assert (ack["status"], ack["rows"]) == ("done", {"orders": 2, "customers": 1})
    assert ack["detail"] == (
        "erase account, contact, identity, order: "
        "orders 0 changed, 2 deleted; customers 0 changed, 1 deleted"
    )
    want = expected_rows()
    del want["customers"][1], want["orders"][10], want["orders"][11]
    assert schema.snapshot(db.engine) == want


def test_erase_keeps_a_row_that_other_rows_still_reference(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    # The orders keep their amounts (order is not erased) and reference the customer row:
    # deleting it would break the foreign key, so it stays with every personal column NULL.
    ack = apply(applier, command("erase", ["identity", "contact", "account"]))
    assert (ack["status"], ack["rows"]) == ("done", {"orders": 2, "customers": 1})
    want = expected_rows()
    cleared(want["customers"][1], "name", "email", "phone", "personnummer", "birth_date")
    cleared(want["customers"][1], "last_login")
    cleared(want["orders"][10], "address")
    cleared(want["orders"][11], "address")
    assert schema.snapshot(db.engine) == want
    # Once the orders are gone too, the next erase deletes the customer row.
    ack = apply(applier, command("erase", ["order", "contact"]))
    assert ack["rows"] == {"orders": 2, "customers": 1}
    del want["customers"][1], want["orders"][10], want["orders"][11]
    assert schema.snapshot(db.engine) == want


def test_erase_leaves_tables_without_the_categories_alone(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    ack = apply(applier, command("erase", ["identity"]))
    assert (ack["status"], ack["rows"]) == ("done", {"customers": 1})
    want = expected_rows()
    cleared(want["customers"][1], "personnummer", "birth_date")
    assert schema.snapshot(db.engine) == want


@pytest.mark.parametrize(
    ("recorded_before", "orders_erased"),
    [
        ("2022-01-01T00:00:00+01:00", [10]),
        # The instant of order 11 itself, in another zone: "at or before" includes it.
        ("2024-05-01T11:30:00+02:00", [10, 11]),
        ("2024-05-01T09:29:59.999Z", [10]),
        ("2019-01-01T00:00:00Z", []),
    ],
)
def test_recorded_before_keeps_newer_rows(
    db: Database,
    schema: Schema,
    applier: CommandApplier,
    recorded_before: str,
    orders_erased: list[int],
) -> None:
    cmd = command("erase", ["order", "contact"], recorded_before=recorded_before)
    ack = apply(applier, cmd)
    want = expected_rows()
    for order in orders_erased:
        del want["orders"][order]
    customer_erased = recorded_before > "2020"  # alice's row was created 2020-02-01
    if customer_erased:
        cleared(want["customers"][1], "name", "email", "phone")
    assert schema.snapshot(db.engine) == want
    # No row recorded that early: none of the person's rows is the command's.
    assert ack["status"] == ("done" if customer_erased else "not_found")
    assert ack["rows"] == {"orders": len(orders_erased), "customers": int(customer_erased)}
    assert "(rows recorded at or before recorded_before)" in ack["detail"]


def test_not_found_when_the_person_has_no_row(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    ack = apply(applier, command("erase", ["contact", "order"], NOBODY))
    assert ack == {
        "command_id": ack["command_id"],
        "target": "business-systems",
        "status": "not_found",
        "completed_at": NOW,
        "detail": "erase contact, order: no rows of the person",
        "attempt": 1,
        "retryable": False,
        "rows": {"orders": 0, "customers": 0},
    }
    # Alice's rows of the other controller do not count as hers for inrego.
    ack = apply(applier, command("erase", ["contact"], BOB))
    assert ack["status"] == "done"
    assert schema.snapshot(db.engine)["customers"][3] == expected_rows()["customers"][3]


def test_nothing_left_to_erase_is_done_with_no_rows(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    apply(applier, command("erase", ["identity"]))
    ack = apply(applier, command("erase", ["identity"]))
    assert (ack["status"], ack["rows"]) == ("done", {"customers": 0})
    assert ack["detail"].endswith("(nothing left to change)")


# -- anonymize -----------------------------------------------------------------------------


def test_anonymize_applies_each_columns_strategy_and_keeps_the_rows(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    ack = apply(applier, command("anonymize", ["contact", "identity", "account"]))
    assert ack["status"] == "done"
    assert ack["rows"] == {"orders": 2, "customers": 1}
    assert ack["detail"] == (
        "anonymize account, contact, identity: orders 2 anonymised; customers 1 anonymised"
    )
    want = expected_rows()
    alice = want["customers"][1]
    alice["name"] = "anonymised"  # {constant: anonymised}
    alice["email"] = hashlib.sha256(b"alice@example.se").hexdigest()  # hash
    alice["phone"] = None  # no strategy: NULL
    alice["personnummer"] = "1985"  # year, of a text
    alice["birth_date"] = date(1985, 1, 1)  # year, of a date
    alice["last_login"] = datetime(2024, 1, 1)  # year, of a timestamp  # noqa: DTZ001
    cleared(want["orders"][10], "address")
    cleared(want["orders"][11], "address")
    assert schema.snapshot(db.engine) == want


def test_anonymize_leaves_a_null_null(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    # Row 3 has no phone, birth date or last login; a constant must not appear there.
    rego = CommandApplier(db.engine, mapping(controllers=["rego"], tables__orders=None))
    ack = apply(rego, command("anonymize", ["contact", "identity", "account"], controller="rego"))
    assert ack["rows"] == {"customers": 1}
    want = expected_rows()
    row = want["customers"][3]
    row["name"] = "anonymised"
    row["email"] = hash_value("alice@rego.example")
    row["personnummer"] = "1985"
    assert schema.snapshot(db.engine) == want


def test_year_and_hash_values() -> None:
    text, day, stamp = sa.String(), sa.Date(), sa.DateTime(timezone=True)
    assert year_value("1985-03-14", text) == "1985"
    assert year_value("19850314-1234", text) == "1985"
    assert year_value("850314-1234", text) == "8503"  # it does start with four digits
    assert year_value("14/03/1985", text) is None
    assert year_value(date(1985, 3, 14), day) == date(1985, 1, 1)
    aware = datetime(2024, 6, 30, 22, 15, tzinfo=UTC)
    assert year_value(aware, stamp) == datetime(2024, 1, 1, tzinfo=UTC)
    # SQLite keeps dates as text: the year comes back as a date of the column's type.
    assert year_value("1985-03-14", day) == date(1985, 1, 1)
    assert year_value("2024-06-30 22:15:00.000000", stamp) == datetime(2024, 1, 1)  # noqa: DTZ001
    assert year_value(19850314, text) is None
    assert hash_value("alice@example.se") == hashlib.sha256(b"alice@example.se").hexdigest()
    assert hash_value(42) == hashlib.sha256(b"42").hexdigest()
    assert hash_value(date(1985, 3, 14)) == hashlib.sha256(b"1985-03-14").hexdigest()
    assert hash_value(b"\x00\x01") == hashlib.sha256(b"\x00\x01").hexdigest()


# -- restrict ------------------------------------------------------------------------------


def test_restrict_sets_the_flag_and_deletes_nothing(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    ack = apply(applier, command("restrict", ["identity", "contact", "order"]))
    assert ack["status"] == "retained"
    assert ack["rows"] == {"orders": 2, "customers": 1}
    assert ack["detail"] == (
        "restrict contact, identity, order: orders 2 restricted; customers 1 restricted"
    )
    want = expected_rows()
    for row in (want["customers"][1], want["orders"][10], want["orders"][11]):
        row["restricted"] = True
    assert schema.snapshot(db.engine) == want
    # Restricting again changes no row and is still retained.
    again = apply(applier, command("restrict", ["order"]))
    assert (again["status"], again["rows"]) == ("retained", {"orders": 0})
    assert apply(applier, command("restrict", ["order"], NOBODY))["status"] == "not_found"


def test_restrict_fails_whole_when_a_concerned_table_has_no_restricted_column(
    db: Database, schema: Schema
) -> None:
    lacking = CommandApplier(db.engine, mapping(tables__orders__restricted_column=None))
    cmd = command("restrict", ["contact", "order"])
    ack = apply(lacking, cmd)
    assert ack == {
        "command_id": cmd["command_id"],
        "target": "business-systems",
        "status": "failed",
        "completed_at": NOW,
        "detail": "restrict: no restricted_column on table(s) holding the categories: orders; "
        "nothing changed",
        "attempt": 1,
        "retryable": False,
        "rows": {},
    }
    assert schema.snapshot(db.engine) == expected_rows()
    # Stored: a redelivery answers the same without running again.
    assert lacking.apply(cmd, LATER) == ack
    # A table that does not hold the categories does not need the column.
    assert apply(lacking, command("restrict", ["identity"]))["status"] == "retained"
    # Once the mapping is fixed, the pipeline's re-issue (next attempt) is applied.
    fixed = CommandApplier(db.engine, mapping())
    reissued = apply(fixed, {**cmd, "attempt": 2}, LATER)
    assert (reissued["status"], reissued["attempt"]) == ("retained", 2)
    assert reissued["rows"] == {"orders": 2, "customers": 0}  # restricted just above
    assert fixed.stored_ack(cmd["command_id"]) == reissued


# -- the applied_commands table -----------------------------------------------------------


def test_a_redelivered_command_changes_nothing_and_gets_the_stored_ack(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    cmd = command("erase", ["identity", "contact", "account", "order"])
    first = apply(applier, cmd)
    assert first["rows"] == {"orders": 2, "customers": 1}
    # The person's data comes back (say, restored from a backup); a redelivery of the same
    # command must not touch it: only a new command may.
    schema.insert(db.engine, [CUSTOMERS[0]])
    assert schema.snapshot(db.engine) == expected_rows()
    second = apply(applier, {**cmd, "attempt": 2}, LATER)
    assert second == first
    assert schema.snapshot(db.engine) == expected_rows()
    with db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT command_id, status, ack FROM applied_commands"))
        rows = [tuple(r) for r in stored]
    assert [(r[0], r[1]) for r in rows] == [(cmd["command_id"], "done")]
    assert json.loads(rows[0][2]) == first
    # A fresh applier (a restarted sink) knows it too.
    assert CommandApplier(db.engine, mapping()).apply(cmd, LATER) == first


def test_every_ack_but_a_retryable_failure_is_stored(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    acks = [
        apply(applier, command("erase", ["identity"])),
        apply(applier, command("erase", ["identity"], NOBODY)),
        apply(applier, command("restrict", ["order"])),
        apply(applier, command("shred", ["identity"])),
    ]
    assert [a["status"] for a in acks] == ["done", "not_found", "retained", "failed"]
    for ack in acks:
        assert applier.stored_ack(ack["command_id"]) == ack
    assert applier.stored_ack("never-seen") is None


# -- failures roll everything back ---------------------------------------------------------


def test_a_failure_in_a_later_table_rolls_back_the_earlier_one(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Orders come first (they reference customers); the customers update then breaks a
    # CHECK constraint. The orders' change must be gone too.
    schema = build(db.engine, reachable_check=True)
    applier = CommandApplier(db.engine, mapping())
    cmd = command("erase", ["contact"])
    ack = apply(applier, cmd)
    assert ack["status"] == "failed"
    assert ack["retryable"] is False
    assert ack["rows"] == {}
    error = "CheckViolation (23514)" if db.dialect == "postgresql" else "IntegrityError"
    assert ack["detail"].startswith(f"database error on table customers: {error}")
    assert ack["detail"].endswith("rolled back, nothing changed; needs a fix before a retry")
    assert schema.snapshot(db.engine) == expected_rows()
    assert applier.stored_ack(cmd["command_id"]) == ack
    # The log names the command and the error, never a value.
    [record] = [r for r in caplog.records if r.name == "privacy_pipeline.sink.database"]
    logged = record.getMessage()
    assert logged.startswith(f"command {cmd['command_id']} failed on table customers: ")
    assert not [value for value in PERSONAL if value in logged]
    # The other people's commands still work.
    assert apply(applier, command("erase", ["order"]))["status"] == "done"


def test_a_column_dropped_after_start_fails_without_a_change(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers DROP COLUMN phone"))
    ack = apply(applier, command("erase", ["contact"]))
    assert (ack["status"], ack["retryable"]) == ("failed", False)
    assert "on table customers" in ack["detail"]
    with db.engine.connect() as conn:
        addresses = conn.execute(sa.text("SELECT address FROM orders ORDER BY id")).scalars()
        assert list(addresses) == [o["address"] for o in ORDERS]
        names = conn.execute(sa.text("SELECT name FROM customers ORDER BY id")).scalars()
        assert list(names) == [c["name"] for c in CUSTOMERS]


@contextlib.contextmanager
def lock_orders(db: Database) -> Iterator[None]:
    """Hold a write lock another transaction has to wait for."""
    if db.dialect == "sqlite":
        path = db.engine.url.database
        assert path is not None
        raw = sqlite3.connect(path, isolation_level=None)
        try:
            raw.execute("BEGIN IMMEDIATE")
            yield
            raw.execute("ROLLBACK")
        finally:
            raw.close()
        return
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT id FROM orders WHERE id = 10 FOR UPDATE"))
        yield
        conn.rollback()


def test_a_lock_timeout_is_retryable_and_not_stored(db: Database, schema: Schema) -> None:
    impatient = CommandApplier(db.another_engine(lock_timeout_ms=200), mapping())
    cmd = command("erase", ["contact"])
    with lock_orders(db):
        ack = apply(impatient, cmd)
    assert (ack["status"], ack["retryable"], ack["rows"]) == ("failed", True, {})
    code = "LockNotAvailable (55P03)" if db.dialect == "postgresql" else "OperationalError"
    assert ack["detail"].startswith(f"database error on table orders: {code}")
    assert ack["detail"].endswith("may succeed on retry")
    assert impatient.stored_ack(cmd["command_id"]) is None
    assert schema.snapshot(db.engine) == expected_rows()
    # The redelivery, with the lock gone, is applied.
    assert apply(impatient, cmd)["status"] == "done"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"action": "shred"}, "invalid command: action: not one of erase, anonymize, restrict"),
        ({"categories": []}, "invalid command: categories: missing or not a non-empty list"),
        ({"subject_id": ""}, "invalid command: subject_id: missing or not a non-empty string"),
        (
            {"recorded_before": "2024-05-01 09:30"},
            "invalid command: recorded_before: not an ISO 8601 instant with a zone",
        ),
        ({"categories": ["technical"]}, "no table here maps the command's categories; "),
    ],
)
def test_a_command_it_cannot_act_on_fails_and_is_not_retryable(
    db: Database, schema: Schema, applier: CommandApplier, change: dict[str, Any], detail: str
) -> None:
    ack = apply(applier, {**command("erase", ["contact"]), **change})
    assert (ack["status"], ack["retryable"], ack["rows"]) == ("failed", False, {})
    assert ack["detail"].startswith(detail)
    assert schema.snapshot(db.engine) == expected_rows()


def test_a_command_for_another_sink_is_refused(applier: CommandApplier) -> None:
    with pytest.raises(CommandError, match="not for this sink"):
        applier.apply({**command("erase", ["contact"]), "target": "web-analytics"}, NOW)
    with pytest.raises(CommandError, match="not for this sink"):
        applier.apply(command("erase", ["contact"], controller="rego"), NOW)
    with pytest.raises(CommandError, match="without a command_id"):
        applier.apply({**command("erase", ["contact"]), "command_id": None}, NOW)


# -- start-up checks -----------------------------------------------------------------------


def test_start_names_every_missing_table_and_column(db: Database, schema: Schema) -> None:
    broken = copy.deepcopy(MAPPING)
    broken["tables"]["customers"]["columns"]["mail"] = "contact"
    broken["tables"]["customers"]["restricted_column"] = "blocked"
    broken["tables"]["invoices"] = {"subject_column": "s", "columns": {"total": "order"}}
    with pytest.raises(DatabaseMismatchError) as info:
        CommandApplier(db.engine, parse_mapping(broken))
    assert info.value.problems == [
        ("tables.customers.restricted_column", "table customers has no column 'blocked'"),
        ("tables.customers.columns.mail", "table customers has no such column"),
        ("tables.invoices", "no table 'invoices' in the database"),
    ]
    assert isinstance(info.value, MappingError)
    assert "postgres:***@" in str(info.value) or db.dialect == "sqlite"


def test_start_checks_that_each_strategy_fits_its_column(db: Database) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "people",
        metadata,
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("added", sa.String(40)),
        sa.Column("blocked", sa.String(5)),
        sa.Column("pnr", sa.String(13)),
        sa.Column("score", sa.Integer),
        sa.Column("nick", sa.String(40)),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("ok", sa.Text),
    )
    metadata.create_all(db.engine)
    people = {
        "subject_column": "ref",
        "recorded_at_column": "added",
        "restricted_column": "blocked",
        "columns": {
            "pnr": "identity",
            "score": "profile",
            "nick": "contact",
            "kind": "account",
            "ok": "contact",
        },
        "anonymize": {"pnr": "hash", "score": "year", "nick": {"constant": 7}, "ok": "hash"},
    }
    with pytest.raises(DatabaseMismatchError) as info:
        CommandApplier(
            db.engine,
            parse_mapping({"target": "crm", "controllers": ["rego"], "tables": {"people": people}}),
        )
    assert info.value.problems == [
        ("tables.people.restricted_column", "must be a boolean column"),
        ("tables.people.anonymize.pnr", "hash writes 64 characters: the column holds 13"),
        ("tables.people.anonymize.score", "year needs a date, timestamp or text column"),
        (
            "tables.people.anonymize.nick",
            "the constant does not fit the column's type (VARCHAR(40))",
        ),
        ("tables.people.columns.kind", "is NOT NULL, but erase or anonymize would set it NULL"),
    ]


def test_the_example_mapping_runs_on_a_schema_built_from_it(db: Database) -> None:
    example = load_mapping(EXAMPLE)
    metadata = sa.MetaData()
    for name, table in example.tables.items():
        columns = [sa.Column(table.subject_column, sa.String(64), nullable=False)]
        if table.recorded_at_column:
            columns.append(sa.Column(table.recorded_at_column, sa.DateTime(timezone=True)))
        if table.restricted_column:
            columns.append(sa.Column(table.restricted_column, sa.Boolean))
        columns += [sa.Column(c, sa.Text) for c in table.columns]
        sa.Table(name, metadata, *columns)
    metadata.create_all(db.engine)
    applier = CommandApplier(db.engine, example)
    with db.engine.begin() as conn:
        for name, table in example.tables.items():
            values = {c: f"{c}-value" for c in table.columns}
            conn.execute(metadata.tables[name].insert(), [{table.subject_column: ALICE, **values}])
    everything = sorted(example.mapped_categories())
    ack = apply(applier, {**command("restrict", everything), "target": example.target})
    assert ack["status"] == "retained"
    assert ack["rows"] == dict.fromkeys(example.tables, 1)
    ack = apply(applier, {**command("erase", everything), "target": example.target})
    assert ack["rows"] == dict.fromkeys(example.tables, 1)
    with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def test_unmapped_categories_and_concerns(applier: CommandApplier) -> None:
    cmd = command("erase", ["contact", "technical", "order", "technical", "payment"])
    assert unmapped_categories(applier.mapping, cmd) == ["technical", "payment"]
    assert unmapped_categories(applier.mapping, command("erase", ["order"])) == []
    assert applier.concerns(cmd)
    assert not applier.concerns({**cmd, "target": "logistics"})
    assert not applier.concerns({**cmd, "controller": "rejoin"})


def test_a_concurrent_apply_of_the_same_command_yields_to_the_stored_one(
    db: Database, schema: Schema, applier: CommandApplier
) -> None:
    # Another sink instance has stored this command's ack but not yet committed. Ours
    # applies, then waits on the key; once the other commits, ours rolls back and answers
    # with the stored ack.
    cmd = command("erase", ["contact"])
    theirs = {"command_id": cmd["command_id"], "status": "done", "detail": "the other sink"}
    result: dict[str, Any] = {}
    other = db.another_engine()
    with other.connect() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO applied_commands (command_id, status, ack, applied_at) "
                "VALUES (:id, 'done', :ack, :at)"
            ),
            {"id": cmd["command_id"], "ack": json.dumps(theirs), "at": utc(NOW)},
        )
        worker = threading.Thread(target=lambda: result.update(ack=applier.apply(cmd, NOW)))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive()  # blocked behind the uncommitted row (or its lock)
        conn.commit()
    worker.join(10)
    assert result["ack"] == theirs
    assert schema.snapshot(db.engine) == expected_rows()


def test_integer_subject_ids(db: Database) -> None:
    metadata = sa.MetaData()
    members = sa.Table(
        "members",
        metadata,
        sa.Column("member_no", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200)),
        sa.Column("nickname", sa.String(40)),
    )
    metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(
            members.insert(),
            [
                {"member_no": 1042, "email": "m1042@example.se", "nickname": "Mia"},
                {"member_no": 7, "email": "m7@example.se", "nickname": "Sam"},
            ],
        )
    table = {"subject_column": "member_no", "columns": {"email": "contact", "nickname": "profile"}}
    applier = CommandApplier(
        db.engine,
        parse_mapping(
            {"target": "business-systems", "controllers": ["inrego"], "tables": {"members": table}}
        ),
    )
    ack = applier.apply(command("erase", ["contact"], "1042"), NOW)
    assert (ack["status"], ack["rows"]) == ("done", {"members": 1})
    # An id that cannot be a member number matches nobody (rather than failing on the type).
    ack = applier.apply(command("erase", ["contact"], "subj-x"), NOW)
    assert (ack["status"], ack["rows"]) == ("not_found", {"members": 0})
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(members).order_by(members.c.member_no)).all()
    assert [tuple(r) for r in rows] == [(7, "m7@example.se", "Sam"), (1042, None, "Mia")]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # SQLite has no schemas
def test_an_explicit_schema(db: Database, schema: Schema) -> None:
    assert db.schema is not None
    where_sql = sa.text(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'applied_commands'"
    )
    # Other tests of the session (the integration sinks) may have theirs in public already.
    with db.engine.connect() as conn:
        before = set(conn.execute(where_sql).scalars())
    # An engine whose search path does not lead to the tables: only the schema does.
    elsewhere = sa.create_engine(db.url, connect_args={"options": "-c search_path=public"})
    try:
        applier = CommandApplier(elsewhere, mapping(), schema=db.schema)
        ack = apply(applier, command("erase", ["identity"]))
        assert applier.stored_ack(ack["command_id"]) == ack
    finally:
        elsewhere.dispose()
    assert (ack["status"], ack["rows"]) == ("done", {"customers": 1})
    with db.engine.connect() as conn:
        after = set(conn.execute(where_sql).scalars())
    assert after - before == {db.schema}


def test_sqlite_dates_kept_as_text_in_any_iso_form(tmp_path: Path) -> None:
    # SQLite stores a DATE or TIMESTAMP column as whatever text the writer chose. Other
    # writers than SQLAlchemy use the 'T' form with a zone; some write what is no date.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'text.db'}")
    try:
        build(engine)
        applier = CommandApplier(engine, mapping())
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE orders SET created_at = '2024-05-01T11:30:00+02:00' WHERE id = 11")
            )
            conn.execute(sa.text("UPDATE customers SET birth_date = '14/03/1985' WHERE id = 1"))
            conn.execute(sa.text("UPDATE customers SET last_login = '2024-06-30T23:15:00Z'"))
        # 09:29:59Z is before order 11 (09:30Z), 09:30:00Z is at it.
        early = command("erase", ["order"], recorded_before="2024-05-01T09:29:59Z")
        assert applier.apply(early, NOW)["rows"] == {"orders": 1}
        at = command("erase", ["order"], recorded_before="2024-05-01T09:30:00Z")
        assert applier.apply(at, NOW)["rows"] == {"orders": 1}
        ack = applier.apply(command("anonymize", ["identity", "account"]), NOW)
        assert (ack["status"], ack["rows"]) == ("done", {"customers": 1})
        with engine.connect() as conn:
            raw = conn.execute(
                sa.text("SELECT birth_date, last_login, personnummer FROM customers WHERE id = 1")
            ).one()
            left = conn.execute(sa.text("SELECT id, address FROM orders ORDER BY id")).all()
        # An unreadable date does not survive; a readable one becomes its year, stored in
        # the form SQLAlchemy reads back.
        assert tuple(raw) == (None, "2024-01-01 00:00:00.000000", "1985")
        # Order rows keep their address (contact was not erased), so they stay.
        assert [tuple(r) for r in left] == [
            (10, "Storgatan 1, Täby"),
            (11, "Storgatan 1, Täby"),
            (12, "Kungsgatan 2, Stockholm"),
        ]
    finally:
        engine.dispose()
