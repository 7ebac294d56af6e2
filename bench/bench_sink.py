"""Benchmark of a sink against a bare loop of the same SQL, on SQLite and PostgreSQL, in one run.

    python bench/bench_sink.py [--commands 20000] [--quick] [--check] [--keep]

Issue 9's targets: a sink applies commands at >= 0.5 of the rate of a bare loop that runs
the same statements without Kafka, and signing the commands costs the worker <= 10 % of
what enforce costs per event. The tracker, the other part of that target, runs inside
enforce and is not measured here: `make bench`'s enforce CPU per event includes it.

1. Input (not timed): N people (`--commands`, default 20,000) in a `customers` table
   (subject_id, controller, name, email, phone, created_at, restricted) and an `orders`
   table (two orders each), indexed on (subject_id, controller), in a template database;
   one signed `ErasureCommand` per person for target `business-systems`, controller
   `inrego`, categories [contact]: 8 in 10 `erase`, 1 in 10 `anonymize`, 1 in 10
   `restrict` (by person number). The commands are Avro-encoded with `AvroSerde` and
   produced to `erasure-commands` (4 partitions, keyed controller:subject_id) of an
   embedded broker that this script starts on a port in 19800-19899.
2. For SQLite, then for PostgreSQL (a `pgserver` instance started here), each on its own
   fresh copy of the template database:
   - bare loop: `CommandApplier.apply` over the already-decoded command dicts, in a plain
     Python loop: the same statements per command, in the same one transaction per command;
   - sink: `privacy_pipeline.sink.service.Sink`, constructed as `privacy-pipeline sink`
     constructs it (`CommandApplier(create_engine(url), load_mapping(...))`, a
     `CommandVerifier`, `Settings(bootstrap=..., prefix=...)`, `SinkMetrics`), run with
     `Sink.run`; timed from the first command it handles until its step that acked the
     last command returned (the step flushes the acks, waits for the broker to
     acknowledge each, then commits its offsets). The acks are read back from
     `erasure-acks` and checked: N acks, one per command, `done` for erase and anonymize,
     `retained` for restrict (a restriction is retained, not done). Both copies of the
     database must hold the same rows afterwards.
3. Signatures, best of 3 passes over the N commands: `CommandVerifier.verify` (what a sink
   pays per command) and `CommandSigner.sign` (what the worker pays per command), each with
   the canonical JSON alone (`signing_bytes`) shown apart. Signing per event is signing per
   command times the commands per event of the demo traffic in `make bench` (5,462 per
   200,000 events), compared with the ~140 us of CPU enforce spends per event (README,
   "Where the pipeline's time goes").

Prints progress on stderr, a table on stdout and, as the last line, one JSON object.
Exits 0 even when a target is missed (the table says MISSED) unless `--check` is given.
Everything it starts (broker, PostgreSQL) is stopped on the way out, on an error, Ctrl-C
or SIGTERM too, and the temporary folder is removed unless `--keep`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa
from bench_pipeline import cpu_seconds, descendants  # /proc readers, one copy
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker, free_port
from privacy_pipeline.sink.database import CommandApplier
from privacy_pipeline.sink.mapping import SinkMapping, load_mapping
from privacy_pipeline.sink.metrics import SinkMetrics
from privacy_pipeline.sink.service import Sink
from privacy_pipeline.streams.metrics import make_registry
from privacy_pipeline.streams.records import erasure_command, wall_instant
from privacy_pipeline.streams.serde import AvroSerde
from privacy_pipeline.streams.settings import ClientTuning, Settings
from privacy_pipeline.streams.signing import CommandSigner, CommandVerifier, signing_bytes
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import (
    DEAD_LETTERS,
    ERASURE_ACKS,
    ERASURE_COMMANDS,
    topic_specs,
)

TARGET_SINK_RATIO = 0.5  # sink commands/s over bare-loop commands/s, at least
TARGET_SIGN_SHARE = 0.10  # signing per event over enforce's CPU per event, at most
# The demo traffic of `make bench` (200,000 events over 10,000 subjects) yields 5,462
# erasure commands: the share of events that become commands (issue 9's figure).
BENCH_COMMANDS, BENCH_EVENTS = 5_462, 200_000
ENFORCE_US_PER_EVENT = 140.0  # README, "Where the pipeline's time goes": 126-141 us (pre-tracker)
PORTS = range(19800, 19900)
PARTITIONS = 4
TARGET = "business-systems"
CONTROLLER = "inrego"
POLICY_VERSION = "inrego@bench"
ORDERS_PER_PERSON = 2
EXPECTED_STATUS = {"erase": "done", "anonymize": "done", "restrict": "retained"}
MIX = "8 in 10 erase, 1 in 10 anonymize, 1 in 10 restrict; categories [contact]"
SIGN_PASSES = 3
TUNING = ClientTuning()

MAPPING = f"""\
# bench_sink: what a command means for the benchmark's two tables.
target: {TARGET}
controllers: [{CONTROLLER}]
tables:
  customers:
    subject_column: subject_id
    controller_column: controller
    recorded_at_column: created_at
    columns: {{name: contact, email: contact, phone: contact}}
    anonymize:
      name: {{constant: "Anonymised customer"}}
      email: hash
      # phone: NULL (the default)
    restricted_column: restricted
  orders:
    subject_column: subject_id
    controller_column: controller
    recorded_at_column: placed_at
    columns: {{order_number: order, amount: order, delivery_address: contact}}
    restricted_column: restricted
"""


def progress(text: str) -> None:
    """One timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def action_of(person: int) -> str:
    """The command's action for person number `person` (see MIX)."""
    return {8: "anonymize", 9: "restrict"}.get(person % 10, "erase")


# -- processes and CPU ----------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGALRM (the run's time bound): unwind, stopping what was started."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut the clean-up short (main restores the handlers).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


# -- the databases --------------------------------------------------------------------------


def bench_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The downstream tables: customers and their orders, indexed by person."""
    customers = sa.Table(
        "customers",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("controller", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("email", sa.String(200)),
        sa.Column("phone", sa.String(40)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restricted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Index("customers_person", "subject_id", "controller"),
    )
    orders = sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(40), nullable=False),
        sa.Column("controller", sa.String(40), nullable=False),
        sa.Column("order_number", sa.String(40)),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("delivery_address", sa.String(200)),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restricted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Index("orders_person", "subject_id", "controller"),
    )
    return customers, orders


def subject_id(person: int) -> str:
    """The subject id of person number `person`."""
    return f"bench-{person:07d}"


def fill_database(url: str, n: int, now: datetime) -> None:
    """Create the two tables in the database at `url` and fill them with `n` people."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        customers, orders = bench_tables(metadata)
        metadata.create_all(engine)
        chunk = 5_000
        for start in range(0, n, chunk):
            people = range(start, min(start + chunk, n))
            with engine.begin() as conn:
                conn.execute(
                    customers.insert(),
                    [
                        {
                            "subject_id": subject_id(p),
                            "controller": CONTROLLER,
                            "name": f"Person {p}",
                            "email": f"person{p}@example.se",
                            "phone": f"+4670{p:07d}",
                            "created_at": now - timedelta(minutes=p),
                        }
                        for p in people
                    ],
                )
                conn.execute(
                    orders.insert(),
                    [
                        {
                            "subject_id": subject_id(p),
                            "controller": CONTROLLER,
                            "order_number": f"O{p:07d}-{k}",
                            "amount": Decimal(100 + p % 900) + Decimal(k) / 4,
                            "delivery_address": f"Gatan {p % 200 + 1}, 41{p % 1000:03d} Göteborg",
                            "placed_at": now - timedelta(minutes=p, seconds=k),
                        }
                        for p in people
                        for k in range(ORDERS_PER_PERSON)
                    ],
                )
    finally:
        engine.dispose()


def table_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of customers and orders (by id), and the applied_commands count."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        customers, orders = bench_tables(metadata)
        with engine.connect() as conn:
            out = {
                t.name: [tuple(r) for r in conn.execute(t.select().order_by(t.c.id))]
                for t in (customers, orders)
            }
            count = conn.execute(sa.text("SELECT count(*) FROM applied_commands")).scalar_one()
            out["applied_commands"] = [(int(count),)]
        return out
    finally:
        engine.dispose()


@dataclass
class Database:
    """One database system: its template, and a way to make fresh copies of it."""

    name: str
    copy: Callable[[str], str]  # copy name -> SQLAlchemy URL of a fresh copy of the template
    server_pids: Callable[[], list[int]] = field(default=lambda: [])  # for CPU; [] in process

    def server_cpu(self) -> float:
        """CPU seconds of the database server's processes so far (0 for SQLite)."""
        return sum(cpu_seconds(pid) for pid in self.server_pids())


def sqlite_database(folder: Path, n: int, now: datetime) -> Database:
    """SQLite files: a template filled once, copied file by file."""
    template = folder / "template.db"
    fill_database(f"sqlite:///{template}", n, now)

    def copy(name: str) -> str:
        path = folder / f"{name}.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return Database("SQLite", copy)


def postgres_database(server_uri: str, pgdata: Path, n: int, now: datetime) -> Database:
    """A PostgreSQL template database, copied with CREATE DATABASE ... TEMPLATE."""
    base = server_uri.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")

    def url(db: str) -> str:
        return str(sa.make_url(base).set(database=db).render_as_string(hide_password=False))

    try:
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE bench_template"))
        fill_database(url("bench_template"), n, now)
    finally:
        admin.dispose()

    def copy(name: str) -> str:
        engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f"CREATE DATABASE bench_{name} TEMPLATE bench_template"))
        finally:
            engine.dispose()
        return url(f"bench_{name}")

    def server_pids() -> list[int]:
        try:
            postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *descendants(postmaster)]

    return Database("PostgreSQL", copy, server_pids)


@contextmanager
def postgres_server(pgdata: Path) -> Iterator[str]:
    """A pgserver PostgreSQL on `pgdata`, stopped on the way out; yields its URI."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

        # pgserver re-exports get_server without declaring it (mypy: attr-defined).
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


# -- the commands ---------------------------------------------------------------------------


def decisions(n: int, issued: datetime) -> list[dict[str, Any]]:
    """One erasure decision per person, as the worker's planner shapes them (see MIX)."""
    reasons = {"erase": "erasure_request", "anonymize": "account_closed"}
    at = issued.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    deadline = (issued + timedelta(days=30)).isoformat(timespec="milliseconds")
    out = []
    for p in range(n):
        action = action_of(p)
        reason = reasons.get(action, "restriction_request")
        out.append(
            {
                "decision": "erasure",
                "command_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-sink/{p}")),
                "controller": CONTROLLER,
                "subject_id": subject_id(p),
                "target": TARGET,
                "action": action,
                "purposes": ["account", "direct_marketing"],
                "categories": ["contact"],
                "reason": reason,
                "rule": f"{CONTROLLER}.rights.{reason}",
                "issued_at": at,
                "deadline": deadline.replace("+00:00", "Z"),
                "due_at": at,
                "request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-sink/request/{p}")),
            }
        )
    return out


def best_us_per_item(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    """Best of SIGN_PASSES passes of `fn` over `items`, in microseconds per item."""
    best = float("inf")
    for _ in range(SIGN_PASSES):
        gc.collect()
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return best / len(items) * 1e6


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Produce (key, value) records to `topic` and wait for the broker to acknowledge all."""
    p = Producer(TUNING.traffic_producer(bootstrap))
    for n, (key, value) in enumerate(records):
        while True:
            try:
                p.produce(topic, value, key=key)
                break
            except BufferError:
                p.poll(0.05)
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(60)
    if left:
        raise RuntimeError(f"{left} commands not acknowledged by the broker within 60 s")


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[bytes]:
    """Every record value of `topic`, read from the beginning to the end of each partition."""
    config = TUNING.reader_consumer(bootstrap, f"bench-sink-reader-{uuid.uuid4().hex[:8]}")
    c = Consumer({**config, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    values: list[bytes] = []
    open_parts = set(range(PARTITIONS))
    deadline = time.monotonic() + timeout
    try:
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.2):
                err = m.error()
                if err is None:
                    values.append(m.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(m.partition())
    finally:
        c.close()
    if open_parts:
        raise RuntimeError(f"{topic}: partitions {sorted(open_parts)} not read to the end")
    return values


# -- the two runs ---------------------------------------------------------------------------


def run_bare(
    db: Database, url: str, mapping: SinkMapping, commands: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """`CommandApplier.apply` over the decoded commands in a plain loop, on a fresh copy."""
    engine = sa.create_engine(url)
    try:
        applier = CommandApplier(engine, mapping)
        apply = applier.apply
        acks: list[dict[str, Any]] = []
        gc.collect()
        t0, cpu0, db0 = time.perf_counter(), time.process_time(), db.server_cpu()
        for command in commands:
            acks.append(apply(command, wall_instant(time.time())))
        seconds = time.perf_counter() - t0
        cpu, db_cpu = time.process_time() - cpu0, db.server_cpu() - db0
    finally:
        engine.dispose()
    n = len(commands)
    wrong = sum(
        1
        for c, a in zip(commands, acks, strict=True)
        if a["status"] != EXPECTED_STATUS[c["action"]]
    )
    return {
        "cps": n / seconds,
        "seconds": seconds,
        "cpu_us": cpu / n * 1e6,
        "db_cpu_us": db_cpu / n * 1e6,
        "statuses": Counter(str(a["status"]) for a in acks),
        "wrong_status": wrong,
    }


def run_sink(
    db: Database,
    url: str,
    mapping: SinkMapping,
    verifier: CommandVerifier,
    broker: EmbeddedBroker,
    prefix: str,
    commands: Sequence[dict[str, Any]],
    limit_s: float,
) -> dict[str, Any]:
    """The Sink, as `privacy-pipeline sink` builds it, until it has acked every command."""
    n = len(commands)
    engine = sa.create_engine(url)
    started: list[float] = []  # perf_counter, process CPU, server CPU, broker CPU
    ended: list[float] = []

    def clock() -> float:
        # The sink reads the wall clock once per command it applies, right before applying:
        # the first call marks the first command handled.
        if not started:
            started.extend(
                (time.perf_counter(), time.process_time(), db.server_cpu(), cpu_seconds(broker.pid))
            )
        return time.time()

    try:
        applier = CommandApplier(engine, mapping)
        sink = Sink(
            Settings(bootstrap=broker.bootstrap, prefix=prefix),
            applier,
            verifier,
            metrics=SinkMetrics(make_registry()),
            wall_clock=clock,
        )
        created = time.monotonic()
        created_perf = time.perf_counter()
        join_limit = created + 60.0  # the group join takes a few seconds

        def stopped() -> bool:
            # Sink.run asks before each step; a step returns once its acks are acknowledged
            # by the broker and its offsets committed.
            handled = sum(sink.stats.applied.values()) + sum(sink.stats.dead_letters.values())
            if handled + sink.stats.skipped >= n:
                ended.extend(
                    (
                        time.perf_counter(),
                        time.process_time(),
                        db.server_cpu(),
                        cpu_seconds(broker.pid),
                    )
                )
                return True
            now = time.monotonic()
            return now > created + limit_s or (not started and now > join_limit)

        gc.collect()
        sink.run(stopped)
        stats = sink.stats
    finally:
        engine.dispose()
    if not started or not ended:
        handled = sum(stats.applied.values())
        raise RuntimeError(f"the sink applied {handled} of {n} commands within {limit_s:.0f} s")
    seconds = ended[0] - started[0]
    decode = AvroSerde().decode
    acks = [decode(v)[1] for v in read_topic(broker.bootstrap, ERASURE_ACKS.named(prefix))]
    action = {c["command_id"]: c["action"] for c in commands}
    wrong = sum(
        1 for a in acks if a["status"] != EXPECTED_STATUS.get(action.get(a["command_id"], ""))
    )
    distinct = len({a["command_id"] for a in acks})
    return {
        "cps": n / seconds,
        "seconds": seconds,
        "startup_s": started[0] - created_perf,
        "cpu_us": (ended[1] - started[1]) / n * 1e6,
        "db_cpu_us": (ended[2] - started[2]) / n * 1e6,
        "broker_cpu_us": (ended[3] - started[3]) / n * 1e6,
        "acks": len(acks),
        "distinct_acks": distinct,
        "statuses": Counter(str(a["status"]) for a in acks),
        "wrong_status": wrong,
        "dead_letters": dict(stats.dead_letters),
        "skipped": stats.skipped,
    }


def compare(
    db: Database,
    mapping: SinkMapping,
    verifier: CommandVerifier,
    broker: EmbeddedBroker,
    prefix: str,
    commands: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Bare loop, then sink, each on its own fresh copy; then the copies' rows compared."""
    progress(f"{db.name}: bare loop, CommandApplier.apply over {len(commands):,} decoded commands")
    bare_url = db.copy("bare")
    bare = run_bare(db, bare_url, mapping, commands)
    progress(f"  {bare['cps']:,.0f} commands/s in {bare['seconds']:.1f} s")
    progress(f"{db.name}: sink on {ERASURE_COMMANDS.named(prefix)}")
    sink_url = db.copy("sink")
    limit = max(120.0, 20 * bare["seconds"])
    sink = run_sink(db, sink_url, mapping, verifier, broker, prefix, commands, limit)
    progress(f"  {sink['cps']:,.0f} commands/s in {sink['seconds']:.1f} s; {sink['acks']:,} acks")
    same = table_rows(bare_url) == table_rows(sink_url)
    return {"bare": bare, "sink": sink, "ratio": sink["cps"] / bare["cps"], "same_rows": same}


# -- main -----------------------------------------------------------------------------------


def command_topics(prefix: str) -> list[Any]:
    """The topics a sink uses: erasure-commands, erasure-acks and dead-letters."""
    used = {ERASURE_COMMANDS.name, ERASURE_ACKS.name, DEAD_LETTERS.name}
    return [spec for spec in topic_specs(prefix, PARTITIONS) if spec.contract_name in used]


def measure(n: int, folder: Path) -> dict[str, Any]:
    """Everything the benchmark measures, with everything it starts stopped on the way out."""
    now = datetime.now(UTC)
    mapping_file = folder / f"{TARGET}.yaml"
    mapping_file.write_text(MAPPING)
    mapping = load_mapping(mapping_file)
    signer = CommandSigner.from_secrets(folder / "secrets")
    verifier = CommandVerifier.from_secrets(folder / "secrets")
    serde = AvroSerde()

    progress(f"{n:,} commands ({MIX}), signed and Avro-encoded")
    plans = decisions(n, now)
    unsigned = [erasure_command(d, POLICY_VERSION) for d in plans]
    records = [
        (
            f"{c['controller']}:{c['subject_id']}".encode(),
            serde.encode(ERASURE_COMMANDS.value_schema, erasure_command(d, POLICY_VERSION, signer)),
        )
        for c, d in zip(unsigned, plans, strict=True)
    ]
    decoded = [serde.decode(value)[1] for _, value in records]
    if not all(verifier.verify(c) for c in decoded):
        raise RuntimeError("a command does not verify")

    progress(f"signatures: best of {SIGN_PASSES} passes over {n:,} commands")
    signatures = {
        "sign_us": best_us_per_item(signer.sign, unsigned),
        "sign_json_us": best_us_per_item(signing_bytes, unsigned),
        "verify_us": best_us_per_item(verifier.verify, decoded),
        "verify_json_us": best_us_per_item(signing_bytes, decoded),
    }
    progress(f"  sign {signatures['sign_us']:.1f} µs, verify {signatures['verify_us']:.1f} µs")

    results: dict[str, Any] = {"signatures": signatures}
    with ExitStack() as stack:
        port = free_port("127.0.0.1", PORTS)
        broker = EmbeddedBroker(port, log_file=folder / "broker.log", own_process_group=True)
        stack.enter_context(broker)
        run = uuid.uuid4().hex[:6]
        prefixes = {"sqlite": f"ss{run}-", "postgres": f"sp{run}-"}
        progress(
            f"broker {broker.bootstrap}; producing the commands under {list(prefixes.values())}"
        )
        for prefix in prefixes.values():
            ensure_topics(broker.bootstrap, command_topics(prefix))
            produce(broker.bootstrap, ERASURE_COMMANDS.named(prefix), records)

        progress(f"SQLite: template database of {n:,} people")
        (folder / "sqlite").mkdir()
        sqlite = sqlite_database(folder / "sqlite", n, now)
        results["sqlite"] = compare(sqlite, mapping, verifier, broker, prefixes["sqlite"], decoded)

        progress(f"PostgreSQL: pgserver, template database of {n:,} people")
        pgdata = folder / "pgdata"
        uri = stack.enter_context(postgres_server(pgdata))
        postgres = postgres_database(uri, pgdata, n, now)
        results["postgres"] = compare(
            postgres, mapping, verifier, broker, prefixes["postgres"], decoded
        )
    return results


def verdict(ok: bool) -> str:
    """How the table marks a target."""
    return "ok" if ok else "MISSED"


def report(n: int, mode: str, load: float, results: dict[str, Any]) -> bool:
    """Print the table and the JSON line; return True when every target and check is met."""
    sig: dict[str, float] = results["signatures"]
    per_event = BENCH_COMMANDS / BENCH_EVENTS
    sign_per_event = sig["sign_us"] * per_event
    share = sign_per_event / ENFORCE_US_PER_EVENT
    ok_share = share <= TARGET_SIGN_SHARE
    rows: list[tuple[str, str, str]] = [
        ("commands", f"{n:,}: {MIX}", ""),
    ]
    summary: dict[str, Any] = {"commands": n}
    all_ok = ok_share
    for key, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        r = results[key]
        bare, sink = r["bare"], r["sink"]
        server = key == "postgres"

        def cpu(run: dict[str, Any], server: bool = server) -> str:
            text = f"CPU {run['cpu_us']:,.0f} µs/command"
            return text + (f", server {run['db_cpu_us']:,.0f} µs" if server else "")

        ok_ratio = r["ratio"] >= TARGET_SINK_RATIO
        ok_acks = (
            sink["acks"] == n
            and sink["distinct_acks"] == n
            and not sink["wrong_status"]
            and not sink["dead_letters"]
        )
        ok_bare = not bare["wrong_status"]
        all_ok = all_ok and ok_ratio and ok_acks and ok_bare and bool(r["same_rows"])
        statuses = ", ".join(f"{s} {c:,}" for s, c in sorted(sink["statuses"].items()))
        rows += [
            (
                f"{label}: bare loop",
                f"{bare['cps']:,.0f} commands/s in {bare['seconds']:.1f} s ({cpu(bare)})",
                "" if ok_bare else f"{bare['wrong_status']} unexpected statuses",
            ),
            (
                f"{label}: sink",
                f"{sink['cps']:,.0f} commands/s in {sink['seconds']:.1f} s ({cpu(sink)}; "
                f"broker {sink['broker_cpu_us']:,.0f} µs)",
                "",
            ),
            (
                "  ratio sink/bare",
                f"{r['ratio']:.2f}",
                f"target >= {TARGET_SINK_RATIO}: {verdict(ok_ratio)}",
            ),
            (
                "  sink CPU over bare CPU",
                f"+{sink['cpu_us'] - bare['cpu_us']:,.0f} µs/command "
                f"(verify {sig['verify_us']:.0f} µs of it)",
                "",
            ),
            (
                "  acks on erasure-acks",
                f"{sink['acks']:,} for {sink['distinct_acks']:,} commands: {statuses}; "
                f"dead letters {sum(sink['dead_letters'].values())}",
                f"each as its action expects: {verdict(ok_acks)}",
            ),
            (
                "  rows afterwards",
                "the same in both copies" if r["same_rows"] else "DIFFERENT",
                verdict(r["same_rows"]),
            ),
            ("  sink startup", f"{sink['startup_s']:.1f} s to the first command (group join)", ""),
        ]
        summary |= {
            f"{key}_bare_cps": round(bare["cps"], 1),
            f"{key}_sink_cps": round(sink["cps"], 1),
            f"{key}_ratio": round(r["ratio"], 3),
            f"{key}_bare_cpu_us_per_command": round(bare["cpu_us"], 1),
            f"{key}_sink_cpu_us_per_command": round(sink["cpu_us"], 1),
            f"{key}_sink_broker_cpu_us_per_command": round(sink["broker_cpu_us"], 1),
            f"{key}_acks": sink["acks"],
            f"{key}_acks_ok": ok_acks,
            f"{key}_same_rows": r["same_rows"],
        }
        if server:
            summary |= {
                f"{key}_bare_server_cpu_us_per_command": round(bare["db_cpu_us"], 1),
                f"{key}_sink_server_cpu_us_per_command": round(sink["db_cpu_us"], 1),
            }
    rows += [
        (
            "verify (sink)",
            f"{sig['verify_us']:.1f} µs/command (canonical JSON {sig['verify_json_us']:.1f} µs)",
            "",
        ),
        (
            "sign (worker)",
            f"{sig['sign_us']:.1f} µs/command (canonical JSON {sig['sign_json_us']:.1f} µs)",
            "",
        ),
        (
            "  per event",
            f"{sig['sign_us']:.1f} µs x {BENCH_COMMANDS:,}/{BENCH_EVENTS:,} commands per event "
            f"(make bench) = {sign_per_event:.2f} µs/event",
            "",
        ),
        (
            "  share of enforce",
            f"{share:.1%} of ~{ENFORCE_US_PER_EVENT:.0f} µs/event",
            f"target <= {TARGET_SIGN_SHARE:.0%} with the tracker: signing {verdict(ok_share)}; "
            "the tracker is not measured here (it runs in enforce: see make bench)",
        ),
    ]
    summary |= {
        "verify_us_per_command": round(sig["verify_us"], 2),
        "sign_us_per_command": round(sig["sign_us"], 2),
        "commands_per_event": round(per_event, 5),
        "sign_us_per_event": round(sign_per_event, 3),
        "enforce_us_per_event": ENFORCE_US_PER_EVENT,
        "sign_share_of_enforce_pct": round(share * 100, 2),
        "tracker_measured": False,
        "load_average": round(load, 2),
        "mode": mode,
    }
    width = max(len(name) for name, _, _ in rows)
    print(
        f"\nbench_sink ({mode}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs, load average at start {load:.2f}"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}  {value}" + (f"   [{note}]" if note else ""))
    print(json.dumps(summary))
    return all_ok


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the benchmark, print the table; the exit status."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=None, help="commands (default 20000)")
    ap.add_argument("--quick", action="store_true", help="2,000 commands")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    n = args.commands or (2_000 if args.quick else 20_000)
    if n < 1:
        ap.error("--commands must be at least 1")

    load = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    progress(f"{os.cpu_count()} CPUs, load average {load:.2f}; working in {folder}")
    if load > 0.5:
        progress("  WARNING: the machine is busy; figures will be lower than on an idle one")
    # A bound on the whole run: each of its four runs takes about 8 ms a command on 2 cores
    # (SQLite and PostgreSQL both wait for an fsync per transaction).
    limit_s = int(300 + n * 0.1)
    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    handlers = {sig: signal.signal(sig, _interrupt) for sig in stops}
    signal.alarm(limit_s)
    try:
        results = measure(n, folder)
    except Interrupted as exc:
        limit = f" (the run's limit, {limit_s} s)" if str(exc) == "SIGALRM" else ""
        progress(f"stopped by {exc}{limit}; broker and PostgreSQL stopped")
        return 130
    finally:
        signal.alarm(0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if args.keep:
            progress(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    mode = "custom" if args.commands else "quick" if args.quick else "default"
    ok = report(n, mode, load, results)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
