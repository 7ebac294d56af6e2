"""Materialiser on real databases (SQLite and PostgreSQL): tagged records become rows, and a
person's record never brings back what a command already erased, whichever comes first.
No mocks: the commands are applied by the real CommandApplier on the same database."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from privacy_pipeline.demo.sinks import DEMO_SINKS, DemoSink, create_tables, mapping_path
from privacy_pipeline.processors.policy import packaged_policies
from privacy_pipeline.sink.database import CommandApplier, DatabaseMismatchError
from privacy_pipeline.sink.mapping import SinkMapping, load_mapping, parse_mapping
from privacy_pipeline.sink.materialise import Feed, Materialiser, target_purposes
from privacy_pipeline.sink.scopes import ScopeStore, subject_key

from .conftest import Database

WEB, CREDIT = DEMO_SINKS  # web-analytics (page_views), credit-agency (credit_subjects)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T1 = "2026-03-01T10:00:00Z"  # Alice's first visit
T2 = "2026-03-01T10:05:00+01:00"  # 09:05Z: earlier than T1 in UTC, later on the wall
T3 = "2026-03-01T11:30:00Z"  # after the command's issued_at
ISSUED = "2026-03-01T11:00:00Z"
ALICE, BOB = "C1000042", "C1000043"
FUTURE = "2028-03-01T10:00:00Z"
_ids = itertools.count(1)


def purpose(name: str = "analytics", expires_at: str | None = FUTURE) -> dict[str, Any]:
    return {"purpose": name, "legal_basis": "legitimate_interest", "expires_at": expires_at,
            "rule": f"rego.{name}.web"}  # fmt: skip


def click(
    subject: str,
    at: str,
    *,
    controller: str = "rego",
    event_id: str | None = None,
    purposes: list[dict[str, Any]] | None = None,
    ip: str = "192.0.2.10",
) -> dict[str, Any]:
    """A decoded TaggedRecord of a click, as on tagged-clicks."""
    event_id = event_id or f"ev-{next(_ids)}"
    return {
        "decision": "tag",
        "event_id": event_id,
        "controller": controller,
        "subject_id": subject,
        "type": "click",
        "purposes": [purpose()] if purposes is None else purposes,
        "suppressed": [],
        "policy_version": "2024-02",
        "record": {
            "event_id": event_id,
            "type": "click",
            "controller": controller,
            "subject_id": subject,
            "occurred_at": at,
            "url": f"https://www.{controller}.example/sortiment",
            "ip": ip,
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "anonymous_id": None,
        },
    }


def customer(
    subject: str,
    at: str,
    fields: dict[str, str],
    *,
    action: str = "created",
    controller: str = "rego",
    purposes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A decoded TaggedRecord of a customer record, as on tagged-customers."""
    event_id = f"ev-{next(_ids)}"
    return {
        "decision": "tag",
        "event_id": event_id,
        "controller": controller,
        "subject_id": subject,
        "type": "customer",
        "purposes": [purpose("credit_assessment")] if purposes is None else purposes,
        "suppressed": [],
        "policy_version": "2024-02",
        "record": {
            "event_id": event_id,
            "type": "customer",
            "controller": controller,
            "subject_id": subject,
            "occurred_at": at,
            "action": action,
            "role": None,
            "fields": fields,
        },
    }


def command(
    target: str,
    action: str,
    categories: list[str],
    subject: str = ALICE,
    *,
    controller: str = "rego",
    recorded_before: str | None = None,
    issued_at: str = ISSUED,
) -> dict[str, Any]:
    """A decoded ErasureCommand (unsigned: the applier does not check signatures)."""
    return {
        "decision": "erasure",
        "command_id": f"cmd-{next(_ids)}",
        "controller": controller,
        "subject_id": subject,
        "target": target,
        "action": action,
        "purposes": ["analytics"],
        "categories": categories,
        "reason": "erasure_request",
        "rule": "rego.rights.erasure",
        "issued_at": issued_at,
        "deadline": "2026-04-01T11:00:00Z",
        "policy_version": "2024-02",
        "recorded_before": recorded_before,
        "due_at": issued_at,
        "request_id": "DSR-2026-00a1b2",
        "attempt": 1,
        "signature": None,
    }


class Side:
    """One demo sink's database: its tables, applier (keeping scopes) and materialiser."""

    def __init__(self, db: Database, which: DemoSink, mapping: SinkMapping | None = None) -> None:
        self.engine = db.engine
        create_tables(db.engine, which.target)
        self.mapping = mapping or load_mapping(mapping_path(which))
        self.applier = CommandApplier(db.engine, self.mapping, keep_scopes=True)
        # Without a mapping of its own, a record is written only for the purposes the
        # shipped packs say the target serves.
        served = None if mapping else target_purposes(packaged_policies(), which.target)
        self.materialiser = Materialiser(db.engine, self.mapping, which.feeds, purposes=served)
        self.table = next(iter(self.mapping.tables))

    def write(self, *records: dict[str, Any]) -> Any:
        return self.materialiser.write(records, NOW)

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self.applier.apply(cmd, "2026-03-01T12:00:00Z")

    def rows(self) -> list[dict[str, Any]]:
        table = sa.Table(self.table, sa.MetaData(), autoload_with=self.engine)
        key = [table.c.controller, table.c.subject_id] + (
            [table.c.event_id] if "event_id" in table.c else []
        )
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(table).order_by(*key)).mappings()
            return [_plain(dict(row)) for row in found]


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Rows read back alike from SQLite and PostgreSQL: booleans as bool, times dropped."""
    row.pop("viewed_at", None)
    row.pop("registered_at", None)
    row["restricted"] = bool(row["restricted"])
    return row


@pytest.fixture
def web(db: Database) -> Side:
    return Side(db, WEB)


@pytest.fixture
def credit(db: Database) -> Side:
    return Side(db, CREDIT)


def view(event_id: str, subject: str = ALICE, *, controller: str = "rego", **change: Any) -> dict:
    row = {
        "event_id": event_id,
        "controller": controller,
        "subject_id": subject,
        "url": f"https://www.{controller}.example/sortiment",
        "ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "anonymous_id": None,
        "restricted": False,
    }
    row.update(change)
    return row


# -- what becomes a row --------------------------------------------------------------------


def test_the_demo_targets_purposes_come_from_the_packs() -> None:
    assert target_purposes(packaged_policies(), "web-analytics") == {
        "rego": frozenset({"analytics"}),
        "inrego": frozenset({"analytics"}),
    }
    assert target_purposes(packaged_policies(), "credit-agency") == {
        "rego": frozenset({"credit_assessment"}),
        "rejoin": frozenset({"contract"}),
    }


def test_clicks_become_one_row_each_for_the_mappings_controllers(web: Side) -> None:
    a = click(ALICE, T1, event_id="ev-a")
    b = click(BOB, T1, controller="inrego", event_id="ev-b", ip="2001:db8::7")
    other = click(ALICE, T1, controller="iret", event_id="ev-c")
    stats = web.write(a, b, other)
    assert (stats.records, stats.rows_written, stats.not_ours) == (3, 2, 1)
    assert web.rows() == [
        view("ev-b", BOB, controller="inrego", ip="2001:db8::7"),
        view("ev-a"),
    ]
    # The recorded-at column holds the click's time, in UTC.
    with web.engine.connect() as conn:
        at = conn.execute(sa.text("SELECT viewed_at FROM page_views WHERE event_id = 'ev-a'"))
        assert str(at.scalar()).startswith("2026-03-01 10:00:00")
    # A redelivered record writes nothing.
    again = web.write(a)
    assert again.rows_written == 0
    assert len(web.rows()) == 2


@pytest.mark.parametrize(
    ("purposes", "why"),
    [
        ([purpose("contract")], "a purpose the target does not serve"),
        ([purpose(expires_at="2026-02-28T23:59:59Z")], "expired before now"),
        ([], "every purpose suppressed"),
    ],
)
def test_a_record_without_a_live_purpose_of_the_target_is_not_written(
    web: Side, purposes: list[dict[str, Any]], why: str
) -> None:
    stats = web.write(click(ALICE, T1, purposes=purposes))
    assert (stats.no_purpose, stats.rows_written) == (1, 0), why
    assert web.rows() == []


def test_a_customer_register_keeps_one_row_per_person_updated_by_each_record(
    credit: Side,
) -> None:
    created = customer(
        ALICE, T1, {"name": "Anna Berg", "email": "anna.berg@example.se",
                    "personnummer": "19850314-1235", "customer_type": "private"},
    )  # fmt: skip
    moved = customer(ALICE, T3, {"email": "anna@example.com"}, action="updated")
    contacted = customer(ALICE, T3, {"message": "Var är min leverans?"}, action="contacted")
    stats = credit.write(created, moved, contacted)
    assert (stats.rows_written, stats.not_ours) == (2, 1)
    assert credit.rows() == [
        {"controller": "rego", "subject_id": ALICE, "name": "Anna Berg",
         "email": "anna@example.com", "phone": None, "address": None,
         "personnummer": "19850314-1235", "restricted": False},
    ]  # fmt: skip


# -- records and commands, in either order -------------------------------------------------


def _both_orders(side: Side, records: list[dict[str, Any]], cmd: dict[str, Any], order: str):
    if order == "records first":
        side.write(*records)
        return side.apply(cmd)
    ack = side.apply(cmd)
    side.write(*records)
    return ack


ORDERS = ["records first", "command first"]


@pytest.mark.parametrize("order", ORDERS)
def test_an_erased_persons_late_record_does_not_come_back(web: Side, order: str) -> None:
    before = [click(ALICE, T1, event_id="ev-1"), click(ALICE, T2, event_id="ev-2")]
    bob = click(BOB, T1, event_id="ev-3")
    web.write(bob)
    ack = _both_orders(web, before, command("web-analytics", "erase", ["technical"]), order)
    assert ack["status"] == ("done" if order == "records first" else "not_found")
    assert web.rows() == [view("ev-3", BOB)]
    # Alice visits again after the erasure: that is new data, and it is kept.
    web.write(click(ALICE, T3, event_id="ev-4"))
    assert web.rows() == [view("ev-4"), view("ev-3", BOB)]


@pytest.mark.parametrize("order", ORDERS)
def test_recorded_before_covers_only_older_records(web: Side, order: str) -> None:
    # T2 is 09:05Z, T1 10:00Z: only the 09:05 visit is older than 09:30.
    records = [click(ALICE, T1, event_id="ev-1"), click(ALICE, T2, event_id="ev-2")]
    cmd = command("web-analytics", "erase", ["technical"], recorded_before="2026-03-01T09:30:00Z")
    _both_orders(web, records, cmd, order)
    assert web.rows() == [view("ev-1")]


@pytest.mark.parametrize("order", ORDERS)
def test_a_restriction_covers_late_records_too(web: Side, order: str) -> None:
    records = [click(ALICE, T1, event_id="ev-1"), click(BOB, T1, event_id="ev-2")]
    ack = _both_orders(web, records, command("web-analytics", "restrict", ["technical"]), order)
    assert ack["status"] == ("retained" if order == "records first" else "not_found")
    assert web.rows() == [view("ev-1", restricted=True), view("ev-2", BOB)]


@pytest.mark.parametrize("order", ORDERS)
def test_a_partial_erase_leaves_the_other_categories(credit: Side, order: str) -> None:
    fields = {"name": "Anna Berg", "email": "anna.berg@example.se", "phone": "+46 70-174 06 07",
              "personnummer": "19850314-1235"}  # fmt: skip
    records = [customer(ALICE, T1, fields)]
    _both_orders(credit, records, command("credit-agency", "erase", ["contact"]), order)
    assert credit.rows() == [
        {"controller": "rego", "subject_id": ALICE, "name": None, "email": None, "phone": None,
         "address": None, "personnummer": "19850314-1235", "restricted": False},
    ]  # fmt: skip


ANONYMISING = {
    "target": "credit-agency",
    "controllers": ["rego"],
    "tables": {
        "credit_subjects": {
            "subject_column": "subject_id",
            "controller_column": "controller",
            "recorded_at_column": "registered_at",
            "columns": {"name": "contact", "email": "contact", "personnummer": "identity"},
            "anonymize": {
                "name": {"constant": "Anonymiserad kund"},
                "email": "hash",
                "personnummer": "year",
            },  # fmt: skip
            "restricted_column": "restricted",
        }
    },
}


@pytest.mark.parametrize("order", ORDERS)
def test_anonymised_late_records_get_each_columns_strategy(db: Database, order: str) -> None:
    side = Side(db, CREDIT, parse_mapping(ANONYMISING))
    fields = {"name": "Anna Berg", "email": "anna.berg@example.se", "personnummer": "19850314-1235"}
    cmd = command("credit-agency", "anonymize", ["contact", "identity"])
    _both_orders(side, [customer(ALICE, T1, fields)], cmd, order)
    assert side.rows() == [
        {"controller": "rego", "subject_id": ALICE, "name": "Anonymiserad kund",
         "email": hashlib.sha256(b"anna.berg@example.se").hexdigest(),
         "phone": None, "address": None, "personnummer": "1985", "restricted": False},
    ]  # fmt: skip


# -- the lock and the scopes ---------------------------------------------------------------


def test_the_applier_waits_while_a_materialiser_holds_the_lock(db: Database, web: Side) -> None:
    impatient = CommandApplier(
        db.another_engine(lock_timeout_ms=200), web.mapping, keep_scopes=True
    )
    web.write(click(ALICE, T1, event_id="ev-1"))
    scopes = ScopeStore(db.engine)
    cmd = command("web-analytics", "erase", ["technical"])
    with db.engine.connect() as conn:
        scopes.lock(conn)  # as a materialiser does first in its transaction
        ack = impatient.apply(cmd, "2026-03-01T12:00:00Z")
        conn.rollback()
    assert (ack["status"], ack["retryable"]) == ("failed", True)
    assert web.rows() == [view("ev-1")]
    assert impatient.apply(cmd, "2026-03-01T12:00:00Z")["status"] == "done"
    assert web.rows() == []


def test_scopes_name_the_person_by_hash_and_can_be_forgotten(db: Database, web: Side) -> None:
    cmd = command("web-analytics", "erase", ["technical"])
    web.apply(cmd)
    with db.engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT * FROM command_scopes")).mappings().one()
    assert dict(kept) == {
        "command_id": cmd["command_id"],
        "subject_key": subject_key("rego", ALICE),
        "action": "erase",
        "categories": "technical",
        "covers_until": "2026-03-01T11:00:00.000000Z",
        "applied_at": "2026-03-01T12:00:00.000000Z",
    }
    assert ALICE not in str(dict(kept))
    scopes = ScopeStore(db.engine)
    assert scopes.forget(datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) == 0
    assert scopes.forget(datetime(2026, 3, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=1)) == 1
    # Forgotten: a late record of Alice is written again.
    web.write(click(ALICE, T1, event_id="ev-9"))
    assert web.rows() == [view("ev-9")]


def test_a_failed_command_leaves_no_scope(web: Side) -> None:
    ack = web.apply(command("web-analytics", "erase", ["contact"]))  # no table maps contact
    assert ack["status"] == "failed"
    web.write(click(ALICE, T1, event_id="ev-1"))
    assert web.rows() == [view("ev-1")]


# -- checks at start -----------------------------------------------------------------------


def test_feeds_are_checked_against_mapping_and_database(db: Database) -> None:
    create_tables(db.engine, "web-analytics")
    mapping = load_mapping(mapping_path(WEB))
    with pytest.raises(DatabaseMismatchError) as caught:
        Materialiser(
            db.engine,
            mapping,
            [
                Feed("page_views", "click", key_column="subject_id"),
                Feed("visits", "click"),
                Feed("page_views", "click", fields={"referrer": "referrer"}),
            ],
        )
    problems = dict(caught.value.problems)
    assert problems == {
        "feeds.0.key_column": "'subject_id' is neither the primary key nor unique",
        "feeds.1.table": "'visits' is not a table of the mapping",
        "feeds.2.fields.referrer": "not a personal column of the mapping's table",
    }
