"""The erasure loop through the command line a user runs: worker, sinks, real databases.

Inrego's policy (seed 001, §2.1 and the rights section) keeps a customer's contact data
for the account and direct marketing; an erasure request erases it at once from every
system the pack names as a recipient of it: business-systems, it-service-providers and
marketing-services. Here two sinks keep theirs in SQLite and one in PostgreSQL, as
downstream services would, and each materialises the people's records in its own table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from worker_process import (
    SERDE,
    MakeTopics,
    Readers,
    SinkProcess,
    StartWorker,
    customer,
    produce_file,
    request,
    send_raw,
    write_events,
)

CONTROLLER = "inrego"
TARGETS = ("business-systems", "it-service-providers", "marketing-services")
PEOPLE = [f"p{n:03d}" for n in range(100)]
ERASED = PEOPLE[::2]  # 50 people ask for erasure
KEPT = PEOPLE[1::2]

MAPPING = """\
target: {target}
controllers: [inrego]
tables:
  customers:
    subject_column: subject_id
    controller_column: controller
    columns:
      name: contact
      email: contact
      phone: contact
"""


def fields(person: str) -> dict[str, str]:
    return {"name": f"Person {person}", "email": f"{person}@example.se", "phone": "+46700000"}


def create_customers(url: str, table: str) -> sa.Engine:
    """The downstream table, filled with the 100 people as the tagged records said."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    customers = sa.Table(
        table,
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("controller", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("email", sa.String(200)),
        sa.Column("phone", sa.String(40)),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            customers.insert(),
            [{"subject_id": p, "controller": CONTROLLER, **fields(p)} for p in PEOPLE],
        )
    return engine


def rows(engine: sa.Engine, table: str) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT subject_id, name, email, phone FROM {table}"))  # noqa: S608 - a fixed test table name
        return {r[0]: tuple(r[1:]) for r in result}


@pytest.fixture
def start_sink(broker: str, topic_prefix: str, tmp_path: Path) -> Iterator[Any]:
    started: list[SinkProcess] = []

    def start(target: str, db: str, table: str = "customers") -> SinkProcess:
        mapping = tmp_path / f"{target}.yaml"
        mapping.write_text(MAPPING.format(target=target).replace("customers:", f"{table}:"))
        args = ["--target", target, "--db", db, "--mapping", str(mapping)]
        args += ["--broker", broker, "--prefix", topic_prefix, "--metrics-port", "0"]
        sink = SinkProcess(args, tmp_path / f"sink-{target}.log")
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def test_erasure_requests_reach_every_database_and_come_back_acknowledged(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    start_sink: Any,
    readers: Readers,
    postgres_url: str,
) -> None:
    pg_table = f"customers_{topic_prefix.strip('-').replace('-', '_')}"
    databases = {
        "business-systems": (f"sqlite:///{tmp_path / 'crm.db'}", "customers"),
        "it-service-providers": (f"sqlite:///{tmp_path / 'helpdesk.db'}", "customers"),
        "marketing-services": (postgres_url, pg_table),
    }
    engines = {t: create_customers(url, table) for t, (url, table) in databases.items()}
    make_topics(2)
    start_worker(partitions=2)
    sinks = {t: start_sink(t, url, table) for t, (url, table) in databases.items()}

    now = datetime.now(UTC).replace(microsecond=0)
    events = [customer(CONTROLLER, p, now - timedelta(days=30), fields=fields(p)) for p in PEOPLE]
    events += [request(CONTROLLER, p, now - timedelta(days=1), "erasure") for p in ERASED]
    produce_file(broker, topic_prefix, write_events(tmp_path / "events.jsonl", events))

    # A forged command: the right shape and target, but no signature of the pipeline.
    forged = {
        "command_id": "forged-1",
        "controller": CONTROLLER,
        "subject_id": KEPT[0],
        "target": "business-systems",
        "action": "erase",
        "purposes": ["account"],
        "categories": ["contact"],
        "reason": "erasure_request",
        "rule": "inrego.rights.erasure",
        "issued_at": "2026-01-10T09:00:00Z",
        "deadline": "2026-01-11T09:00:00Z",
        "policy_version": "inrego@2023-10",
    }
    send_raw(
        broker,
        topic_prefix + "erasure-commands",
        [(f"{CONTROLLER}:{KEPT[0]}".encode(), SERDE.encode("ErasureCommand", forged))],
    )

    want = len(ERASED) * len(TARGETS)
    readers.wait(
        ["erasure-acks", "dead-letters"],
        lambda: (
            len(readers["erasure-acks"].records) >= want
            and len(readers["dead-letters"].records) >= 1
        ),
        timeout=120,
        what=f"{want} acks and the forged command's dead letter",
        settle=1.0,
    )
    logs = {t: s.stop() for t, s in sinks.items()}

    readers.wait(
        ["erasure-commands"],
        lambda: len(readers["erasure-commands"].records) >= want + 1,
        timeout=10,
        what="the commands",
    )
    commands = readers["erasure-commands"].values()
    real = [c for c in commands if c["command_id"] != "forged-1"]
    assert {(c["subject_id"], c["target"]) for c in real} == {
        (p, t) for p in ERASED for t in TARGETS
    }
    assert {c["reason"] for c in real} == {"erasure_request"}

    acks = readers["erasure-acks"].values()
    assert len(acks) == want, logs
    by_id = {a["command_id"]: a for a in acks}
    assert set(by_id) == {c["command_id"] for c in real}
    assert {a["status"] for a in acks} == {"done"}, [a for a in acks if a["status"] != "done"]
    for a in acks:
        assert a["attempt"] == 1
        assert sum(a["rows"].values()) == 1
        # No personal data in an ack, whatever the outcome.
        assert not any(p in str(a) for p in PEOPLE)
    # acks are keyed by command_id and sit in the partition of their command
    partition_of = {
        r.value["command_id"]: r.partition for r in readers["erasure-commands"].records if r.value
    }
    for r in readers["erasure-acks"].records:
        assert r.value is not None and r.key == r.value["command_id"].encode()
        assert r.partition == partition_of[r.value["command_id"]]

    # Every erased person's row is gone from all three databases (their only personal
    # columns became NULL); the other fifty are untouched, the forged command's person too.
    for target, engine in engines.items():
        left = rows(engine, databases[target][1])
        assert set(left) == set(KEPT), target
        assert all(left[p] == tuple(fields(p).values()) for p in KEPT), target
        engine.dispose()

    # Only business-systems is the forged command's target; the other sinks skip it.
    [letter] = readers["dead-letters"].values()
    assert letter["reason"] == "invalid_signature"
    assert letter["source_topic"] == "erasure-commands"
