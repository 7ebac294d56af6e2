"""The enforce step: one subject-log micro-batch in, decisions out, state changes back.

Runs the same `PolicyEnforcer` as `evaluate`. The faust agent (see `worker.py`) calls
`EnforceCore.process_batch` for each micro-batch, then writes the returned state changes
to the table's changelog as one record. Time enters as tick items: each partition keeps
its own clock, which moves forward to each event's `occurred_at` and to each tick, and
retention timers fire when the clock passes them, as in `evaluate`.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable, MutableMapping
from datetime import datetime
from typing import Any, Protocol

from ..processors.enforcer import Decision, PolicyEnforcer
from ..processors.events import EventError, parse_event
from ..processors.instants import InstantError, format_instant, parse_instant
from ..processors.state import SubjectState
from .metrics import PipelineMetrics
from .records import (
    TAGGED_TOPIC,
    audit_record,
    erasure_command,
    subject_partition,
    tagged_record,
    wall_instant,
)
from .serde import AvroSerde, RecordError, avro_to_event

log = logging.getLogger(__name__)

CLOCK_KEY = "__clock__"
CHANGELOG_RECORD_BYTES = 256 * 1024
_COMPACT = json.JSONEncoder(separators=(",", ":"))
OFFSET_KEY = "__offset__"
OPTOUT_ACTIONS = frozenset({"withdraw", "object"})


class Outputs(Protocol):
    """Where decisions go: a Kafka producer in production, a list in tests."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self) -> None: ...


class EnforceCore:
    """Applies micro-batches to the subject states of the partitions this worker owns."""

    def __init__(
        self,
        enforcer: PolicyEnforcer,
        serde: AvroSerde,
        outputs: Outputs,
        states: MutableMapping[str, SubjectState],
        partitions: int,
        prefix: str = "",
        metrics: PipelineMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.enforcer = enforcer
        self.serde = serde
        self.outputs = outputs
        self.states = states
        self.partitions = partitions
        self.prefix = prefix
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.clocks: dict[int, datetime] = {}
        # The last subject-log offset whose effects are in the changelog, per partition:
        # a batch redelivered after a crash is skipped whole (its decisions went out).
        self.applied: dict[int, int] = {}
        self.skipped = 0
        self._timers: dict[int, list[tuple[datetime, str]]] = {}
        self._scheduled: dict[str, datetime] = {}
        self.processed = 0

    # -- recovery -------------------------------------------------------------

    def restore(self, partition: int, changes: dict[str, Any]) -> None:
        """Apply one changelog record (state changes of one micro-batch)."""
        for key, value in changes.items():
            if key == CLOCK_KEY:
                self.clocks[partition] = parse_instant(value)
            elif key == OFFSET_KEY:
                self.applied[partition] = max(int(value), self.applied.get(partition, -1))
            elif value is None:
                self.states.pop(key, None)
            else:
                self.states[key] = SubjectState.from_dict(value)
        self._timers.pop(partition, None)  # rebuilt on first use

    def _index(self, partition: int) -> list[tuple[datetime, str]]:
        timers = self._timers.get(partition)
        if timers is None:
            timers = []
            for key, state in self.states.items():
                if subject_partition(key, self.partitions) != partition:
                    continue
                self._scheduled.pop(key, None)
                due = state.next_due()
                if due is not None:
                    self._scheduled[key] = due
                    timers.append((due, key))
            heapq.heapify(timers)
            self._timers[partition] = timers
        return timers

    def timer_count(self) -> int:
        """Subjects with a retention timer set."""
        return len(self._scheduled)

    # -- processing -----------------------------------------------------------

    def process_batch(
        self, partition: int, value: bytes, offset: int | None = None
    ) -> bytes | None:
        """Run one micro-batch; send its decisions; return its changelog as one record."""
        chunks = self.process(partition, value, offset)
        if not chunks:
            return None
        if len(chunks) == 1:
            return chunks[0]
        merged: dict[str, Any] = {}
        for chunk in chunks:
            merged.update(json.loads(chunk))
        return json.dumps(merged, separators=(",", ":")).encode()

    def process(self, partition: int, value: bytes, offset: int | None = None) -> list[bytes]:
        """Run one micro-batch; send its decisions; return its changelog records.

        A big batch's state changes are split over several records, each under
        CHANGELOG_RECORD_BYTES (Kafka refuses records over its request size, 1 MB by
        default); the clock and applied offset ride on the last one, so a batch whose
        records were only partly written is redone (its events are then deduplicated).
        """
        if offset is not None and offset <= self.applied.get(partition, -1):
            self.skipped += 1
            return []
        try:
            _, batch = self.serde.decode(value, "SubjectBatch")
        except RecordError as exc:
            log.error("undecodable subject-log record on partition %d: %s", partition, exc.reason)
            return []
        timers = self._index(partition)
        dirty: set[str] = set()
        decisions: list[tuple[Decision, dict[str, Any] | None, str | None]] = []
        optouts: list[int] = []
        produced: list[int] = []
        for item in batch["items"]:
            record = item["event"]
            if record is None:
                continue
            if "ticker_id" in record:
                try:
                    at = parse_instant(record["at"])
                except InstantError:
                    log.error("tick with a malformed instant on partition %d skipped", partition)
                    continue
                self._advance(partition, at, timers, dirty, decisions)
                continue
            try:
                event = parse_event(avro_to_event(record))
                self.enforcer.policy(event.controller)
            except EventError as exc:
                self._dead_letter(item, str(exc))
                continue
            self._advance(partition, event.occurred_at, timers, dirty, decisions)
            now = self.clocks[partition]
            key = item["key"]
            state, out = self.enforcer.on_event(self.states.get(key), event, now)
            self.states[key] = state
            dirty.add(key)
            self._schedule(key, state, timers)
            for d in out:
                decisions.append((d, record, event.type))
            produced.append(item["produced_at_ms"])
            if event.action in OPTOUT_ACTIONS or event.right == "objection":
                optouts.append(item["produced_at_ms"])
        self._emit(decisions)
        self.outputs.flush()
        self.processed += len(produced)
        self._observe(produced, optouts, [d for d, _, _ in decisions], len(batch["items"]))
        if offset is not None:
            self.applied[partition] = offset
        return self._changelog(partition, dirty)

    def _advance(
        self,
        partition: int,
        instant: datetime,
        timers: list[tuple[datetime, str]],
        dirty: set[str],
        decisions: list[tuple[Decision, dict[str, Any] | None, str | None]],
    ) -> None:
        clock = self.clocks.get(partition)
        if clock is None or instant > clock:
            self.clocks[partition] = clock = instant
        while timers and timers[0][0] <= clock:
            due, key = heapq.heappop(timers)
            if self._scheduled.get(key) != due:
                continue
            state = self.states[key]
            actual = state.next_due()
            if actual is not None and actual > due:
                # Moved later since pushed: requeue, so subjects fire in due order.
                self._scheduled[key] = actual
                heapq.heappush(timers, (actual, key))
                continue
            del self._scheduled[key]
            controller, subject_id = key.split(":", 1)
            state, out = self.enforcer.on_time(state, controller, subject_id, clock)
            dirty.add(key)
            decisions.extend((d, None, None) for d in out)
            self._schedule(key, state, timers)

    def _schedule(self, key: str, state: SubjectState, timers: list[tuple[datetime, str]]) -> None:
        # One heap entry per subject, as in `Replay._schedule`.
        due = state.next_due()
        if due is None:
            self._scheduled.pop(key, None)  # its heap entry, if any, is skipped when popped
            return
        current = self._scheduled.get(key)
        if current is None or due < current:
            self._scheduled[key] = due
            heapq.heappush(timers, (due, key))

    def _emit(self, decisions: list[tuple[Decision, dict[str, Any] | None, str | None]]) -> None:
        send = self.outputs.send
        encode = self.serde.encode
        prefix = self.prefix
        at = wall_instant(self.wall_clock())
        for decision, record, event_type in decisions:
            kind = decision["decision"]
            key = f"{decision['controller']}:{decision['subject_id']}".encode()
            version = self.enforcer.policy(decision["controller"]).version
            if kind == "tag" and record is not None and event_type is not None:
                value = encode("TaggedRecord", tagged_record(decision, event_type, record, version))
                send(prefix + TAGGED_TOPIC[event_type], key, value)
                continue
            if kind == "erasure":
                send(
                    prefix + "erasure-commands",
                    key,
                    encode("ErasureCommand", erasure_command(decision, version)),
                )
            send(prefix + "audit", key, encode("AuditRecord", audit_record(decision, at)))

    def _dead_letter(self, item: dict[str, Any], error: str) -> None:
        # Ingest validated this item; it can only fail here if the packs changed since.
        record = {
            "original": json.dumps(item["event"], default=str).encode(),
            "reason": "invalid_event",
            "error": error,
            "source_topic": item["source_topic"],
            "source_partition": item["source_partition"],
            "source_offset": item["source_offset"],
            "at": wall_instant(self.wall_clock()),
            "key": item["key"].encode(),
        }
        value = self.serde.encode("DeadLetter", record)
        self.outputs.send(self.prefix + "dead-letters", None, value)
        if self.metrics is not None:
            self.metrics.observe_dead_letter(item["source_topic"], "invalid_event")

    def _observe(
        self, produced: list[int], optouts: list[int], decisions: list[Decision], items: int
    ) -> None:
        if self.metrics is None:
            return
        now_ms = self.wall_clock() * 1000.0
        for ms in produced:
            self.metrics.observe_processing(max(0.0, (now_ms - ms) / 1000.0))
        for ms in optouts:
            self.metrics.observe_optout_latency(max(0.0, (now_ms - ms) / 1000.0))
        self.metrics.observe_decisions(decisions)
        self.metrics.observe_batch_size(items)
        self.metrics.set_retention_timers(None, self.timer_count())

    def _changelog(self, partition: int, dirty: set[str]) -> list[bytes]:
        if not dirty and partition not in self.clocks and partition not in self.applied:
            return []
        encode = _COMPACT.encode
        parts = [f"{encode(k)}:{encode(self.states[k].to_dict())}" for k in sorted(dirty)]
        clock = self.clocks.get(partition)
        if clock is not None:
            parts.append(f"{encode(CLOCK_KEY)}:{encode(format_instant(clock))}")
        if partition in self.applied:
            parts.append(f"{encode(OFFSET_KEY)}:{self.applied[partition]}")
        records: list[bytes] = []
        current: list[str] = []
        size = 0
        for part in parts:
            if current and size + len(part) > CHANGELOG_RECORD_BYTES:
                records.append(("{" + ",".join(current) + "}").encode())
                current, size = [], 0
            current.append(part)
            size += len(part) + 1
        records.append(("{" + ",".join(current) + "}").encode())
        return records
