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
import marshal
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from privacy_pipeline.processors.enforcer import Decision, PolicyEnforcer
from privacy_pipeline.processors.events import EventError, parse_event
from privacy_pipeline.processors.instants import EPOCH, InstantError, parse_instant
from privacy_pipeline.processors.state import MICROSECOND, SubjectState

from .metrics import PipelineMetrics
from .records import (
    audit_record,
    erasure_command,
    subject_partition,
    tagged_record,
    wall_instant,
)
from .serde import AvroSerde, RecordError
from .signing import CommandSigner
from .topics import (
    AUDIT,
    DEAD_LETTERS,
    ERASURE_COMMANDS,
    ERASURE_ESCALATIONS,
    PRIVACY_REQUEST_STATUS,
    TAGGED_CLICKS,
    TAGGED_TOPIC,
)

log = logging.getLogger(__name__)

TAGGED_SCHEMA = TAGGED_CLICKS.value_schema  # every tagged-* topic carries TaggedRecord
CLOCK_KEY = "__clock__"
CHANGELOG_RECORD_BYTES = 256 * 1024
OFFSET_KEY = "__offset__"
OPTOUT_ACTIONS = frozenset({"withdraw", "object"})
# The gauges read from the states (open and overdue commands, retention timers) are set at
# most this often, on the wall clock: reading every open command on each micro-batch would
# cost the hot path more than a scrape every 5-15 s can show.
STATE_GAUGES_EVERY_S = 5.0
# ... or more seldom, so that reading them takes at most 1/STATE_GAUGES_SHARE of the enforce
# thread: 1-3 µs an open command on our 2-core machine, and a target down for days can
# leave hundreds of thousands open.
STATE_GAUGES_SHARE = 50


class Outputs(Protocol):
    """Where decisions go: a Kafka producer in production, a list in tests."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def flush(self) -> None: ...


# What one micro-batch adds to the metrics once its outputs are acknowledged: (produced_at_ms
# of its events, of its opt-outs, its decisions, its item count, its own produced_at_ms).
_Observed = tuple[list[int], list[int], list[Decision], int, int]


@dataclass(slots=True)
class Group:
    """Micro-batches run together: their changelog records and their pending metrics."""

    done: list[tuple[int, int | None, list[bytes]]] = field(default_factory=list)
    observed: list[_Observed] = field(default_factory=list)


# Reads subject-log records [start, end) of a partition straight from the broker.
Refetch = Callable[[int, int, int], list[tuple[int, bytes]]]


def _canonical(value: Any) -> str | None:
    """An extract as canonical JSON text (None stays None)."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


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
        refetch: Refetch | None = None,
        signer: CommandSigner | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.signer = signer
        self.serde = serde
        self.outputs = outputs
        self.states = states
        self.partitions = partitions
        self.prefix = prefix
        # Real topic names, worked out once: _emit runs for every decision.
        self._tagged_topics = {kind: prefix + name for kind, name in TAGGED_TOPIC.items()}
        self._commands_topic = ERASURE_COMMANDS.named(prefix)
        self._audit_topic = AUDIT.named(prefix)
        self._dead_letters_topic = DEAD_LETTERS.named(prefix)
        self._escalations_topic = ERASURE_ESCALATIONS.named(prefix)
        self._status_topic = PRIVACY_REQUEST_STATUS.named(prefix)
        # command_id -> subject key of the commands tracked, per partition: an ack names
        # only its command. Built from the states on first use, like the timer index.
        self._owners: dict[int, dict[str, str]] = {}
        # command_id -> (target, issued_at, deadline; instants in epoch seconds) of the
        # commands in _owners, for the metrics: the gauges read them for every open
        # command and the ack latency for every answer, and a tracked command is packed
        # (about 10 µs to decode). Noted when issued, or decoded once after a restore.
        self._facts: dict[str, tuple[str, float, float]] = {}
        self.unmatched_acks = 0
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.refetch = refetch
        self.clocks: dict[int, datetime] = {}
        # The last subject-log offset whose effects are in the changelog, per partition:
        # a batch redelivered after a crash is skipped whole (its decisions went out).
        self.applied: dict[int, int] = {}
        self.skipped = 0
        self._timers: dict[int, list[tuple[datetime, str]]] = {}
        self._scheduled: dict[str, datetime] = {}
        # Subjects in _scheduled per controller, kept as _scheduled changes: counting them
        # for the gauge would cost a pass over every subject with a timer.
        self._timer_counts: dict[str, int] = {}
        self._gauges_at: float | None = None  # wall time the state gauges were last set
        self._gauges_every = STATE_GAUGES_EVERY_S
        self.processed = 0

    # -- recovery -------------------------------------------------------------

    def restore(self, partition: int, changes: Mapping[str, Any]) -> None:
        """Apply one changelog record's changes, as `decode_changelog` gives them."""
        for key, value in changes.items():
            if key == CLOCK_KEY:
                self.clocks[partition] = value
            elif key == OFFSET_KEY:
                self.applied[partition] = max(value, self.applied.get(partition, -1))
            elif value is None:
                self.states.pop(key, None)
            else:
                self.states[key] = value
        self._timers.pop(partition, None)  # rebuilt on first use
        self._owners.pop(partition, None)
        self._facts.clear()  # rebuilt with the index, from the restored commands
        self._gauges_at = None  # the restored commands and timers show at the next chance

    def _index(self, partition: int) -> list[tuple[datetime, str]]:
        timers = self._timers.get(partition)
        if timers is None:
            timers = []
            for key, state in self.states.items():
                if subject_partition(key, self.partitions) != partition:
                    continue
                if self._scheduled.pop(key, None) is not None:
                    self._count_timer(key, -1)
                due = state.next_due()
                if due is not None:
                    self._scheduled[key] = due
                    self._count_timer(key, 1)
                    timers.append((due, key))
            heapq.heapify(timers)
            self._timers[partition] = timers
        return timers

    def timer_count(self) -> int:
        """Subjects with a retention timer set."""
        return len(self._scheduled)

    def _count_timer(self, key: str, delta: int) -> None:
        controller = key.partition(":")[0]
        self._timer_counts[controller] = self._timer_counts.get(controller, 0) + delta

    # -- gauges read from the states ------------------------------------------------------

    def observe_state(self, force: bool = False) -> None:
        """Set the gauges of the states: open commands by target and state, overdue ones,
        retention timers by controller.

        At most every STATE_GAUGES_EVERY_S of wall time (longer when many commands are
        open: see STATE_GAUGES_SHARE) unless `force`. `run_group` calls it after each
        group, and the worker on a timer, so that the gauges move with the wall clock (and
        show a recovered state) while no traffic comes. Must run where the groups run (the
        enforce thread): it reads and prunes the command index. The cost is a few look-ups
        per open command, through the index acks use; no command is decoded, but once
        after a restore.
        """
        if self.metrics is None:
            return
        wall = self.wall_clock()
        last = self._gauges_at
        if not force and last is not None and wall - last < self._gauges_every:
            return
        self._gauges_at = wall
        started = time.perf_counter()
        open_commands: dict[tuple[str, str, str], int] = {}
        overdue: dict[tuple[str, str], int] = {}
        states = self.states
        facts = self._facts
        for partition in range(self.partitions):
            self._index(partition)  # after a restore, the timer counts come with the index
            owners = self._owners_of(partition)
            closed: list[str] = []
            for command_id, key in owners.items():
                state = states.get(key)
                commands = None if state is None else state.commands
                tracked = None if commands is None else commands.get(command_id)
                if tracked is None:
                    # Closed by other means than an ack, or never tracked (no tracker).
                    closed.append(command_id)
                    continue
                fact = facts.get(command_id)
                if fact is None:
                    fact = self._note(command_id, tracked.decision)
                target, _issued, deadline = fact
                controller = key.partition(":")[0]
                # wait_until: the next try as stored (None once escalated), not converted.
                state_label = "waiting" if tracked.wait_until is not None else "escalated"
                okey = (target, state_label, controller)
                open_commands[okey] = open_commands.get(okey, 0) + 1
                # Every target with open commands has an overdue series, 0 or more.
                dkey = (target, controller)
                overdue[dkey] = overdue.get(dkey, 0) + (deadline < wall)
            for command_id in closed:
                del owners[command_id]
                facts.pop(command_id, None)
        self.metrics.replace_open_commands(open_commands, overdue)
        self.metrics.replace_retention_timers(self._timer_counts)
        spent = time.perf_counter() - started
        self._gauges_every = max(STATE_GAUGES_EVERY_S, spent * STATE_GAUGES_SHARE)

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
            merged.update(_changelog_fields(chunk))
        return _changelog_record(merged)

    def process(self, partition: int, value: bytes, offset: int | None = None) -> list[bytes]:
        """Run one micro-batch; send its decisions; return its changelog records.

        A big batch's state changes are split over several records, each under
        CHANGELOG_RECORD_BYTES (Kafka refuses records over its request size, 1 MB by
        default); the clock and applied offset ride on the last one, so a batch whose
        records were only partly written is redone (its events are then deduplicated).
        """
        done = self.process_many([(partition, value, offset)])
        return [record for _, _, records in done for record in records]

    def process_many(
        self, batches: Sequence[tuple[int, bytes, int | None]]
    ) -> list[tuple[int, int | None, list[bytes]]]:
        """Run several micro-batches in order, flush their outputs once, return changelogs.

        `run_group`, then a flush: the outputs are acknowledged before this returns, so
        the changelog records (written after) never get ahead of the decisions.
        """
        group = self.run_group(batches)
        if group.observed:
            self.outputs.flush()
            self.observe(group)
        return group.done

    def run_group(self, batches: Sequence[tuple[int, bytes, int | None]]) -> Group:
        """Run several micro-batches in order and send their outputs (not flushed).

        `Group.done` holds ``(partition, offset, changelog records)`` per micro-batch run,
        in order: those given, plus any the consumer had skipped, read again through
        `refetch` (a gap between the applied offset and a batch's offset), each before
        the batch that revealed the gap. Its changelog records may be written only once
        its outputs are acknowledged; then `observe` it.
        """
        group = Group()
        for partition, value, offset in batches:
            if offset is not None and self.refetch is not None:
                expected = self.applied.get(partition, -1) + 1
                if offset > expected:
                    missed = self.refetch(partition, expected, offset)
                    log.warning(
                        "subject-log partition %d: offsets %d-%d were skipped by the "
                        "consumer; read %d of them again from the broker",
                        partition,
                        expected,
                        offset - 1,
                        len(missed),
                    )
                    if self.metrics is not None:
                        self.metrics.observe_refetched(len(missed))
                    for missed_offset, missed_value in missed:
                        records = self._apply(partition, missed_value, missed_offset, group)
                        group.done.append((partition, missed_offset, records))
            group.done.append((partition, offset, self._apply(partition, value, offset, group)))
        self.observe_state()
        return group

    def observe(self, group: Group) -> None:
        """Record a group's metrics, once its outputs are acknowledged."""
        for observed in group.observed:
            self._observe(*observed)

    def _apply(self, partition: int, value: bytes, offset: int | None, group: Group) -> list[bytes]:
        if offset is not None and offset <= self.applied.get(partition, -1):
            self.skipped += 1
            return []
        try:
            _, batch = self.serde.decode(value, "SubjectBatch")
        except RecordError as exc:
            log.error(
                "undecodable subject-log record at partition %d offset %s skipped: %s",
                partition,
                offset,
                exc.reason,
            )
            if offset is not None:
                self.applied[partition] = offset  # seen: not a gap to read again
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
            if "command_id" in record and "status" in record:
                self._ack(partition, record, timers, dirty, decisions)
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
                event = parse_event(record)  # Avro's None fields read as absent
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
            self._own(partition, key, out)
            for d in out:
                decisions.append((d, record, event.type))
            produced.append(item["produced_at_ms"])
            if event.action in OPTOUT_ACTIONS or event.right == "objection":
                optouts.append(item["produced_at_ms"])
        self._emit(decisions)
        self.processed += len(produced)
        group.observed.append(
            (
                produced,
                optouts,
                [d for d, _, _ in decisions],
                len(batch["items"]),
                batch["produced_at_ms"],
            )
        )
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
            self._count_timer(key, -1)
            controller, subject_id = key.split(":", 1)
            state, out = self.enforcer.on_time(state, controller, subject_id, clock)
            self._own(partition, key, out)
            dirty.add(key)
            decisions.extend((d, None, None) for d in out)
            self._schedule(key, state, timers)

    def _owners_of(self, partition: int) -> dict[str, str]:
        owners = self._owners.get(partition)
        if owners is None:
            owners = {}
            for key, state in self.states.items():
                if state.commands and subject_partition(key, self.partitions) == partition:
                    owners.update(dict.fromkeys(state.commands, key))
            self._owners[partition] = owners
        return owners

    def _own(self, partition: int, key: str, decisions: list[Decision]) -> None:
        """Remember whose the commands just issued are (acks name only the command)."""
        owners = None
        for d in decisions:
            if d["decision"] == "erasure":
                owners = owners if owners is not None else self._owners_of(partition)
                owners[d["command_id"]] = key
                if self.metrics is not None and d["command_id"] not in self._facts:
                    self._note(d["command_id"], d)  # a re-issue keeps the first's facts

    def _note(self, command_id: str, decision: Mapping[str, Any]) -> tuple[str, float, float]:
        """Keep what the metrics read of a command: its target, issue and deadline."""
        fact = (
            sys.intern(str(decision["target"])),  # a few targets, shared by every command
            parse_instant(str(decision["issued_at"])).timestamp(),
            parse_instant(str(decision["deadline"])).timestamp(),
        )
        self._facts[command_id] = fact
        return fact

    def _ack(
        self,
        partition: int,
        ack: dict[str, Any],
        timers: list[tuple[datetime, str]],
        dirty: set[str],
        decisions: list[tuple[Decision, dict[str, Any] | None, str | None]],
    ) -> None:
        """A target's answer: the tracker of the subject whose command it answers."""
        command_id = str(ack["command_id"])
        owners = self._owners_of(partition)
        key = owners.get(command_id)
        state = None if key is None else self.states.get(key)
        if key is None or state is None or not state.commands or command_id not in state.commands:
            # Answered already (a redelivered ack), or not a command of ours.
            owners.pop(command_id, None)
            self._facts.pop(command_id, None)
            self.unmatched_acks += 1
            return
        now = self.clocks.get(partition) or parse_instant(str(ack["completed_at"]))
        fact = None
        if self.metrics is not None:
            fact = self._facts.get(command_id) or self._note(
                command_id, state.commands[command_id].decision
            )
        state, out = self.enforcer.on_ack(state, ack, now)
        closed = not state.commands or command_id not in state.commands
        if closed:
            owners.pop(command_id, None)
            self._facts.pop(command_id, None)
        dirty.add(key)
        self._schedule(key, state, timers)
        decisions.extend((d, None, None) for d in out)
        if fact is not None:
            self._observe_ack(key, fact, ack, closed)

    def _observe_ack(
        self, key: str, fact: tuple[str, float, float], ack: Mapping[str, Any], closed: bool
    ) -> None:
        """Count an ack under its command's target (not the one the ack names: a sink
        writes that), and time the answer that closed a command."""
        assert self.metrics is not None  # noqa: S101 - checked by the caller
        target, issued, _deadline = fact
        self.metrics.observe_ack(target, ack.get("status"), key.partition(":")[0])
        if not closed:  # only done, not_found and retained close a command
            return
        try:
            # Both instants are on the records, not read here: issued_at is the
            # subject log's clock at the first issue (a re-issue keeps it), completed_at
            # the target's when it acted. Redelivery or a backlog of acks does not inflate
            # it, as the wall time of receipt would.
            completed = parse_instant(str(ack["completed_at"])).timestamp()
        except (InstantError, KeyError):
            return
        self.metrics.observe_ack_latency(target, max(0.0, completed - issued))

    def _schedule(self, key: str, state: SubjectState, timers: list[tuple[datetime, str]]) -> None:
        # One heap entry per subject, as in `Replay._schedule`.
        due = state.next_due()
        if due is None:
            # Its heap entry, if any, is skipped when popped.
            if self._scheduled.pop(key, None) is not None:
                self._count_timer(key, -1)
            return
        current = self._scheduled.get(key)
        if current is None or due < current:
            if current is None:
                self._count_timer(key, 1)
            self._scheduled[key] = due
            heapq.heappush(timers, (due, key))

    def _emit(self, decisions: list[tuple[Decision, dict[str, Any] | None, str | None]]) -> None:
        send = self.outputs.send
        encode = self.serde.encode
        tagged_topics = self._tagged_topics
        at = wall_instant(self.wall_clock())
        for decision, record, event_type in decisions:
            kind = decision["decision"]
            key = f"{decision['controller']}:{decision['subject_id']}".encode()
            version = self.enforcer.policy(decision["controller"]).version
            if kind == "tag" and record is not None and event_type is not None:
                topic = tagged_topics[event_type]
                value = encode(TAGGED_SCHEMA, tagged_record(decision, event_type, record, version))
                send(topic, key, value)
                continue
            if kind == "erasure":
                command = erasure_command(decision, version, self.signer)
                send(self._commands_topic, key, encode(ERASURE_COMMANDS.value_schema, command))
            elif kind == "escalation":
                value = encode(ERASURE_ESCALATIONS.value_schema, decision)
                send(self._escalations_topic, key, value)
            elif kind == "request_status":
                status = {**decision, "extract": _canonical(decision["extract"])}
                send(self._status_topic, key, encode(PRIVACY_REQUEST_STATUS.value_schema, status))
            send(self._audit_topic, key, encode(AUDIT.value_schema, audit_record(decision, at)))

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
        value = self.serde.encode(DEAD_LETTERS.value_schema, record)
        self.outputs.send(self._dead_letters_topic, None, value)
        if self.metrics is not None:
            self.metrics.observe_dead_letter(item["source_topic"], "invalid_event")

    def _observe(
        self,
        produced: list[int],
        optouts: list[int],
        decisions: list[Decision],
        items: int,
        written_ms: int,
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
        self.metrics.observe_subject_log_delay(max(0.0, (now_ms - written_ms) / 1000.0))

    def _changelog(self, partition: int, dirty: set[str]) -> list[bytes]:
        if not dirty and partition not in self.clocks and partition not in self.applied:
            return []
        dumps = marshal.dumps
        states = self.states
        records: list[bytes] = []
        current: dict[str, Any] = {}
        size = 0
        for key in sorted(dirty):
            packed = dumps(states[key].pack(), MARSHAL_VERSION)
            if current and size + len(packed) > CHANGELOG_RECORD_BYTES:
                records.append(_changelog_record(current))
                current, size = {}, 0
            current[key] = packed
            size += len(packed) + len(key) + 16
        clock = self.clocks.get(partition)
        if clock is not None:
            current[CLOCK_KEY] = (clock - EPOCH) // MICROSECOND
        if partition in self.applied:
            current[OFFSET_KEY] = self.applied[partition]
        records.append(_changelog_record(current))
        return records


# -- the changelog record format ------------------------------------------------------
#
# One record per micro-batch (or several for a big one): a version byte, then a marshal
# (format 2, which every Python 3 reads) dict of `controller:subject_id` -> the
# subject's `SubjectState.pack()` (itself marshalled), plus CLOCK_KEY (the partition clock,
# epoch µs) and OFFSET_KEY (the last subject-log offset applied). marshal because it is
# the cheapest encoder Python has for such data: ~3 µs a state against ~35 µs for
# `to_dict` + JSON, and half the bytes. It is not safe against crafted input, which is
# acceptable only because this topic is internal: whoever can write it can already set
# every person's state. Records written before this format (JSON, `{` first) still load.

CHANGELOG_PACKED = 1
MARSHAL_VERSION = 2  # no back-references: the same state always gives the same bytes


def _changelog_record(fields: Mapping[str, Any]) -> bytes:
    return bytes((CHANGELOG_PACKED,)) + marshal.dumps(dict(fields), MARSHAL_VERSION)


def _changelog_fields(value: bytes) -> dict[str, Any]:
    if value[:1] != bytes((CHANGELOG_PACKED,)):
        raise ValueError(f"not a packed changelog record (first byte {value[:1]!r})")
    fields = marshal.loads(value[1:])  # noqa: S302 - internal topic, see above
    if not isinstance(fields, dict):
        raise ValueError("packed changelog record is not a mapping")
    return fields


def decode_changelog(value: bytes) -> dict[str, Any]:
    """The changes of one changelog record: `controller:subject_id` -> `SubjectState`
    (None: forgotten), CLOCK_KEY -> the partition clock, OFFSET_KEY -> the last applied
    subject-log offset. Reads the packed format and the JSON one before it."""
    changes: dict[str, Any] = {}
    if value[:1] == b"{":
        for key, item in json.loads(value).items():
            if key == CLOCK_KEY:
                changes[key] = parse_instant(item)
            elif key == OFFSET_KEY:
                changes[key] = int(item)
            else:
                changes[key] = None if item is None else SubjectState.from_dict(item)
        return changes
    for key, item in _changelog_fields(value).items():
        if key == CLOCK_KEY:
            changes[key] = EPOCH + item * MICROSECOND
        elif key == OFFSET_KEY:
            changes[key] = int(item)
        else:
            changes[key] = (
                None if item is None else SubjectState.unpack(marshal.loads(item))  # noqa: S302
            )
    return changes
