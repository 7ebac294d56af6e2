"""Offline replay with a simulated clock: the engine behind `evaluate` and audit replay.

The clock starts at the first event's `occurred_at` and only moves forward: before each
event it advances to that event's time and fires every retention timer due by then;
`finish` advances to the end instant and fires what is due. Same input, same output.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from sys import intern
from typing import Any

from .enforcer import Decision, PolicyEnforcer
from .events import EventError, parse_event
from .state import SubjectState

SubjectKey = str  # `controller:subject_id`, the subject-log key


class Replay:
    """Runs events through the enforcer in order, with timers on a simulated clock."""

    def __init__(self, enforcer: PolicyEnforcer) -> None:
        self.enforcer = enforcer
        self.states: dict[SubjectKey, SubjectState] = {}
        self.clock: datetime | None = None
        self._timers: list[tuple[datetime, str]] = []
        self._timer_count = 0

    def process_line(self, number: int, line: str | bytes) -> list[Decision]:
        """One input line: its decisions, or a `reject` naming the problem."""
        try:
            # Decode ourselves: json.loads would guess UTF-16 from some byte patterns.
            obj = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            return [_reject(number, None, f"not valid JSON: {msg}")]
        try:
            event = parse_event(obj)
            policy_known = event.controller in self.enforcer.policies
            if not policy_known:
                raise EventError("controller", "unknown controller (no policy pack)")
        except EventError as exc:
            event_id = obj.get("event_id") if isinstance(obj, dict) else None
            return [_reject(number, event_id if isinstance(event_id, str) else None, str(exc))]
        out = self.advance(event.occurred_at)
        now = self.clock
        assert now is not None  # noqa: S101 - set by advance
        key = intern(event.key)  # one shared copy for the state table and the timer heap
        previous = self.states.get(key)
        state, decisions = self.enforcer.on_event(previous, event, now)
        if previous is None:
            self.states[key] = state
        self._schedule(key, state)
        out.extend(decisions)
        return out

    def advance(self, instant: datetime) -> list[Decision]:
        """Move the clock forward to `instant` (never back) and fire the timers due."""
        if self.clock is None or instant > self.clock:
            self.clock = instant
        now = self.clock
        out: list[Decision] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, key = heapq.heappop(timers)
            state = self.states[key]
            if state.timer != due:
                continue  # superseded by an earlier schedule, or no longer set
            actual = state.next_due()
            if actual is not None and actual > due:
                # The timer moved later since this entry was pushed: requeue it, so that
                # subjects fire in the order of their real due instants.
                state.timer = actual
                heapq.heappush(timers, (actual, key))
                continue
            state.timer = None
            self._timer_count -= 1
            controller, subject_id = key.split(":", 1)
            state, decisions = self.enforcer.on_time(state, controller, subject_id, now)
            out.extend(decisions)
            self._schedule(key, state)
        return out

    def _schedule(self, key: SubjectKey, state: SubjectState) -> None:
        # One heap entry per subject: a timer that moves later keeps its earlier entry,
        # which wakes the subject early, finds nothing due and is pushed again then.
        due = state.next_due()
        current = state.timer
        if due is None:
            if current is not None:
                state.timer = None  # its heap entry is skipped when popped
                self._timer_count -= 1
            return
        if current is None or due < current:
            if current is None:
                self._timer_count += 1
            state.timer = due
            heapq.heappush(self._timers, (due, key))

    def restore(self, states: dict[SubjectKey, SubjectState]) -> None:
        """Continue from saved subject states (e.g. a snapshot): rebuild the timer index."""
        self.states = {intern(k): v for k, v in states.items()}
        self._timers = []
        self._timer_count = 0
        for key, state in self.states.items():
            state.timer = None
            self._schedule(key, state)

    def pending_timers(self) -> int:
        """Subjects with a retention timer set."""
        return self._timer_count

    def run(
        self, lines: Iterable[str | bytes], until: datetime | None = None
    ) -> Iterator[Decision]:
        """All decisions for the lines, then those due by `until` (default: the last event)."""
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            yield from self.process_line(number, line)
        if self.clock is not None:
            yield from self.advance(until or self.clock)
        elif until is not None:
            yield from self.advance(until)


def _reject(number: int, event_id: str | None, error: str) -> Decision:
    return {"decision": "reject", "line": number, "event_id": event_id, "error": error}


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_decision(decision: dict[str, Any]) -> str:
    """Canonical JSON for a decision: compact, key order as built, UTF-8."""
    return _ENCODER.encode(decision)
