"""Deletion canaries through the command line a user runs: `run --canary-every`, two sinks
on SQLite, the embedded broker.

The controller of seed 004 (`unnamed004`) sends a customer's contact data to two
recipients, `registers` and `subcontractors`; an erasure request erases it from both.
Here both run a sink whose database materialises the tagged customer records, as a
downstream service would, so a canary's erasure has real rows to remove: this test
checks `done` (rows changed), not `not_found`. The other four controllers have no
sinks: their canaries go unanswered, are escalated (short --ack-timeout), and must be
counted as failed, never as erased.
"""

from __future__ import annotations

import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from worker_process import (
    SERDE,
    TUNING,
    MakeTopics,
    Readers,
    StartSink,
    StartWorker,
    cli,
    customer,
    pick_port,
    request,
    send_raw,
    write_events,
)

from privacy_pipeline.streams.canary import CANARY_HEADER
from privacy_pipeline.streams.serde import event_to_avro

CONTROLLER = "unnamed004"
TARGETS = ("registers", "subcontractors")
REFUSED = "reserved_subject_id"
PERSON = "p-0001"  # a real person in both databases: no canary may touch her
MAPPING = """\
target: {target}
controllers: [unnamed004]
tables:
  people:
    subject_column: subject_id
    columns:
      name: contact
      email: contact
"""


def downstream(tmp_path: Path, target: str) -> tuple[sa.Engine, str, Path]:
    """A target's database with one real person in it, and its sink mapping."""
    url = f"sqlite:///{tmp_path / f'{target}.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (subject_id TEXT, name TEXT, email TEXT)"))
        conn.execute(
            sa.text("INSERT INTO people VALUES (:s, 'Person', 'p@example.se')"), {"s": PERSON}
        )
    mapping = tmp_path / f"{target}.yaml"
    mapping.write_text(MAPPING.format(target=target))
    return engine, url, mapping


def people(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {
            r[0]: tuple(r[1:])
            for r in conn.execute(sa.text("SELECT subject_id, name, email FROM people"))
        }


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's metrics endpoint, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - a local test URL
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def canary_record_with_header(broker: str, topic: str) -> tuple[bytes, bytes, bytes]:
    """(key, value, canary signature) of the first canary record on *topic*."""
    consumer = Consumer(TUNING.reader_consumer(broker, f"canary-copy-{time.monotonic_ns()}"))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(parts)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            headers = dict(msg.headers() or [])
            if CANARY_HEADER in headers:
                return msg.key() or b"", msg.value() or b"", headers[CANARY_HEADER]
        raise AssertionError(f"no canary record on {topic}")
    finally:
        consumer.close()


def test_canaries_are_erased_from_the_databases_and_timed_and_nobody_can_forge_one(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    run_sink: StartSink,
    readers: Readers,
) -> None:
    make_topics(2)
    port = pick_port()
    worker = start_worker(
        partitions=2,
        metrics_port=port,
        extra_args=["--canary-every", "2s", "--ack-timeout", "2", "--max-attempts", "2"],
    )
    ready = time.monotonic()
    engines = {}
    sinks = []
    for target in TARGETS:  # after the worker: a sink needs its public key
        engine, url, mapping = downstream(tmp_path, target)
        engines[target] = engine
        sinks.append(run_sink(target, url, mapping))

    # The downstream services: every tagged customer record of the controller becomes a
    # row in both databases, as soon as it is read.
    materialised: set[str] = set()
    seen = 0

    def materialise() -> None:
        nonlocal seen
        records = readers["tagged-customers"].values()
        for tagged in records[seen:]:
            if tagged["controller"] != CONTROLLER:
                continue
            fields = tagged["record"]["fields"] or {}
            for engine in engines.values():
                with engine.begin() as conn:
                    conn.execute(
                        sa.text("INSERT INTO people VALUES (:s, :n, :e)"),
                        {"s": tagged["subject_id"], "n": fields["name"], "e": fields["email"]},
                    )
            materialised.add(tagged["subject_id"])
        seen = len(records)

    def erased_canaries() -> dict[str, dict[str, Any]]:
        """The controller's canary requests completed with rows erased in both databases."""
        return {
            s["subject_id"]: s
            for s in readers["privacy-request-status"].values()
            if s["controller"] == CONTROLLER
            and s["status"] == "completed"
            and {t["target"]: t["outcome"] for t in s["targets"]} == dict.fromkeys(TARGETS, "done")
        }

    deadline = ready + 90
    while (
        len(erased_canaries()) < 2
        or sample(
            scrape(port), "privacy_pipeline_canary_erasure_seconds_count", controller=CONTROLLER
        )
        < 2
    ):
        assert time.monotonic() < deadline, (
            f"after 90 s: {len(erased_canaries())} canaries erased, "
            f"{len(materialised)} materialised\n" + worker.log_tail()
        )
        assert all(sink.running() for sink in sinks), [sink.output() for sink in sinks]
        readers.poll(["tagged-customers", "privacy-request-status"])
        materialise()
    observed_within = time.monotonic() - ready
    assert observed_within < 90

    erased = erased_canaries()
    assert all(s.startswith("canary-unnamed004-") for s in erased)
    assert set(erased) <= materialised  # they had rows, and the sinks said they changed them
    for target, engine in engines.items():
        rows = people(engine)
        assert not set(erased) & set(rows), f"{target} still holds an erased canary"
        assert rows[PERSON] == ("Person", "p@example.se")
    for status in erased.values():
        assert status["request_id"] == f"{status['subject_id']}-erasure"
        assert status["right"] == "erasure"

    samples = scrape(port)
    count = sample(samples, "privacy_pipeline_canary_erasure_seconds_count", controller=CONTROLLER)
    assert count >= 2
    # Seconds, not minutes: at least one canary erased within 15 s of its request.
    assert (
        sample(
            samples,
            "privacy_pipeline_canary_erasure_seconds_bucket",
            controller=CONTROLLER,
            le="15.0",
        )
        >= 1
    )
    assert (
        sample(
            samples, "privacy_pipeline_canaries_total", controller=CONTROLLER, outcome="completed"
        )
        == count
    )

    # Nobody answers rego's commands: after two attempts (2 s, then 4 s) they are
    # escalated and the request fails. That is counted as failed, never as erased.
    deadline = time.monotonic() + 60
    while (
        sample(scrape(port), "privacy_pipeline_canaries_total", controller="rego", outcome="failed")
        < 1
    ):
        assert time.monotonic() < deadline, "rego's unanswered canary never failed"
        time.sleep(0.5)
    samples = scrape(port)
    assert sample(samples, "privacy_pipeline_canary_erasure_seconds_count", controller="rego") == 0
    assert (
        sample(samples, "privacy_pipeline_canaries_total", controller="rego", outcome="completed")
        == 0
    )

    # Forgeries: a producer's person under a canary id, an erasure request for a planted
    # canary, and a copy of a real canary's signature on other bytes.
    planted = sorted(erased)[0]
    now = datetime.now(UTC)
    forged_person = customer(CONTROLLER, "canary-unnamed004-forged-1", now)
    forged_request = request(CONTROLLER, planted, now, "erasure")
    # `produce` refuses canary ids up front; any other Kafka client can still send them.
    refused_by_produce = cli(
        "produce",
        "--broker",
        broker,
        "--prefix",
        topic_prefix,
        str(write_events(tmp_path / "forged.jsonl", [forged_person])),
    )
    assert refused_by_produce.returncode == 1
    assert "the prefix 'canary-' is reserved" in refused_by_produce.stderr
    for topic, event in (("customers", forged_person), ("privacy-requests", forged_request)):
        key_of = f"{event['controller']}:{event['subject_id']}".encode()
        send_raw(broker, topic_prefix + topic, [(key_of, SERDE.encode(*event_to_avro(event)))])
    key, value, signature = canary_record_with_header(broker, topic_prefix + "customers")
    tampered = value.replace(b"@canary.invalid", b"@canary.invalix")
    assert tampered != value
    producer = Producer(TUNING.producer(broker))
    producer.produce(
        topic_prefix + "customers", tampered, key=key, headers=[(CANARY_HEADER, signature)]
    )
    assert producer.flush(10) == 0
    # A record without the header at all (as any client could send it).
    send_raw(broker, topic_prefix + "customers", [(key, tampered)])

    readers.wait(
        ["dead-letters"],
        lambda: (
            sum(d["reason"] == "reserved_subject_id" for d in readers["dead-letters"].values()) >= 4
        ),
        timeout=30,
        what="the four forgeries in dead letters",
        settle=2.0,
    )
    refused = [d for d in readers["dead-letters"].values() if d["reason"] == "reserved_subject_id"]
    assert sorted((d["source_topic"], d["key"]) for d in refused) == sorted(
        [
            ("customers", b"unnamed004:canary-unnamed004-forged-1"),
            ("privacy-requests", f"unnamed004:{planted}".encode()),
            ("customers", key),
            ("customers", key),
        ]
    )
    assert all("reserved for the pipeline's deletion canaries" in d["error"] for d in refused)
    # No other dead letter: every canary the worker signed was taken.
    assert {d["reason"] for d in readers["dead-letters"].values()} == {"reserved_subject_id"}
    # Ingest, a child process, forwards its counts about every half second.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        counted = {
            topic: sample(
                samples, "privacy_pipeline_dead_letters_total", topic=topic, reason=REFUSED
            )
            for topic in ("customers", "privacy-requests")
        }
        if counted == {"customers": 3, "privacy-requests": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counted == {"customers": 3, "privacy-requests": 1}

    # SIGTERM stops the worker, canaries and all, cleanly.
    assert worker.stop() == 0
    assert "canaries stopped by an unexpected error" not in worker.log()
