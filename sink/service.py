"""The Kafka half of a sink: read the commands for one target, apply them, acknowledge them.

A downstream team embeds :class:`Sink` (or runs ``privacy-pipeline sink``) next to its own
database. For each record on ``erasure-commands``:

1. decode it; a record that is not an ``ErasureCommand`` goes to ``dead-letters``;
2. skip it when it is for another target or controller (every sink reads every command;
   each target has its own consumer group);
3. check its signature with the pipeline's public key; a forgery goes to dead letters;
4. dead-letter it when it names a data category that no table of the mapping holds
   (the mapping and the policy disagree: a person must look, nothing is guessed);
5. apply it in one transaction (:class:`~privacy_pipeline.sink.database.CommandApplier`)
   and send the ack to ``erasure-acks``: keyed by ``command_id`` (no personal data) and
   written to the partition number of the command, so it stays co-partitioned with the
   person's records.

Input offsets are committed only once every ack and dead letter of the batch is
acknowledged by the broker: a sink killed at any point re-reads the commands whose ack
may be lost, and the ``applied_commands`` table makes the second application a no-op
that sends the stored ack again.

:class:`MaterialiserConsumer` is the other half of a downstream service: it reads the
tagged records and writes them to the same tables with a
:class:`~privacy_pipeline.sink.materialise.Materialiser`, committing its offsets once the
rows are committed. :func:`run_together` runs both in one thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from privacy_pipeline.streams.records import subject_ref, wall_instant
from privacy_pipeline.streams.serde import AvroSerde, RecordError
from privacy_pipeline.streams.settings import Settings
from privacy_pipeline.streams.signing import CommandVerifier
from privacy_pipeline.streams.topics import (
    DEAD_LETTERS,
    ERASURE_ACKS,
    ERASURE_COMMANDS,
    TAGGED_CLICKS,
    TAGGED_TOPIC,
)

from .database import CommandApplier, unmapped_categories
from .materialise import Materialiser, MaterialiseStats
from .metrics import SinkMetrics

__all__ = [
    "PATIENT",
    "DeliveryError",
    "MaterialiserConsumer",
    "Sink",
    "SinkStats",
    "run_together",
]

log = logging.getLogger(__name__)

PATIENT: Mapping[str, Any] = {"fetch.wait.max.ms": 500, "fetch.min.bytes": 65536}
"""Consumer settings for a sink that shares a small machine with the pipeline (the demo):
the broker answers a fetch once 64 KiB are there or 500 ms have passed, rather than for
every few records. Commands have deadlines of hours, so half a second is nothing to them;
every fetch the broker need not answer is CPU left for the pipeline."""


class DeliveryError(RuntimeError):
    """An ack or dead letter was not acknowledged by the broker: offsets stay uncommitted."""


@dataclass
class SinkStats:
    """What the sink has done so far, by outcome."""

    applied: dict[str, int] = field(default_factory=dict)  # ack status -> commands
    skipped: int = 0  # commands for other targets or controllers
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason -> records


class Sink:
    """Applies the erasure commands for one target to one database and acknowledges them."""

    def __init__(
        self,
        settings: Settings,
        applier: CommandApplier,
        verifier: CommandVerifier | None,
        *,
        group_id: str | None = None,
        batch_size: int = 500,
        serde: AvroSerde | None = None,
        metrics: SinkMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        """*verifier* None accepts unsigned commands: only for tests and trusted set-ups.
        *consumer_config* overrides settings of the Kafka consumer (see :data:`PATIENT`)."""
        self.applier = applier
        self.target = applier.mapping.target
        self.verifier = verifier
        self.serde = serde or AvroSerde()
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.batch_size = batch_size
        self.stats = SinkStats()
        prefix = settings.prefix
        self.commands_topic = ERASURE_COMMANDS.named(prefix)
        self.acks_topic = ERASURE_ACKS.named(prefix)
        self.dead_letters_topic = DEAD_LETTERS.named(prefix)
        tuning = settings.tuning
        # One group per target: every sink sees every command meant for it.
        group = group_id or f"{prefix}privacy-pipeline-sink-{self.target}"
        config = {**tuning.sink_consumer(settings.broker, group), **(consumer_config or {})}
        self.consumer = Consumer(config)
        self.producer = Producer(tuning.producer(settings.broker, **{"linger.ms": 5}))
        self._failed: list[str] = []
        self.consumer.subscribe([self.commands_topic])

    # -- the loop ---------------------------------------------------------------------

    def run(self, stopped: Callable[[], bool]) -> None:
        """Step until *stopped()* says so; then commit what was acknowledged and leave."""
        try:
            while not stopped():
                self.step()
        finally:
            self.close()

    def step(self, timeout: float = 0.5) -> int:
        """Handle one consumed batch; return how many records it held."""
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout)
        records = [m for m in messages if not self._broker_error(m)]
        for msg in records:
            self._handle(msg)
        if records:
            self._acknowledged()
            _commit(self.consumer)
        return len(records)

    def close(self) -> None:
        """Flush outstanding acks and leave the consumer group."""
        try:
            self._acknowledged()
        finally:
            self.consumer.close()

    # -- one record -------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        value = msg.value()
        try:
            if value is None:
                raise RecordError("undecodable", "record has no value")
            name, command = self.serde.decode(value)
            if name != ERASURE_COMMANDS.value_schema:
                raise RecordError("wrong_schema", f"a {name} record on {ERASURE_COMMANDS.name}")
        except RecordError as exc:
            self._dead(msg, exc.reason, str(exc))
            return
        if not self.applier.concerns(command):
            self.stats.skipped += 1
            return
        if self.verifier is not None and not self.verifier.verify(command):
            self._dead(msg, "invalid_signature", "no valid signature of the pipeline's key")
            return
        unmapped = unmapped_categories(self.applier.mapping, command)
        if unmapped:
            detail = f"categories no table of target {self.target} maps: {sorted(unmapped)}"
            self._dead(msg, "unmapped_category", detail)
            return
        started = time.perf_counter()
        ack = self.applier.apply(command, wall_instant(self.wall_clock()))
        elapsed = time.perf_counter() - started
        status = str(ack["status"])
        self.stats.applied[status] = self.stats.applied.get(status, 0) + 1
        if self.metrics is not None:
            self.metrics.observe_command(self.target, str(command["action"]), status, elapsed)
        if status == "failed":
            log.warning(
                "command %s for %s failed (attempt %s, retryable %s): %s",
                ack["command_id"],
                subject_ref(command.get("controller"), command.get("subject_id")),
                ack.get("attempt"),
                ack.get("retryable"),
                ack.get("detail"),
            )
        self._send(
            self.acks_topic,
            str(ack["command_id"]).encode(),
            self.serde.encode(ERASURE_ACKS.value_schema, dict(ack)),
            msg.partition(),
        )

    def _dead(self, msg: Message, reason: str, error: str) -> None:
        record: Mapping[str, Any] = {
            "original": msg.value() or b"",
            "reason": reason,
            "error": error,
            "source_topic": ERASURE_COMMANDS.name,
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
            "at": wall_instant(self.wall_clock()),
            "key": msg.key(),
        }
        self.stats.dead_letters[reason] = self.stats.dead_letters.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.observe_dead_letter(self.target, reason)
        log.warning(
            "dead letter from %s[%s]@%s: %s",
            self.commands_topic,
            msg.partition(),
            msg.offset(),
            reason,
        )
        self._send(
            self.dead_letters_topic,
            None,
            self.serde.encode(DEAD_LETTERS.value_schema, dict(record)),
            None,
        )

    # -- delivery ---------------------------------------------------------------------

    def _send(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self.producer.produce(topic, value, key=key, **kwargs)
        except BufferError:
            self.producer.poll(1.0)
            self.producer.produce(topic, value, key=key, **kwargs)
        self.producer.poll(0)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def _acknowledged(self, timeout: float = 30.0) -> None:
        left = self.producer.flush(timeout)
        failed, self._failed = self._failed, []
        if left or failed:
            raise DeliveryError(
                f"{left} acks or dead letters unacknowledged after {timeout} s, "
                f"{len(failed)} failed: {failed[:3]}"
            )

    def _broker_error(self, msg: Message) -> bool:
        return _consumer_error(msg)


class MaterialiserConsumer:
    """Reads the tagged records a materialiser's feeds take and has it write them.

    One consumer group per target (``{prefix}privacy-pipeline-materialise-{target}``),
    reading from the earliest offset. Records of other controllers are skipped by their
    key, undecodable ones are counted and skipped (they are the pipeline's own output, so
    a person must look, but a downstream store must not stop for one). Offsets are
    committed after the batch's rows are: a redelivered record finds its row written.
    """

    def __init__(
        self,
        settings: Settings,
        materialiser: Materialiser,
        *,
        group_id: str | None = None,
        batch_size: int = 1000,
        serde: AvroSerde | None = None,
        wall_clock: Callable[[], float] = time.time,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        """*consumer_config* overrides settings of the Kafka consumer (see :data:`PATIENT`)."""
        self.materialiser = materialiser
        self.serde = serde or AvroSerde()
        self.wall_clock = wall_clock
        self.batch_size = batch_size
        self.stats = MaterialiseStats()
        self.undecodable = 0
        target = materialiser.mapping.target
        prefix = settings.prefix
        group = group_id or f"{prefix}privacy-pipeline-materialise-{target}"
        config = {
            **settings.tuning.sink_consumer(settings.broker, group),
            **(consumer_config or {}),
        }
        self.consumer = Consumer(config)
        self.topics = sorted(prefix + TAGGED_TOPIC[t] for t in materialiser.record_types)
        self.consumer.subscribe(self.topics)

    def step(self, timeout: float = 0.5) -> int:
        """Write one consumed batch; return how many records it held."""
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout)
        records: list[dict[str, Any]] = []
        consumed = 0
        for msg in messages:
            if _consumer_error(msg):
                continue
            consumed += 1
            if not self.materialiser.concerns_key(msg.key()):
                self.stats.not_ours += 1
                continue
            try:
                name, record = self.serde.decode(msg.value() or b"")
            except RecordError:
                name, record = "", {}
            if name != TAGGED_CLICKS.value_schema:
                self.undecodable += 1
                continue
            records.append(record)
        if records:
            now = datetime.fromtimestamp(self.wall_clock(), tz=UTC)
            self.stats.add(self.materialiser.write(records, now))
        if consumed:
            _commit(self.consumer)
        return consumed

    def close(self) -> None:
        """Leave the consumer group (what was written is committed already)."""
        self.consumer.close()


def run_together(
    stopped: Callable[[], bool],
    sink: Sink,
    materialiser: MaterialiserConsumer,
    *,
    after_step: Callable[[], None] | None = None,
) -> None:
    """Apply commands and materialise records for one database, alternately, in one thread,
    until *stopped()*; then close both.

    One thread keeps the two from waiting on each other's database lock; the order of
    their writes does not matter (see :mod:`privacy_pipeline.sink.scopes`). Commands get
    the shorter wait: they have a deadline, records do not.
    """
    try:
        while not stopped():
            sink.step(timeout=0.05)
            materialiser.step(timeout=0.2)
            if after_step is not None:
                after_step()
    finally:
        try:
            sink.close()
        finally:
            materialiser.close()


# The group has moved on without this member: it stalled for longer than the session
# timeout (a paused process, a long transaction) and its partitions were taken back.
_ASSIGNMENT_GONE = frozenset(
    {
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
    }
)


def _commit(consumer: Consumer) -> None:
    """Commit what was consumed, unless the partitions are no longer this member's.

    Then the batch is applied and acknowledged all the same, and whoever owns the
    partitions now (this member, once it has rejoined) reads it again: a redelivered
    command gets its stored ack, a redelivered record finds its row. Stopping the sink
    for it would only turn a stall into an outage.
    """
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.code() not in _ASSIGNMENT_GONE:
            raise
        log.warning("offsets not committed, the batch will be read again: %s", error.str())


def _consumer_error(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer: %s", err.str())
    return True
