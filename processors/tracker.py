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

from .instants import format_instant, parse_instant
from .state import SubjectState, TrackedCommand

__all__ = ["ANSWERED", "Tracking", "on_ack", "retry_due", "track"]

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
            decision=dict(command),
            attempt=attempt,
            deadline=parse_instant(command["deadline"]),
            next_try=now + t.wait(attempt),
        )


def on_ack(
    state: SubjectState, ack: Mapping[str, Any], now: datetime, t: Tracking
) -> list[dict[str, Any]]:
    """Apply a target's answer; return the escalation it causes, if any.

    An answer to an earlier attempt than the open one is late: the re-issue is already
    out, and its own answer decides.
    """
    commands = state.commands
    tracked = None if commands is None else commands.get(str(ack["command_id"]))
    if commands is None or tracked is None or int(ack.get("attempt", 1)) < tracked.attempt:
        return []
    status = str(ack["status"])
    if status in ANSWERED:
        del commands[str(ack["command_id"])]
        if not commands:
            state.commands = None
        return []
    if status == "failed" and not ack.get("retryable", False):
        return [_escalate(tracked, now, "failed", ack.get("detail"))]
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
    for tracked in sorted(state.commands.values(), key=_due_order):
        if tracked.next_try is None or tracked.next_try > now:
            continue
        if tracked.attempt >= t.max_attempts:
            out.append(_escalate(tracked, now, "attempts_exhausted", None))
        elif now >= tracked.deadline:
            out.append(_escalate(tracked, now, "deadline_passed", None))
        else:
            again = {**tracked.decision, "attempt": tracked.attempt + 1}
            tracked.decision = again
            tracked.attempt += 1
            tracked.next_try = now + t.wait(tracked.attempt)
            out.append(again)
    return out


def _due_order(tracked: TrackedCommand) -> tuple[datetime, str]:
    due = tracked.next_try or datetime.max.replace(tzinfo=tracked.deadline.tzinfo)
    return due, str(tracked.decision["command_id"])


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
