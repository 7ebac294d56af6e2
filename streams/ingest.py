"""Batched ingest: input topics in, subject-log micro-batches and dead letters out.

A plain confluent-kafka loop (faust pays ~250 µs per Kafka record; this pays a few µs):
consume a batch, decode and validate each record, send bad ones to `dead-letters` with
the reason and where they came from, group good ones by subject-log partition (murmur2
of `controller:subject_id`) into one `SubjectBatch` record per partition, add a tick to
every partition when the tick interval has passed, and commit the input offsets only
once the subject log has acknowledged the writes.

Subject ids with the reserved canary prefix (``canary-``) are accepted only on records
the worker signed as deletion canaries (`streams/canary.py`); any other such record is
dead-lettered as ``reserved_subject_id``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from privacy_pipeline.processors.events import EventError, parse_event
from privacy_pipeline.processors.instants import InstantError, parse_instant

from .canary import canary_verifier_from_env, refuse_reserved
from .records import subject_partition, wall_instant
from .serde import AvroSerde, RecordError
from .settings import ClientTuning
from .signing import CommandVerifier
from .subject_batch import TICKER_SOURCE, SubjectBatchWriter, SubjectEntry
from .topics import DEAD_LETTERS, ERASURE_ACKS, INPUT_TOPICS, SUBJECT_LOG, topic_schema

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """What ingest has done so far (also the source of its metrics)."""

    events: int = 0
    dead_letters: int = 0
    batches: int = 0
    ticks: int = 0
    acks: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def _occurred(item: tuple[Any, SubjectEntry]) -> Any:
    return item[0]


class DeliveryError(RuntimeError):
    """The subject log or dead-letter topic did not acknowledge a write."""


class Ingest:
    """One ingest loop; `step()` handles one consumed batch, `run()` loops until stopped."""

    def __init__(
        self,
        bootstrap: str,
        controllers: Collection[str],
        partitions: int,
        prefix: str = "",
        group_id: str = "privacy-pipeline-ingest",
        tick_interval: float = 1.0,
        batch_size: int = 2000,
        commit_interval: float = 0.5,
        serde: AvroSerde | None = None,
        tuning: ClientTuning | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_dead_letter: Callable[[str, str], None] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
        canary_verifier: CommandVerifier | None = None,
    ) -> None:
        self.prefix = prefix
        # Canaries are signed with the worker's command-signing key. Without a verifier
        # given, the key of the secrets folder `run` exports (the worker spawns us); with
        # no key at all, every reserved subject id is refused.
        self.canary_verifier = canary_verifier or canary_verifier_from_env()
        self.partitions = partitions
        self.controllers = frozenset(controllers)
        self.tick_interval = tick_interval
        self.batch_size = batch_size
        self.serde = serde or AvroSerde()
        self.batches = SubjectBatchWriter(self.serde)
        self.wall_clock = wall_clock
        self.on_dead_letter = on_dead_letter
        self.on_event = on_event
        self.ticker_id = f"ingest-{uuid.uuid4().hex[:8]}"
        self.stats = IngestStats()
        self._last_tick = 0.0
        self.commit_interval = commit_interval
        self._last_commit = 0.0
        self._uncommitted = False
        self._failed: list[str] = []
        self.subject_log = SUBJECT_LOG.named(prefix)
        self.dead_letters = DEAD_LETTERS.named(prefix)
        tuning = tuning or ClientTuning()
        self.consumer = Consumer(tuning.ingest_consumer(bootstrap, group_id))
        self.producer = Producer(tuning.subject_log_producer(bootstrap))
        # Ticks start once the input partitions are ours: a tick in the subject log then
        # means ingest is live (the demo waits for the first micro-batch before producing).
        self.assigned = False
        # The targets' acks join the subject log too: the command tracker runs in order
        # with the person's events, on the same clock, and its state is theirs.
        topics = [prefix + t for t in (*INPUT_TOPICS, ERASURE_ACKS.name)]
        self.consumer.subscribe(topics, on_assign=self._on_assign)

    def close(self) -> None:
        """Flush, commit what was written, and leave the group."""
        self.producer.flush(10)
        with contextlib.suppress(KafkaException):
            self.consumer.commit(asynchronous=False)
        self.consumer.close()

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set."""
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def step(self, timeout: float = 0.02) -> int:
        """Consume one batch, write it on, commit; return the number of records consumed."""
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout)
        items: dict[int, list[tuple[Any, SubjectEntry]]] = {}
        consumed = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error on %s: %s", msg.topic(), err.str())
                continue
            consumed += 1
            self._accept(msg, items)
        for part_items in items.values():
            # Events of one person arrive on several topics; within a micro-batch they are
            # put in the order they happened, so a withdrawal precedes later clicks.
            part_items.sort(key=_occurred)
        entries = {p: [entry for _, entry in part] for p, part in items.items()}
        now = self.wall_clock()
        if self.assigned and self.tick_interval > 0 and now - self._last_tick >= self.tick_interval:
            self._last_tick = now
            self._tick(now, entries)
        if not entries and not consumed:
            return 0
        for partition, part_entries in entries.items():
            value = self.batches.encode(
                f"{self.ticker_id}-{self.stats.batches}-{partition}", int(now * 1000), part_entries
            )
            self.producer.produce(
                self.subject_log,
                value,
                key=f"batch-{partition}".encode(),
                partition=partition,
                on_delivery=self._delivered,
            )
            self.stats.batches += 1
        self.producer.flush(30)
        if self._failed:
            failed, self._failed = self._failed, []
            raise DeliveryError(f"subject-log writes failed: {'; '.join(failed[:3])}")
        if consumed:
            self._uncommitted = True
        if self._uncommitted and now - self._last_commit >= self.commit_interval:
            # Asynchronous, and at most every commit_interval: the writes are already
            # acknowledged, so a lost or late commit only means a redelivery, which the
            # enforce step deduplicates; a synchronous commit per step cost the embedded
            # broker ~230 µs of CPU and every step a round trip.
            self.consumer.commit(asynchronous=True)
            self._uncommitted = False
            self._last_commit = now
        return consumed

    def _on_assign(self, _consumer: Consumer, partitions: list[Any]) -> None:
        self.assigned = True

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def _tick(self, now: float, entries: dict[int, list[SubjectEntry]]) -> None:
        at = wall_instant(now)
        for partition in range(self.partitions):
            tick = {"partition": partition, "at": at, "ticker_id": self.ticker_id}
            entries.setdefault(partition, []).append(
                SubjectEntry(
                    "",
                    TICKER_SOURCE,
                    partition,
                    -1,
                    int(now * 1000),
                    "Tick",
                    self.batches.encode_body("Tick", tick),
                )
            )
        self.stats.ticks += 1

    def _accept(self, msg: Message, items: dict[int, list[tuple[Any, SubjectEntry]]]) -> None:
        topic = msg.topic() or ""
        contract = topic.removeprefix(self.prefix)
        if contract == ERASURE_ACKS.name:
            self._accept_ack(msg, items)
            return
        value = msg.value()
        try:
            if value is None:
                raise RecordError("undecodable", "record has no value")
            name, record = self.serde.decode(value)
            expected = topic_schema(contract) if contract in INPUT_TOPICS else ""
            if name != expected:
                raise RecordError("wrong_schema", f"a {name} record does not belong on {contract}")
            event = parse_event(record)  # Avro's None fields read as absent
            if event.controller not in self.controllers:
                raise EventError("controller", "unknown controller (no policy pack)")
            if refuse_reserved(
                event.subject_id, self.canary_verifier, contract, value, msg.headers()
            ):
                self._dead(
                    msg,
                    contract,
                    "reserved_subject_id",
                    "field 'subject_id': the prefix 'canary-' is reserved for the pipeline's "
                    "deletion canaries, and this record carries no valid canary signature",
                )
                return
        except RecordError as exc:
            self._dead(msg, contract, exc.reason, str(exc))
            return
        except EventError as exc:
            reason = "unknown_controller" if exc.field == "controller" else "invalid_event"
            self._dead(msg, contract, reason, str(exc))
            return
        key = f"{event.controller}:{event.subject_id}"
        _, stamp = msg.timestamp()
        entry = SubjectEntry(
            key,
            contract,
            msg.partition() or 0,
            msg.offset() or 0,
            stamp if stamp > 0 else int(self.wall_clock() * 1000),
            name,
            self.batches.body(value, name, record),
        )
        items.setdefault(subject_partition(key, self.partitions), []).append(
            (event.occurred_at, entry)
        )
        self.stats.events += 1
        if self.on_event is not None:
            self.on_event(contract, event.type, event.controller)

    def _accept_ack(self, msg: Message, items: dict[int, list[tuple[Any, SubjectEntry]]]) -> None:
        """An ack goes to the subject-log partition of the command it answers: the sink
        wrote it to the command's partition, and all these topics are co-partitioned."""
        value = msg.value()
        try:
            if value is None:
                raise RecordError("undecodable", "record has no value")
            name, record = self.serde.decode(value)
            if name != ERASURE_ACKS.value_schema:
                raise RecordError("wrong_schema", f"a {name} record on {ERASURE_ACKS.name}")
            answered = parse_instant(str(record["completed_at"]))
        except RecordError as exc:
            self._dead(msg, ERASURE_ACKS.name, exc.reason, str(exc))
            return
        except InstantError:
            self._dead(msg, ERASURE_ACKS.name, "invalid_event", "completed_at: not an instant")
            return
        _, stamp = msg.timestamp()
        entry = SubjectEntry(
            "",
            ERASURE_ACKS.name,
            msg.partition() or 0,
            msg.offset() or 0,
            stamp if stamp > 0 else int(self.wall_clock() * 1000),
            name,
            self.batches.body(value, name, record),
        )
        items.setdefault((msg.partition() or 0) % self.partitions, []).append((answered, entry))
        self.stats.acks += 1

    def _dead(self, msg: Message, topic: str, reason: str, error: str) -> None:
        record = {
            "original": msg.value() or b"",
            "reason": reason,
            "error": error,
            "source_topic": topic,
            "source_partition": msg.partition() or 0,
            "source_offset": msg.offset() or 0,
            "at": wall_instant(self.wall_clock()),
            "key": msg.key(),
        }
        self.producer.produce(
            self.dead_letters,
            self.serde.encode(DEAD_LETTERS.value_schema, record),
            key=msg.key(),
            on_delivery=self._delivered,
        )
        self.stats.dead_letters += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        if self.on_dead_letter is not None:
            self.on_dead_letter(topic, reason)


__all__ = ["DeliveryError", "Ingest", "IngestStats", "KafkaException"]
