"""The command tracker: every erasure command followed from issued to answered.

A command stays open until its target answers `done`, `not_found` or `retained`. A
`failed` answer that may succeed later (`retryable`), or no answer within the ack
timeout, re-issues it: the same `command_id`, the next `attempt`, after a back-off that
doubles each time. After `max_attempts`, past its deadline, or on a failure that will not
go away by itself, it is escalated to a person (an `escalation` decision) and left alone.

Pure like every processor: time is the `now` passed in (the subject log's clock, moved
by events and ticks), so a replay decides the same re-issues at the same instants. The
open commands live in the subject's state, so they survive a restart exactly as the rest
of it does. `evaluate` runs without a tracker: offline there is nobody to answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .instants import format_instant
from .state import SubjectState, TrackedCommand, TrackedRequest, micros

__all__ = ["ANSWERED", "Tracking", "on_ack", "open_request", "retry_due", "track"]

ANSWERED = frozenset({"done", "not_found", "retained"})
"""Ack statuses that close a command: acted on, nothing to act on, or kept restricted."""


@dataclass(frozen=True, slots=True)
class Tracking:
    """How long to wait for an answer, and how often to ask again."""

    ack_timeout: timedelta = timedelta(minutes=10)
    max_attempts: int = 5
    backoff_cap: timedelta = timedelta(hours=6)

    def wait(self, attempt: int) -> timedelta:
        """How long to wait for the answer to `attempt` (1, 2, ...): doubling, capped."""
        wait: timedelta = self.ack_timeout * 2 ** (attempt - 1)
        return min(wait, self.backoff_cap)


def track(state: SubjectState, commands: list[dict[str, Any]], now: datetime, t: Tracking) -> None:
    """Open (or re-open, for a re-issue) each erasure decision in `commands`."""
    for command in commands:
        attempt = int(command.get("attempt", 1))
        if state.commands is None:
            state.commands = {}
        state.commands[command["command_id"]] = TrackedCommand(
            command, attempt, now + t.wait(attempt)
        )


def on_ack(
    state: SubjectState, ack: Mapping[str, Any], now: datetime, t: Tracking
) -> list[dict[str, Any]]:
    """Apply a target's answer; return the escalation and request status it causes.

    `done`, `not_found` and `retained` close the command whatever attempt they answer: the
    target acted (a sink answers a redelivered command with the ack it stored the first
    time). A failure of an earlier attempt than the open one is late: the re-issue is
    already out, and its own answer decides.
    """
    commands = state.commands
    tracked = None if commands is None else commands.get(str(ack["command_id"]))
    if commands is None or tracked is None:
        return []
    status = str(ack["status"])
    if status not in ANSWERED and int(ack.get("attempt", 1)) < tracked.attempt:
        return []
    if status in ANSWERED:
        del commands[str(ack["command_id"])]
        if not commands:
            state.commands = None
        return _settle(state, tracked, status, now)
    if status == "failed" and not ack.get("retryable", False):
        escalation = _escalate(tracked, now, "failed", ack.get("detail"))
        return [escalation, *_settle(state, tracked, "escalated", now)]
    # A retryable failure: ask again once the back-off has passed, not at once (an
    # escalated command stays with the person it went to).
    if tracked.next_try is not None:
        tracked.next_try = min(tracked.next_try, now + t.wait(tracked.attempt))
    return []


def retry_due(state: SubjectState, now: datetime, t: Tracking) -> list[dict[str, Any]]:
    """Re-issue or escalate every open command whose wait has run out by `now`."""
    if not state.commands:
        return []
    out: list[dict[str, Any]] = []
    now_us = micros(now)
    due = [
        c for c in state.commands.values() if c.wait_until is not None and c.wait_until <= now_us
    ]
    for tracked in sorted(due, key=_due_order):
        if tracked.attempt >= t.max_attempts or now >= tracked.deadline:
            why = "attempts_exhausted" if tracked.attempt >= t.max_attempts else "deadline_passed"
            out.append(_escalate(tracked, now, why, None))
            out += _settle(state, tracked, "escalated", now)
        else:
            tracked.attempt += 1
            tracked.next_try = now + t.wait(tracked.attempt)
            out.append(tracked.decision)
    return out


def _due_order(tracked: TrackedCommand) -> tuple[int, bytes]:
    # The packed bytes start with the command_id: a stable tie-break without decoding.
    return tracked.wait_until or 0, tracked.packed


def _escalate(tracked: TrackedCommand, now: datetime, why: str, detail: Any) -> dict[str, Any]:
    """Hand the command to a person: stop re-issuing it, keep it open for a late answer."""
    tracked.next_try = None
    d = tracked.decision
    escalation: dict[str, Any] = {
        "decision": "escalation",
        "command_id": d["command_id"],
        "controller": d["controller"],
        "subject_id": d["subject_id"],
        "target": d["target"],
        "action": d["action"],
        "reason": why,
        "attempt": tracked.attempt,
        "deadline": d["deadline"],
        "escalated_at": format_instant(now),
        "request_id": d.get("request_id"),
        "detail": None if detail is None else str(detail),
    }
    return escalation


# -- privacy requests ---------------------------------------------------------------------


def open_request(
    state: SubjectState,
    request: Mapping[str, Any],
    decisions: list[dict[str, Any]],
    received_at: datetime,
    due_at: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The status of a privacy request just answered: `in_progress` while its commands are
    open, `completed` at once when it needs none (an extract, nothing held)."""
    request_id = str(request["request_id"])
    outcomes = {
        d["command_id"]: [d["target"], "pending"]
        for d in decisions
        if d["decision"] == "erasure" and d.get("request_id") == request_id
    }
    tracked = TrackedRequest(str(request["right"]), received_at, due_at, outcomes)
    extract = next((d for d in decisions if d["decision"] == "extract"), None)
    if outcomes:
        if state.requests is None:
            state.requests = {}
        state.requests[request_id] = tracked
    return _status(request, request_id, tracked, now, extract)


def _settle(
    state: SubjectState, command: TrackedCommand, outcome: str, now: datetime
) -> list[dict[str, Any]]:
    """Note a command's outcome in its request; the request's status when it changed."""
    request_id = command.decision.get("request_id")
    requests = state.requests
    tracked = None if requests is None or request_id is None else requests.get(request_id)
    if requests is None or tracked is None:
        return []
    entry = tracked.outcomes.get(str(command.decision["command_id"]))
    if entry is None or entry[1] == outcome:
        return []
    entry[1] = outcome
    status = _rollup(tracked)
    if status == "in_progress":
        return []
    del requests[str(request_id)]
    if not requests:
        state.requests = None
    return [_status(command.decision, str(request_id), tracked, now, None)]


def _rollup(tracked: TrackedRequest) -> str:
    outcomes = [outcome for _target, outcome in tracked.outcomes.values()]
    if not outcomes or all(o in ANSWERED for o in outcomes):
        return "completed"
    if "pending" in outcomes:
        return "in_progress"
    return "partially_completed" if any(o in ANSWERED for o in outcomes) else "failed"


def _status(
    about: Mapping[str, Any],
    request_id: str,
    tracked: TrackedRequest,
    now: datetime,
    extract: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "decision": "request_status",
        "request_id": request_id,
        "controller": about["controller"],
        "subject_id": about["subject_id"],
        "right": tracked.right,
        "status": _rollup(tracked),
        "received_at": format_instant(tracked.received_at),
        "due_at": format_instant(tracked.due_at),
        "updated_at": format_instant(now),
        "targets": [
            {"target": target, "command_id": command_id, "outcome": outcome}
            for command_id, (target, outcome) in tracked.outcomes.items()
        ],
        "extract": None if extract is None else dict(extract),
    }
