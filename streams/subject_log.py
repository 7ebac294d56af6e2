"""Reads ranges of the subject log straight from the broker, outside any consumer group.

The enforce agent's consumer (faust over aiokafka) can pass over records without
handing them to the agent: faust drops what it fetched before a rebalance or while its
flow was suspended, acks it, and marks offset gaps as done; on the embedded broker this
was seen around cold starts. The enforce step knows the last offset it applied per
partition, so it sees such a gap at the next record and reads the missing range here.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from .settings import ClientTuning

log = logging.getLogger(__name__)


class RefetchError(RuntimeError):
    """A subject-log range could not be read back in time."""


class SubjectLogReader:
    """Reads `[start, end)` of one subject-log partition (thread-confined: one caller)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout: float = 30.0,
        tuning: ClientTuning | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.tuning = tuning or ClientTuning()
        self.topic = topic
        self.timeout = timeout
        self._consumer: Consumer | None = None

    def _open(self) -> Consumer:
        if self._consumer is None:
            # Assigned by hand and never committed: the group id is only required.
            config = self.tuning.reader_consumer(self.bootstrap, f"{self.topic}-refetch")
            self._consumer = Consumer(config)
        return self._consumer

    def read(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """(offset, value) of the records at offsets `start` to `end - 1`, in order.

        Offsets no longer held (retention) are absent from the result. Raises
        `RefetchError` if the range cannot be read within the timeout: the caller must
        not carry on as if the records had been run.
        """
        consumer = self._open()
        consumer.assign([TopicPartition(self.topic, partition, start)])
        found: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=500, timeout=0.5):
                    err = msg.error()
                    if err is not None:
                        # An end of partition says nothing here: the embedded broker
                        # reports it early, and the record at `end` exists (the agent
                        # has it), so reading goes on until it is seen.
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("refetch from %s[%d]: %s", self.topic, partition, err.str())
                        continue
                    offset = msg.offset() or 0
                    if offset >= end:
                        return found
                    if offset >= start:
                        found.append((offset, msg.value() or b""))
            raise RefetchError(
                f"{self.topic}[{partition}] offsets {start}-{end - 1}: "
                f"read {len(found)} records in {self.timeout:.0f} s, not the whole range"
            )
        finally:
            consumer.unassign()

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
