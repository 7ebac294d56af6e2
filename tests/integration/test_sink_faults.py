"""A sink under faults, through the command line a downstream team runs (`privacy-pipeline
sink`): killed with SIGKILL in the middle of a batch, fed forged and broken records, started
on a database or with secrets that do not fit, and given the same command twice.

The tests produce the commands themselves, signed with the test session's key pair (the
one the sink finds through PRIVACY_PIPELINE_SECRETS), so no worker runs: what is tested is
the sink alone. The bar (issue 9): no command is applied twice, none is lost, the final
database equals that of a run without the fault, and a bad record changes nothing and stops
nothing.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition
from worker_process import (
    SERDE,
    TEST_SECRETS,
    MakeTopics,
    Readers,
    Record,
    SinkProcess,
    StartSink,
    cli,
    send_raw,
)

from privacy_pipeline.sink.database import CommandApplier, hash_value
from privacy_pipeline.sink.mapping import load_mapping
from privacy_pipeline.streams.records import erasure_command
from privacy_pipeline.streams.signing import CommandSigner

CONTROLLER = "inrego"
TARGET = "business-systems"
VERSION = "inrego@2023-10"
COMMANDS = "erasure-commands"
ACKS = "erasure-acks"
DEAD = "dead-letters"

# customers holds contact and identity data and can be restricted; orders holds order
# data and cannot (a restriction of order data answers failed, not retryable).
MAPPING = """\
target: business-systems
controllers: [inrego]
tables:
  customers:
    subject_column: subject_id
    columns:
      name: contact
      email: contact
      personnummer: identity
    anonymize:
      email: hash
    restricted_column: restricted
  orders:
    subject_column: subject_id
    columns:
      delivery_address: order
      phone: order
"""


# -- the downstream database ------------------------------------------------------------


def person(i: int) -> str:
    return f"p{i:04d}"


def customer_row(i: int) -> dict[str, Any]:
    return {
        "id": i + 1,
        "subject_id": person(i),
        "name": f"Person Nummer{i:04d}",
        "email": f"{person(i)}@example.se",
        "personnummer": f"19800101-{i:04d}",
        "restricted": False,
    }


def order_row(i: int) -> dict[str, Any]:
    return {
        "id": i + 1,
        "subject_id": person(i),
        "order_ref": f"O-{i:04d}",
        "amount": 100 + i,
        "delivery_address": f"Storgatan {i}, 411 01 Goteborg",
        "phone": f"+4670{i:07d}",
    }


def personal_values(people: range) -> list[str]:
    """Every personal value in the database, subject ids included."""
    out: list[str] = []
    for i in people:
        c, o = customer_row(i), order_row(i)
        out += [c["subject_id"], c["name"], c["email"], c["personnummer"]]
        out += [o["delivery_address"], o["phone"]]
    return out


def create_database(url: str, people: range, *, wal: bool = False) -> sa.Engine:
    """customers and orders, one row of each per person.

    *wal* puts a SQLite file in write-ahead-log mode (kept in the file, so the sink uses it
    too): one fsync per commit instead of about three, which halves the time 2,000
    one-command transactions take. A process killed with SIGKILL loses no committed
    transaction in either mode.
    """
    engine = sa.create_engine(url)
    if wal:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    meta = sa.MetaData()
    customers = sa.Table(
        "customers",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("email", sa.String(200)),
        sa.Column("personnummer", sa.String(20)),
        sa.Column("restricted", sa.Boolean, nullable=False, default=False),
    )
    orders = sa.Table(
        "orders",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("order_ref", sa.String(20), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("delivery_address", sa.String(200)),
        sa.Column("phone", sa.String(40)),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [customer_row(i) for i in people])
        conn.execute(orders.insert(), [order_row(i) for i in people])
    return engine


def write_mapping(path: Path) -> Path:
    path.write_text(MAPPING, "utf-8")
    return path


def snapshot(engine: sa.Engine) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table, as sets of tuples; of `applied_commands`, the instant a
    command was applied left out (`applied_at`, and `completed_at` in the stored ack)."""
    meta = sa.MetaData()
    with engine.connect() as conn:
        meta.reflect(conn)
        out: dict[str, set[tuple[Any, ...]]] = {}
        for name, table in meta.tables.items():
            if name == "applied_commands":
                query = sa.select(table.c.command_id, table.c.status, table.c.ack)
                out[name] = {
                    (cid, status, json.dumps(without_instant(json.loads(ack)), sort_keys=True))
                    for cid, status, ack in conn.execute(query)
                }
            else:
                out[name] = {tuple(r) for r in conn.execute(sa.select(table))}
    return out


def without_instant(ack: dict[str, Any]) -> dict[str, Any]:
    """An ack without `completed_at`, the instant it was applied."""
    return {k: v for k, v in ack.items() if k != "completed_at"}


def table_rows(engine: sa.Engine, table: str) -> dict[str, dict[str, Any]]:
    """subject_id -> the whole row, as the driver returns it."""
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608 - a test table
        return {r["subject_id"]: dict(r) for r in result.mappings()}


def applied_ids(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(sa.text("SELECT command_id FROM applied_commands")).scalars())


# -- commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> CommandSigner:
    """The pipeline's signer: the key pair the sink CLI reads from TEST_SECRETS."""
    return CommandSigner.from_secrets(TEST_SECRETS)


def command(
    subject: str,
    action: str,
    categories: list[str],
    signer: CommandSigner | None,
) -> dict[str, Any]:
    """A command as the worker writes it (signed by *signer*, unsigned without one)."""
    restrict = action == "restrict"
    decision = {
        "decision": "erasure",
        "command_id": uuid.uuid4().hex,
        "controller": CONTROLLER,
        "subject_id": subject,
        "target": TARGET,
        "action": action,
        "purposes": ["account"],
        "categories": categories,
        "reason": "restriction_request" if restrict else "erasure_request",
        "rule": "inrego.rights.restriction" if restrict else "inrego.rights.erasure",
        "issued_at": "2026-01-10T09:00:00Z",
        "deadline": "2026-02-09T09:00:00Z",
        "due_at": "2026-01-10T08:59:00Z",
        "request_id": f"REQ-{uuid.uuid4().hex[:8]}",
    }
    return erasure_command(decision, VERSION, signer)


def key_of(cmd: dict[str, Any]) -> bytes:
    return f"{cmd['controller']}:{cmd['subject_id']}".encode()


def encoded(cmd: dict[str, Any]) -> tuple[bytes, bytes]:
    return key_of(cmd), SERDE.encode("ErasureCommand", cmd)


def assert_no_personal_data(texts: list[str], values: list[str]) -> None:
    text = "\n".join(set(texts))
    leaked = {v for v in values if v in text}
    assert not leaked, f"personal values in acks or dead letters: {sorted(leaked)[:5]}"


def wait_for(done: Any, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# -- 1. SIGKILL in the middle of a batch ----------------------------------------------------

PEOPLE = range(2000)
ERASED = [i for i in PEOPLE if i % 2 == 0]  # half of the people
ERASED_TWICE = ERASED[:960]  # two commands each: contact, then order
ERASED_WHOLLY = ERASED[960:]  # one command with every category: both rows deleted
RESTRICTED = [i for i in PEOPLE if i % 2][:15]  # restrict contact: retained
RESTRICT_FAILS = [i for i in PEOPLE if i % 2][15:20]  # restrict order: orders lacks the flag
GHOSTS = range(5000, 5020)  # no row anywhere: not_found


def kill_scenario(signer: CommandSigner) -> list[dict[str, Any]]:
    """2,000 commands: 1,960 erase (1,000 people), 20 restrict, 20 for no one."""
    cmds = []
    for i in ERASED_TWICE:
        cmds.append(command(person(i), "erase", ["contact"], signer))
        cmds.append(command(person(i), "erase", ["order"], signer))
    for i in ERASED_WHOLLY:
        cmds.append(command(person(i), "erase", ["contact", "identity", "order"], signer))
    cmds += [command(person(i), "restrict", ["contact"], signer) for i in RESTRICTED]
    cmds += [command(person(i), "restrict", ["order"], signer) for i in RESTRICT_FAILS]
    cmds += [command(person(i), "erase", ["contact"], signer) for i in GHOSTS]
    assert len(cmds) == 2000
    return cmds


def expected_after_kill_scenario() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """customers and orders by subject id, worked out by hand from the mapping's rules."""
    customers: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    for i in PEOPLE:
        c, o = customer_row(i), order_row(i)
        if i in ERASED_WHOLLY:
            continue  # no personal column left in either row: both deleted
        if i in ERASED_TWICE:
            # contact cleared, identity kept: the row stays; the order row had only
            # order columns: deleted
            customers[c["subject_id"]] = {**c, "name": None, "email": None}
            continue
        customers[c["subject_id"]] = {**c, "restricted": i in RESTRICTED}
        orders[o["subject_id"]] = o
    return customers, orders


def committed_offsets(broker: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets *group* has committed on *topic* (0 where none), read without joining."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in found}


def test_a_sink_killed_in_the_middle_of_a_batch_applies_every_command_exactly_once(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    run_sink: StartSink,
    readers: Readers,
    signer: CommandSigner,
) -> None:
    make_topics(2)
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_database(url, PEOPLE, wal=True)
    mapping = write_mapping(tmp_path / "business-systems.yaml")
    cmds = kill_scenario(signer)
    ids = {c["command_id"] for c in cmds}
    assert len(ids) == len(cmds)
    positions = send_raw(broker, topic_prefix + COMMANDS, [encoded(c) for c in cmds])
    position_of = dict(zip((c["command_id"] for c in cmds), positions, strict=True))

    acks = readers[ACKS]
    first = run_sink(TARGET, url, mapping)
    readers.wait([ACKS], lambda: len(acks.records) > 0, timeout=30, what="the first ack")
    first_log = first.kill()
    assert first.proc.returncode == -signal.SIGKILL, first_log
    acked_before_kill = {r.value["command_id"] for r in acks.records if r.value}
    applied_before_kill = set(applied_ids(engine))
    committed = committed_offsets(
        broker, f"{topic_prefix}privacy-pipeline-sink-{TARGET}", topic_prefix + COMMANDS, 2
    )
    # Offsets are committed only past applied commands: nothing can be lost.
    skipped = {
        cid
        for cid, (partition, offset) in position_of.items()
        if offset < committed[partition] and cid not in applied_before_kill
    }
    assert not skipped, f"{len(skipped)} commands committed but never applied: lost"
    # Killed in the middle of a batch: commands applied whose offsets were not committed.
    uncommitted = {
        cid for cid in applied_before_kill if position_of[cid][1] >= committed[position_of[cid][0]]
    }
    assert uncommitted, (
        f"not killed mid-batch: offsets committed {committed}, "
        f"{len(applied_before_kill)} commands in applied_commands; {first_log}"
    )
    assert len(applied_before_kill) < len(cmds)

    second = run_sink(TARGET, url, mapping)
    # While the second sink waits to own the partitions (the killed one's session must
    # expire first), the reference: the same commands applied to the same initial rows
    # directly, without a kill.
    ref_engine = create_database(f"sqlite:///{tmp_path / 'reference.db'}", PEOPLE, wal=True)
    reference = CommandApplier(ref_engine, load_mapping(mapping))
    expected_acks = {
        c["command_id"]: without_instant(reference.apply(c, "2026-01-10T09:30:00Z")) for c in cmds
    }

    readers.wait(
        [ACKS],
        lambda: {r.value["command_id"] for r in acks.records if r.value} >= ids,
        timeout=40,
        what=f"an ack of each of the {len(cmds)} commands",
        settle=0.5,
    )
    second_log = second.stop()
    assert second.proc.returncode == 0, second_log

    # Every ack decodes, is keyed by its command id and sits in its command's partition;
    # every ack of one command is the same ack, byte for byte (a redelivered command gets
    # its stored ack again).
    by_id: dict[str, list[Record]] = {}
    for r in acks.records:
        assert r.value is not None, r
        assert r.key == r.value["command_id"].encode()
        assert r.partition == position_of[r.value["command_id"]][0]
        by_id.setdefault(r.value["command_id"], []).append(r)
    assert set(by_id) == ids
    for records in by_id.values():
        assert len({r.raw for r in records}) == 1, [r.value for r in records]
    # An ack seen before the kill whose command was not committed was sent again.
    resent = acked_before_kill & uncommitted
    assert all(len(by_id[cid]) >= 2 for cid in resent), resent

    # Exactly one application per command.
    applied = applied_ids(engine)
    assert set(applied) == ids and set(applied.values()) == {1}

    # Each ack says what the kill-free run says (but for when it was applied).
    the_ack = {cid: records[0].value for cid, records in by_id.items()}
    got = {cid: without_instant(a) for cid, a in the_ack.items() if a}
    assert got == expected_acks
    statuses = Counter(str(a["status"]) for a in got.values())
    assert statuses == {"done": 1960, "retained": 15, "failed": 5, "not_found": 20}
    for c in cmds:
        a = got[c["command_id"]]
        assert a["target"] == TARGET and a["attempt"] == 1
        if int(c["subject_id"][1:]) in GHOSTS:
            assert (a["status"], a["rows"]) == ("not_found", {"customers": 0})
        elif c["action"] == "restrict" and c["categories"] == ["order"]:
            assert (a["status"], a["retryable"], a["rows"]) == ("failed", False, {})
            assert "restricted_column" in str(a["detail"]) and "orders" in str(a["detail"])
        elif c["action"] == "restrict":
            assert (a["status"], a["rows"]) == ("retained", {"customers": 1})
        elif len(c["categories"]) == 3:
            assert (a["status"], a["rows"]) == ("done", {"customers": 1, "orders": 1})
        else:
            table = "orders" if c["categories"] == ["order"] else "customers"
            assert (a["status"], a["rows"]) == ("done", {table: 1})
    # command_id is a hex uuid and completed_at an instant: the rest is what could leak.
    assert_no_personal_data(
        [str(a) for a in got.values()], personal_values(PEOPLE) + [person(i) for i in GHOSTS]
    )

    # The final rows, worked out by hand: which are gone, which columns NULL, who is
    # restricted.
    customers, orders = expected_after_kill_scenario()
    assert table_rows(engine, "customers") == customers
    assert table_rows(engine, "orders") == orders
    # And every table equals that of the kill-free run.
    assert snapshot(engine) == snapshot(ref_engine)
    engine.dispose()
    ref_engine.dispose()


# -- 2. bad records -------------------------------------------------------------------------


def test_bad_records_go_to_dead_letters_change_nothing_and_stop_nothing(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    run_sink: StartSink,
    readers: Readers,
    signer: CommandSigner,
) -> None:
    make_topics(1)  # one partition: the records are handled in the order sent
    people = range(10)
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_database(url, people)
    mapping = write_mapping(tmp_path / "business-systems.yaml")
    before = snapshot(engine)
    sink = run_sink(TARGET, url, mapping)

    forged = command(
        person(0), "erase", ["contact"], CommandSigner.from_secrets(tmp_path / "other")
    )
    unsigned = command(person(1), "erase", ["contact"], None)
    tampered = command(person(2), "erase", ["contact"], signer)
    tampered["subject_id"] = person(3)  # signed for one person, sent for another
    valid_bytes = SERDE.encode("ErasureCommand", command(person(4), "erase", ["contact"], signer))
    ack_record = {
        "command_id": uuid.uuid4().hex,
        "target": TARGET,
        "status": "done",
        "completed_at": "2026-01-10T09:00:00Z",
    }
    unmapped = command(person(5), "erase", ["contact", "payment"], signer)
    good = command(person(6), "erase", ["contact"], signer)
    key = f"{CONTROLLER}:{person(7)}".encode()
    bad: list[tuple[str, bytes, bytes | None]] = [
        ("invalid_signature", *encoded(forged)),
        ("invalid_signature", *encoded(unsigned)),
        ("invalid_signature", *encoded(tampered)),
        ("undecodable", key, f"{person(7)}@example.se erase me".encode()),
        ("undecodable", key, valid_bytes[:-20]),  # a command cut short
        ("undecodable", key, None),  # a tombstone
        ("wrong_schema", key, SERDE.encode("ErasureAck", ack_record)),
        ("unmapped_category", *encoded(unmapped)),
    ]
    positions = send_raw(
        broker,
        topic_prefix + COMMANDS,
        [(k, v) for _, k, v in bad] + [encoded(good)],
    )

    # The good command is the last record of the only partition: once it is acked, every
    # bad record before it has been handled, and its dead letter flushed with the batch.
    readers.wait(
        [ACKS],
        lambda: any(a["command_id"] == good["command_id"] for a in readers[ACKS].values()),
        timeout=30,
        what="the good command's ack",
    )
    readers.wait(
        [ACKS, DEAD],
        lambda: len(readers[DEAD].records) >= len(bad),
        timeout=5,
        what=f"{len(bad)} dead letters",
        settle=1.0,
    )
    assert sink.running(), sink.output()

    letters = readers[DEAD].values()
    assert [d["reason"] for d in letters] == [reason for reason, _, _ in bad]
    for letter, (_, k, v), (partition, offset) in zip(letters, bad, positions[:-1], strict=True):
        assert letter["source_topic"] == COMMANDS
        assert (letter["source_partition"], letter["source_offset"]) == (partition, offset)
        assert letter["original"] == (v or b"")
        assert letter["key"] == k
    assert "ErasureAck" in letters[6]["error"]
    assert "payment" in letters[7]["error"]

    # The good command, sent after them, is applied; nothing else is.
    [ack] = readers[ACKS].values()
    assert ack["command_id"] == good["command_id"]
    assert (ack["status"], ack["rows"]) == ("done", {"customers": 1})
    after = snapshot(engine)
    changed = {**customer_row(6), "name": None, "email": None}
    assert table_rows(engine, "customers")[person(6)] == changed
    assert [row[0] for row in after["applied_commands"]] == [good["command_id"]]
    untouched = {t: rows for t, rows in after.items() if t != "applied_commands"}
    expected = {t: set(rows) for t, rows in before.items() if t != "applied_commands"}
    expected["customers"] = {r for r in expected["customers"] if r[1] != person(6)}
    expected["customers"].add(tuple(changed.values()))
    assert untouched == expected

    assert_no_personal_data(
        [d["error"] for d in letters] + [str(ack)],
        personal_values(people),
    )
    engine.dispose()


# -- 3. a sink that cannot start --------------------------------------------------------


def start_failure(broker: str, *args: str) -> tuple[str, float]:
    """Run the sink expecting it to refuse to start: its stderr and how long it took."""
    started = time.monotonic()
    result = cli("sink", *args, "--broker", broker, "--metrics-port", "0", timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.stderr, elapsed


def test_a_database_that_does_not_match_the_mapping_stops_the_sink_at_once(
    broker: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_database(url, range(3))
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE orders DROP COLUMN phone"))
    mapping = write_mapping(tmp_path / "business-systems.yaml")

    stderr, elapsed = start_failure(
        broker, "--target", TARGET, "--db", url, "--mapping", str(mapping)
    )
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "tables.orders.columns.phone" in lines[0], stderr
    assert "table orders has no such column" in lines[0], stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"
    # Nothing was written: not even the sink's own table.
    assert "applied_commands" not in sa.inspect(engine).get_table_names()
    engine.dispose()


@pytest.mark.parametrize("key_file", ["missing", "not a key"])
def test_a_missing_or_broken_public_key_stops_the_sink_and_says_what_to_do(
    broker: str, tmp_path: Path, key_file: str
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create_database(url, range(3)).dispose()
    mapping = write_mapping(tmp_path / "business-systems.yaml")
    secrets = tmp_path / "sink-secrets"
    secrets.mkdir()
    if key_file == "not a key":
        (secrets / "command-signing.pub").write_text("-----BEGIN NOTHING-----\n")

    stderr, elapsed = start_failure(
        broker,
        "--target",
        TARGET,
        "--db",
        url,
        "--mapping",
        str(mapping),
        "--secrets",
        str(secrets),
    )
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: {secrets / 'command-signing.pub'}: "), stderr
    assert "Copy command-signing.pub from the worker's secrets folder" in lines[0], stderr
    assert "--secrets" in lines[0], stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


# -- 4. a redelivered command -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_db(
    request: pytest.FixtureRequest, tmp_path: Path, topic_prefix: str
) -> Iterator[tuple[str, sa.Engine]]:
    """(URL for the sink, engine) of a fresh database: a SQLite file, or a schema of its
    own on the session's PostgreSQL (the sink's URL sets the search path to it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'crm.db'}"
        engine = sa.create_engine(url)
        yield url, engine
        engine.dispose()
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = "s_" + topic_prefix.strip("-").replace("-", "_")
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    options = quote(f"-c search_path={schema}")
    url = f"{base}{'&' if '?' in base else '?'}options={options}"
    engine = sa.create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_a_redelivered_command_is_acknowledged_again_and_applied_once(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    run_sink: StartSink,
    readers: Readers,
    signer: CommandSigner,
    sink_db: tuple[str, sa.Engine],
) -> None:
    url, engine = sink_db
    people = range(5)
    create_database(url, people).dispose()
    make_topics(2)
    mapping = write_mapping(tmp_path / "business-systems.yaml")
    sink: SinkProcess = run_sink(TARGET, url, mapping)
    before = table_rows(engine, "customers")

    # anonymize hashes the e-mail: applied twice, it would be the hash of the hash.
    cmd = command(person(1), "anonymize", ["contact"], signer)
    delivery = encoded(cmd)
    [(partition, _)] = send_raw(broker, topic_prefix + COMMANDS, [delivery])
    acks = readers[ACKS]
    readers.wait([ACKS], lambda: len(acks.records) >= 1, timeout=30, what="the first ack")
    send_raw(broker, topic_prefix + COMMANDS, [delivery])  # the same record again
    readers.wait(
        [ACKS], lambda: len(acks.records) >= 2, timeout=15, what="the second ack", settle=1.0
    )
    assert sink.running(), sink.output()

    assert len(acks.records) == 2
    first, second = acks.records
    assert first.value == second.value
    assert first.raw == second.raw  # the stored ack, byte for byte
    assert first.key == second.key == cmd["command_id"].encode()
    assert first.partition == second.partition == partition
    assert first.value is not None
    assert first.value["command_id"] == cmd["command_id"]
    assert (first.value["status"], first.value["rows"]) == ("done", {"customers": 1})

    after = table_rows(engine, "customers")
    original = customer_row(1)
    assert after[person(1)] == {
        **original,
        "name": None,
        "email": hash_value(original["email"]),  # hashed once
    }
    assert {p: r for p, r in after.items() if p != person(1)} == {
        p: r for p, r in before.items() if p != person(1)
    }
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT command_id FROM applied_commands")).scalars().all()
    assert stored == [cmd["command_id"]]
    assert_no_personal_data([str(first.value)], personal_values(people))
