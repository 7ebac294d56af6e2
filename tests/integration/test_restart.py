"""Crash and restart: a worker killed with SIGKILL loses no opt-out and changes no decision.

The subject state lives in a faust table whose changelog holds one record per subject-log
micro-batch. The embedded broker answers ListOffsets "latest" with the start of the last
producer batch (+1), so when that batch holds several records a plain faust recovery stops
short of them; the worker fences every changelog partition before it starts (`prepare`)
so that recovery reads everything. The scenario makes that case happen: enforce is stalled
(SIGSTOP) while ingest goes on, so it works off a backlog of small micro-batches, the
opt-outs among the last, and its last changelog records leave in multi-record batches.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from worker_process import (
    INPUT_TOPIC_OF,
    SERDE,
    TAGGED_TOPIC_OF,
    TAGGED_TOPICS,
    Readers,
    TopicReader,
    WorkerProcess,
    alive,
    click,
    consent,
    customer,
    evaluate,
    expected_command,
    order,
    pipeline_topics,
    policy_versions,
    request,
    send_raw,
    strip_signature,
    write_events,
)

from privacy_pipeline.streams.serde import event_to_avro
from privacy_pipeline.streams.settings import Settings
from privacy_pipeline.streams.worker import FENCE_KEY, WorkerConfig, prepare

Event = dict[str, Any]
CONTROLLERS = ("inrego", "rego", "rejoin", "iret", "unnamed004")
PER_CONTROLLER = 40
OPTED_OUT = 7  # subject index, per controller, that opts out of direct marketing
ERASED = (10, 11)  # subject indexes, per controller, that request erasure


@pytest.fixture
def make_topics(broker: str, topic_prefix: str) -> Iterator[Callable[[int], None]]:
    """Create every pipeline topic of this test's prefix with N partitions; afterwards,
    delete every topic of the prefix (the worker's too)."""
    with contextlib.ExitStack() as stack:
        yield lambda partitions: stack.enter_context(
            pipeline_topics(broker, topic_prefix, partitions)
        )


@pytest.fixture
def workers(make_topics: Callable[[int], None]) -> Iterator[list[WorkerProcess]]:
    """Workers the test started; all stopped (before the topics are deleted)."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.cleanup()


@pytest.fixture
def readers(broker: str, topic_prefix: str) -> Iterator[Readers]:
    r = Readers(broker, topic_prefix)
    yield r
    r.close()


def subject(controller: str, i: int) -> str:
    return f"{controller}-s{i:03d}"


def scenario(start: datetime) -> tuple[list[list[Event]], list[list[Event]], list[list[Event]]]:
    """(first-half chunks, first-half burst, second-half chunks).

    Each chunk holds events of one input topic, in time order, and every chunk is later
    than the one before: however ingest splits topics into micro-batches, each subject-log
    partition sees the events in time order, as `evaluate` does. The first half is 2,040
    events of 200 subjects; its burst is many small chunks: orders, the opt-outs (inrego's
    last), then consent renewals that send no decision."""
    clock = [start]

    def at(step: int = 4) -> datetime:
        clock[0] += timedelta(seconds=step)
        return clock[0]

    everyone = [(c, i) for i in range(PER_CONTROLLER) for c in CONTROLLERS]

    def role(c: str, i: int) -> str | None:
        if c == "iret" and i % 4 == 0:
            return "prospect"
        if c == "inrego" and i % 5 == 0:
            return "contact_person"
        return None

    first: list[list[Event]] = [
        [customer(c, subject(c, i), at(), role=role(c, i)) for c, i in everyone],
        [
            consent(c, subject(c, i), at(), "grant")
            for c, i in everyone
            if c in ("rego", "unnamed004")
        ],
        [click(c, subject(c, i), at(), url=f"/p/{k}") for k in range(3) for c, i in everyone],
        [order(c, subject(c, i), at(), order_id=f"O-{k}") for k in (1, 2) for c, i in everyone],
        [order(c, subject(c, i), at(), "invoiced", order_id="O-1") for c, i in everyone],
        [
            customer(c, subject(c, i), at(), "contacted" if i % 3 == 0 else "updated")
            for c, i in everyone
        ],
        [click(c, subject(c, i), at(), url="/kampanj") for c, i in everyone],
    ]
    third_orders = [order(c, subject(c, i), at(), order_id="O-3") for c, i in everyone[:115]]
    burst: list[list[Event]] = [third_orders[k : k + 5] for k in range(0, 115, 5)]
    burst += [
        [consent("rejoin", subject("rejoin", OPTED_OUT), at(), "object")],
        [consent("rego", subject("rego", OPTED_OUT), at(), "withdraw")],
        [consent("iret", subject("iret", OPTED_OUT), at(), "object")],
        [consent("unnamed004", subject("unnamed004", OPTED_OUT), at(), "withdraw")],
        [consent("inrego", subject("inrego", OPTED_OUT), at(), "object")],
    ]
    # consents renewed, no decision to send: enforce works these off in microseconds
    renewals = [(c, i) for c, i in everyone if c in ("rego", "unnamed004") and i != OPTED_OUT]
    burst += [
        [consent(c, subject(c, i), at(), "grant") for c, i in renewals[k : k + 2]]
        for k in range(0, 40, 2)
    ]
    assert sum(map(len, first)) + sum(map(len, burst)) == 2040

    clock[0] += timedelta(minutes=5)
    opted = [(c, OPTED_OUT) for c in CONTROLLERS]
    others = [(c, i) for c, i in everyone if i not in (OPTED_OUT, *ERASED)][:45]
    later = opted + others
    second: list[list[Event]] = [
        [order(c, subject(c, i), at(10), order_id="O-4") for c, i in later],
        [customer(c, subject(c, i), at(10), "updated") for c, i in later],
        [click(c, subject(c, i), at(10), url="/nyheter") for c, i in later],
        [request(c, subject(c, i), at(10), "erasure") for i in ERASED for c in CONTROLLERS]
        + [
            request("inrego", subject("inrego", OPTED_OUT), at(10), "access"),
            request("rego", subject("rego", 12), at(10), "access"),
        ],
        [order(c, subject(c, i), at(10), order_id="O-5") for c, i in opted],
    ]
    return first, burst, second


def send_events(broker: str, prefix: str, events: list[Event]) -> None:
    """One producer batch per topic: keyed controller:subject_id, murmur2 placement."""
    by_topic: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
    for e in events:
        name, record = event_to_avro(e)
        key = f"{e['controller']}:{e['subject_id']}".encode()
        by_topic[INPUT_TOPIC_OF[e["type"]]].append((key, SERDE.encode(name, record)))
    for topic, records in by_topic.items():
        send_raw(broker, prefix + topic, records)


class Progress:
    """What the subject log and the state changelog hold so far."""

    def __init__(self, readers: Readers, changelog: str) -> None:
        self.readers = readers
        self.changelog = changelog

    def items(self) -> int:
        return sum(len(r.value["items"]) for r in self.readers["subject-log"].records if r.value)

    def batches(self) -> int:
        return len(self.readers["subject-log"].records)

    def changes(self) -> int:
        """Changelog records other than fences."""
        return sum(1 for r in self.readers[self.changelog].records if r.key != FENCE_KEY and r.raw)

    def wait(self, events: int, timeout: float = 60) -> None:
        """Until the subject log holds `events` events and every micro-batch of it has its
        state changes in the changelog (enforce is done with it)."""
        self.readers.wait(
            ["subject-log", self.changelog],
            lambda: self.items() >= events and self.changes() >= self.batches(),
            timeout=timeout,
            what=f"{events} events through ingest and enforce",
        )


def true_ends(reader: TopicReader) -> dict[int, int]:
    """partition -> the offset after its last record read."""
    ends: dict[int, int] = {}
    for rec in reader.records:
        ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
    return ends


def misreported_ends(broker: str, reader: TopicReader) -> dict[int, tuple[int, int]]:
    """partition -> (end the broker reports, true end) where they differ: the recovery
    of such a partition stops early unless the end is fenced."""
    true_end = true_ends(reader)
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "watermarks"})
    try:
        out = {}
        for partition, end in sorted(true_end.items()):
            tp = TopicPartition(reader.topic, partition)
            _, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            if high != end:
                out[partition] = (high, end)
        return out
    finally:
        consumer.close()


HIGHWATER_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|\s*$")


def recovery_highwaters(log: str) -> dict[int, int]:
    """partition -> the last changelog offset faust's first active recovery read up to,
    from its "Highwater - Active" log table."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "Highwater - Active" in line)
    out: dict[int, int] = {}
    for line in lines[start + 1 :]:
        if not line.startswith(("|", "+")):
            break
        row = HIGHWATER_ROW.match(line)
        if row is not None:
            out[int(row.group(2))] = int(row.group(3))
    return out


def live_by_id(
    readers: Readers, topics: tuple[str, ...], id_field: str
) -> dict[str, dict[str, Any]]:
    """Live records by id; a record seen twice (redelivery) must be byte-identical."""
    raw: dict[str, tuple[bytes | None, bytes | None, str]] = {}
    out: dict[str, dict[str, Any]] = {}
    for topic in topics:
        for rec in readers[topic].records:
            assert rec.value is not None, f"undecodable record on {topic}"
            rid = rec.value[id_field]
            if rid in raw:
                assert raw[rid] == (rec.key, rec.raw, topic), f"{rid} redelivered different"
                continue
            raw[rid] = (rec.key, rec.raw, topic)
            out[rid] = rec.value
    return out


def test_kill_9_and_restart_lose_no_opt_out_and_change_no_decision(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: Callable[[int], None],
    workers: list[WorkerProcess],
    readers: Readers,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    first, burst, second = scenario(start)
    everything = [e for chunk in [*first, *burst, *second] for e in chunk]
    path = write_events(tmp_path / "scenario.jsonl", everything)
    assert [e["occurred_at"] for e in everything] == sorted(e["occurred_at"] for e in everything)
    offline = [json.loads(line) for line in evaluate(path)]
    assert not [d for d in offline if d["decision"] == "reject"]
    want_tags = {d["event_id"]: d for d in offline if d["decision"] == "tag"}
    want_commands = {d["command_id"]: d for d in offline if d["decision"] == "erasure"}
    by_id = {e["event_id"]: e for e in everything}
    versions = policy_versions()
    first_subjects = {(e["controller"], e["subject_id"]) for c in [*first, *burst] for e in c}
    assert len(first_subjects) == 200

    changelog = WorkerConfig(Settings(bootstrap=broker, prefix=topic_prefix)).changelog_topic
    changelog = changelog.removeprefix(topic_prefix)  # Readers add the prefix
    progress = Progress(readers, changelog)
    make_topics(2)

    def start_worker(name: str) -> WorkerProcess:
        # Compared with evaluate, which has no tracker; the scenario's event times jump
        # years, and without ticks the tracker's waits would run out on them.
        worker = WorkerProcess(
            broker,
            topic_prefix,
            tmp_path,
            partitions=2,
            tick_interval=0,
            name=name,
            extra_args=["--ack-timeout", "0"],
        )
        workers.append(worker)
        return worker.start().wait_ready()

    first_worker = start_worker("worker-before-crash")
    assert first_worker.recovery() == (0, 0)
    sent = 0
    for chunk in first:
        send_events(broker, topic_prefix, chunk)
        sent += len(chunk)
        progress.wait(sent)

    # The burst while enforce stalls (SIGSTOP; ingest, a child process, runs on): the
    # subject log fills with small micro-batches that enforce then works off back to
    # back, so its last changelog records leave in multi-record producer batches, whose
    # end the embedded broker misreports. Real causes: load, a GC pause, a slow host.
    batches_before = progress.batches()
    first_worker.pause()
    try:
        for chunk in burst:
            send_events(broker, topic_prefix, chunk)
            sent += len(chunk)
            time.sleep(0.06)
        readers.wait(["subject-log"], lambda: progress.items() >= sent, 30, "the burst")
    finally:
        first_worker.resume()
    progress.wait(sent)
    assert progress.batches() - batches_before >= 10, "the burst made few micro-batches"
    changes_before_crash = progress.changes()
    ends_before_crash = true_ends(readers[changelog])
    misreported = misreported_ends(broker, readers[changelog])
    print(f"changelog partitions whose end the broker misreports: {misreported}")

    first_worker.kill()  # SIGKILL, the worker and its ingest process

    second_worker = start_worker("worker-after-crash")
    # (c) recovery read the changelog up to its last record before the crash (faust's
    # "highwater" is the last offset it reads) ...
    highwaters = recovery_highwaters(second_worker.log())
    short = {
        p: (highwaters.get(p), end - 1)
        for p, end in ends_before_crash.items()
        if highwaters.get(p, -1) < end - 1
    }
    assert short == {}, f"recovery stops short (highwater, last offset): {short}, {misreported}"
    # ... and restored every subject of the first half from every changelog record
    assert second_worker.recovery() == (changes_before_crash, len(first_subjects))

    for chunk in second:
        send_events(broker, topic_prefix, chunk)
        sent += len(chunk)
        progress.wait(sent)

    def complete() -> bool:
        tagged = {r.value["event_id"] for t in TAGGED_TOPICS for r in readers[t].records if r.value}
        issued = {r.value["command_id"] for r in readers["erasure-commands"].records if r.value}
        return len(tagged) >= len(want_tags) and len(issued) >= len(want_commands)

    readers.wait(
        [*TAGGED_TOPICS, "erasure-commands"],
        complete,
        timeout=60,
        what="every decision of the scenario",
        settle=1.5,
    )
    tags = live_by_id(readers, TAGGED_TOPICS, "event_id")
    commands = live_by_id(readers, ("erasure-commands",), "command_id")

    # (a) the opt-out holds on every later record of each opted-out subject
    reason = {"inrego": "objection", "rejoin": "objection", "iret": "objection"}
    for c in CONTROLLERS:
        later = [
            e
            for chunk in second
            for e in chunk
            if e["subject_id"] == subject(c, OPTED_OUT) and e["type"] in TAGGED_TOPIC_OF
        ]
        assert len(later) == 4
        for e in later:
            tag = tags[e["event_id"]]
            assert "direct_marketing" not in {p["purpose"] for p in tag["purposes"]}, tag
            # records that carry direct marketing unless the person opted out
            if e["type"] == "customer" or (e["type"] == "order" and c in ("inrego", "rejoin")):
                assert {
                    "purpose": "direct_marketing",
                    "reason": reason.get(c, "consent_withdrawn"),
                } in tag["suppressed"], tag

    # (b) every decision, deduplicated, exactly evaluate's of the whole scenario
    assert set(tags) == set(want_tags)
    for event_id, decision in want_tags.items():
        event = by_id[event_id]
        assert tags[event_id] == {
            **decision,
            "type": event["type"],
            "policy_version": versions[event["controller"]],
            "record": event_to_avro(event)[1],
        }
    assert set(commands) == set(want_commands)
    for command_id, decision in want_commands.items():
        assert strip_signature(commands[command_id]) == expected_command(decision, versions)
    assert {d["reason"] for d in want_commands.values()} >= {"objection", "erasure_request"}
    assert readers["dead-letters"].poll(0.5) == 0


def test_kill_9_of_the_worker_leaves_no_ingest_process_behind(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: Callable[[int], None],
    workers: list[WorkerProcess],
) -> None:
    """A crashed worker's ingest child must not live on, consuming inputs for nobody."""
    make_topics(2)
    worker = WorkerProcess(broker, topic_prefix, tmp_path, partitions=2, tick_interval=0)
    workers.append(worker)
    worker.start().wait_ready()
    spawned = list(worker.children)
    assert spawned, "the worker runs ingest in a child process"

    worker.kill(children=False)  # SIGKILL the worker's main process only

    deadline = time.monotonic() + 10
    while any(alive(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in spawned if alive(p)]
    assert not left, f"processes of the killed worker still running: {left}"


def test_the_fence_makes_the_end_of_every_changelog_partition_exact(
    broker: str, topic_prefix: str, make_topics: Callable[[int], None]
) -> None:
    """What recovery relies on, without a worker: after `prepare` (run at every start),
    the broker reports the true end of every changelog partition, even when the last
    producer batch before it held several records (which the embedded broker misreports)."""
    make_topics(2)
    config = WorkerConfig(Settings(bootstrap=broker, prefix=topic_prefix), partitions=2)
    prepare(config)
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 200})
    for partition in (0, 1):
        for i in range(5):
            producer.produce(config.changelog_topic, b"{}", key=b"%d" % i, partition=partition)
    assert producer.flush(30) == 0
    reader = TopicReader(broker, config.changelog_topic)
    try:
        reader.wait(12)
        before = misreported_ends(broker, reader)
        print(f"before the fence, misreported ends: {before}")
        prepare(config)  # as a restarted worker does
        reader.wait(14)
        assert misreported_ends(broker, reader) == {}
        assert [r.key for r in reader.records if r.offset == 6] == [FENCE_KEY, FENCE_KEY]
    finally:
        reader.close()
