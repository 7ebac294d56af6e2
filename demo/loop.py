"""The demo's view of the erasure loop, and a stand-in for the targets it has no sink for.

One spawned process reads ``erasure-commands``, ``erasure-acks``,
``erasure-escalations`` and ``privacy-request-status`` from the beginning and keeps
counts for the live summary:

- commands to the demo's sinks: issued, re-issued (``attempt`` > 1), answered, and
  *overdue*: still unanswered longer than the worker's ack timeout after they were first
  seen;
- rows the sinks' acks say they erased (or anonymised) and restricted, once per command
  (a redelivered command gets the same stored ack again);
- escalations, and each privacy request's latest status.

The five packs name 22 targets; the demo runs sinks for two of them. Every command for
another target is answered by the **stand-in** here, ``not_found`` with a detail saying
why: no system of the demo holds that target's data, which is the truth. Without it those
commands would be re-issued until they are escalated, and no erasure request could ever
be completed. The stand-in's acks are counted apart from the sinks'.

Counts go to the parent through shared memory; nothing personal is kept but command ids
and request ids, in this process only.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopCounts", "LoopProcess", "STAND_IN_DETAIL"]

STAND_IN_DETAIL = "demo stand-in: no system of the demo holds this target's data"
ANSWERED = frozenset({"done", "not_found", "retained"})

# Indexes of the shared counters (a RawArray of int64).
(
    SINK_ISSUED,
    SINK_REISSUED,
    SINK_ANSWERED,
    SINK_FAILED,
    SINK_OVERDUE,
    ROWS_ERASED,
    ROWS_RESTRICTED,
    OTHER_ISSUED,
    OTHER_ANSWERED,
    ESCALATIONS,
    REQUESTS,
    REQ_COMPLETED,
    REQ_PARTIAL,
    REQ_FAILED,
    REQ_OPEN,
    READY,
) = range(16)
_COUNTERS = 16


@dataclass(frozen=True)
class LoopCounts:
    """A copy of the loop's counters at one instant."""

    sink_issued: int = 0
    sink_reissued: int = 0
    sink_answered: int = 0
    sink_failed: int = 0
    sink_overdue: int = 0
    rows_erased: int = 0
    rows_restricted: int = 0
    other_issued: int = 0
    other_answered: int = 0
    escalations: int = 0
    requests: int = 0
    requests_completed: int = 0
    requests_partial: int = 0
    requests_failed: int = 0
    requests_open: int = 0


class _Loop:
    """The counting itself, apart from Kafka (fed decoded records)."""

    def __init__(self, sink_targets: Iterable[str], ack_timeout: float) -> None:
        self.sink_targets = frozenset(sink_targets)
        self.ack_timeout = ack_timeout
        self.c = [0] * _COUNTERS
        self.open: dict[str, float] = {}  # sink command id -> when first seen
        self.action: dict[str, str] = {}  # sink command id -> action
        self.answered: set[str] = set()
        self.unsorted: dict[str, int] = {}  # rows of acks read before their command
        self.requests: dict[str, str] = {}  # request id -> latest status

    def command(self, command: dict[str, Any], now: float) -> bool:
        """Count a command; True when the stand-in should answer it."""
        command_id = str(command["command_id"])
        if command["target"] not in self.sink_targets:
            if int(command.get("attempt") or 1) == 1:
                self.c[OTHER_ISSUED] += 1
            return True
        if int(command.get("attempt") or 1) > 1:
            self.c[SINK_REISSUED] += 1
        if command_id not in self.action:
            self.c[SINK_ISSUED] += 1
            self.action[command_id] = str(command["action"])
            if command_id in self.unsorted:
                self._rows(command_id, self.unsorted.pop(command_id))
            elif command_id not in self.answered:
                self.open[command_id] = now
        return False

    def ack(self, ack: dict[str, Any]) -> None:
        """Count a sink's ack (the stand-in's own are counted when it sends them)."""
        command_id = str(ack["command_id"])
        if ack["target"] not in self.sink_targets:
            return
        status = str(ack["status"])
        if status not in ANSWERED:
            self.c[SINK_FAILED] += 1
            return
        if command_id in self.answered:
            return  # a stored ack sent again
        self.answered.add(command_id)
        self.open.pop(command_id, None)
        self.c[SINK_ANSWERED] += 1
        rows = sum(int(n) for n in (ack.get("rows") or {}).values())
        if command_id in self.action:
            self._rows(command_id, rows)
        else:  # the two topics are read at their own pace: the command comes later
            self.unsorted[command_id] = rows

    def _rows(self, command_id: str, rows: int) -> None:
        if self.action[command_id] == "restrict":
            self.c[ROWS_RESTRICTED] += rows
        else:
            self.c[ROWS_ERASED] += rows

    def status(self, status: dict[str, Any]) -> None:
        """Note a privacy request's latest status."""
        self.requests[str(status["request_id"])] = str(status["status"])

    def tally(self, now: float) -> None:
        """Recompute the gauges: overdue commands and requests by status."""
        limit = now - self.ack_timeout
        self.c[SINK_OVERDUE] = sum(1 for seen in self.open.values() if seen < limit)
        statuses = list(self.requests.values())
        self.c[REQUESTS] = len(statuses)
        self.c[REQ_COMPLETED] = statuses.count("completed")
        self.c[REQ_PARTIAL] = statuses.count("partially_completed")
        self.c[REQ_FAILED] = statuses.count("failed")
        self.c[REQ_OPEN] = statuses.count("in_progress") + statuses.count("received")


def _loop_main(
    bootstrap: str,
    prefix: str,
    sink_targets: tuple[str, ...],
    ack_timeout: float,
    counts: Any,
    stop: Any,
) -> None:
    """Child process: count the loop and answer for the targets without a sink."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, in order
    from confluent_kafka import Consumer, Producer

    from privacy_pipeline.sink.service import PATIENT
    from privacy_pipeline.streams.records import wall_instant
    from privacy_pipeline.streams.serde import AvroSerde, RecordError
    from privacy_pipeline.streams.settings import Settings
    from privacy_pipeline.streams.topics import (
        ERASURE_ACKS,
        ERASURE_COMMANDS,
        ERASURE_ESCALATIONS,
        PRIVACY_REQUEST_STATUS,
    )

    parent = os.getppid()
    tuning = Settings(bootstrap=bootstrap, prefix=prefix).tuning
    group = f"{prefix}privacy-pipeline-demo-loop-{os.getpid()}"
    consumer = Consumer({**tuning.ingest_consumer(bootstrap, group), **PATIENT})
    producer = Producer(tuning.producer(bootstrap, **{"linger.ms": 20}))
    acks_topic = ERASURE_ACKS.named(prefix)
    topics = {
        ERASURE_COMMANDS.named(prefix): "command",
        acks_topic: "ack",
        ERASURE_ESCALATIONS.named(prefix): "escalation",
        PRIVACY_REQUEST_STATUS.named(prefix): "status",
    }
    consumer.subscribe(list(topics))
    serde = AvroSerde()
    loop = _Loop(sink_targets, ack_timeout)
    loop.c[READY] = 1
    counts[:] = loop.c
    idle_since: float | None = None
    try:
        while True:
            if os.getppid() != parent:
                return
            messages = consumer.consume(num_messages=1000, timeout=0.2)
            now = time.monotonic()
            got = 0
            for msg in messages:
                if msg.error() is not None:  # end of a partition, or a broker hiccup
                    continue
                got += 1
                try:
                    _, record = serde.decode(msg.value() or b"")
                except RecordError:
                    continue
                kind = topics.get(msg.topic() or "")
                if kind == "command":
                    if loop.command(record, now):
                        _answer(producer, serde, acks_topic, record, msg.partition(), wall_instant)
                        loop.c[OTHER_ANSWERED] += 1
                elif kind == "ack":
                    loop.ack(record)
                elif kind == "escalation":
                    loop.c[ESCALATIONS] += 1
                elif kind == "status":
                    loop.status(record)
            producer.poll(0)
            loop.tally(now)
            counts[:] = loop.c
            # Once asked to stop, read on until nothing has come for a second: the sinks
            # have flushed their last acks by then, so the final counts are complete.
            if stop.is_set():
                if got:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since > 1.0:
                    break
    finally:
        producer.flush(5)
        consumer.close()


def _answer(
    producer: Any,
    serde: Any,
    topic: str,
    command: dict[str, Any],
    partition: int | None,
    wall_instant: Any,
) -> None:
    """The stand-in's ack: in the command's partition, keyed by its id, no personal data."""
    from privacy_pipeline.streams.topics import ERASURE_ACKS

    ack = {
        "command_id": command["command_id"],
        "target": command["target"],
        "status": "not_found",
        "completed_at": wall_instant(time.time()),
        "detail": STAND_IN_DETAIL,
        "attempt": int(command.get("attempt") or 1),
        "retryable": False,
        "rows": {},
    }
    value = serde.encode(ERASURE_ACKS.value_schema, ack)
    kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
    while True:
        try:
            producer.produce(topic, value, key=str(command["command_id"]).encode(), **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


class LoopProcess:
    """The loop counter and stand-in in a spawned child process."""

    def __init__(
        self, bootstrap: str, prefix: str, sink_targets: Iterable[str], ack_timeout: float
    ) -> None:
        ctx = mp.get_context("spawn")
        self.counts: Any = ctx.RawArray("q", _COUNTERS)
        self.stop_event = ctx.Event()
        self.process = ctx.Process(
            target=_loop_main,
            args=(
                bootstrap,
                prefix,
                tuple(sink_targets),
                ack_timeout,
                self.counts,
                self.stop_event,
            ),
            name="privacy-pipeline-demo-loop",
            daemon=True,
        )

    def start(self) -> None:
        """Start the child."""
        self.process.start()

    def snapshot(self) -> LoopCounts:
        """The counters now."""
        c = [int(x) for x in self.counts]
        return LoopCounts(
            sink_issued=c[SINK_ISSUED],
            sink_reissued=c[SINK_REISSUED],
            sink_answered=c[SINK_ANSWERED],
            sink_failed=c[SINK_FAILED],
            sink_overdue=c[SINK_OVERDUE],
            rows_erased=c[ROWS_ERASED],
            rows_restricted=c[ROWS_RESTRICTED],
            other_issued=c[OTHER_ISSUED],
            other_answered=c[OTHER_ANSWERED],
            escalations=c[ESCALATIONS],
            requests=c[REQUESTS],
            requests_completed=c[REQ_COMPLETED],
            requests_partial=c[REQ_PARTIAL],
            requests_failed=c[REQ_FAILED],
            requests_open=c[REQ_OPEN],
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Read on until the topics are quiet (the last acks), then stop; wait for it."""
        self.stop_event.set()
        if self.process.pid is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
