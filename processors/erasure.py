"""Erasure planning, the last step of an event: one command per target system that holds
the data the earlier steps ended.

The steps before it only decide what ends, why and how (an `Ending`); `plan_endings` turns
their endings into commands, in the order they were decided.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy, RuleView
from .instants import CalendarDuration, format_instant
from .state import SubjectState

# Fixed namespace: the same cause gives the same command_id in every run and process.
COMMAND_NAMESPACE = uuid.UUID("6f1c2b8e-4d0a-5b8e-9a53-2c1f0e7d9a41")


@dataclass(frozen=True, slots=True)
class Affected:
    """Data of one purpose, in these categories (bitmask), that a cause ends."""

    purpose: str
    categories: int


@dataclass(frozen=True, slots=True)
class Cause:
    """Why and when commands are issued; `key` makes their ids unique and stable."""

    reason: str
    rule: str
    issued_at: datetime
    deadline: CalendarDuration
    key: str  # the event id, or `expiry:<instant>` for a timer
    recorded_before: datetime | None = None
    # When the obligation arose: the expiry of a timer; by default the issue itself.
    due_at: datetime | None = None
    # The privacy request that caused it, so a command can be traced to the person's ask.
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ending:
    """A step's decision that the affected data ends by `action` (erase, anonymize,
    restrict) for `cause`; `plan_endings` turns it into commands."""

    action: str
    affected: Sequence[Affected]
    cause: Cause


def release(
    policy: CompiledPolicy, state: SubjectState, which: Callable[[RuleView], bool]
) -> list[Affected]:
    """Drop the holds of the rules `which` selects; return what they held."""
    out: list[Affected] = []
    for view in policy.rules:
        if view.id in state.holds and which(view):
            hold = state.holds.pop(view.id)
            out.append(Affected(view.purpose, hold.categories))
    return out


def restrict(
    policy: CompiledPolicy, state: SubjectState, which: Callable[[RuleView], bool]
) -> list[Affected]:
    """Mark the holds of the rules `which` selects restricted (kept, not used); return those
    not restricted before."""
    out: list[Affected] = []
    for view in policy.rules:
        hold = state.holds.get(view.id)
        if hold is not None and not hold.restricted and which(view):
            hold.restricted = True
            out.append(Affected(view.purpose, hold.categories))
    return out


def command_id(controller: str, subject_id: str, target: str, action: str, cause: Cause) -> str:
    """Deterministic id: redelivery of the same cause yields the same id."""
    name = "|".join((controller, subject_id, target, action, cause.reason, cause.rule, cause.key))
    return str(uuid.uuid5(COMMAND_NAMESPACE, name))


def plan_commands(
    policy: CompiledPolicy,
    subject_id: str,
    action: str,
    affected: Sequence[Affected],
    cause: Cause,
) -> list[dict[str, Any]]:
    """One `erasure` decision per target holding any affected category for its purpose."""
    out: list[dict[str, Any]] = []
    if not affected:
        return out
    issued = format_instant(cause.issued_at)
    deadline = format_instant(cause.deadline.after(cause.issued_at, policy.zone))
    due_at = issued if cause.due_at is None else format_instant(cause.due_at)
    for rec in policy.pack.recipients:
        held = policy.bits(rec.categories)
        purposes: list[str] = []
        cats = 0
        for a in affected:
            if a.purpose in rec.purposes and a.categories & held:
                if a.purpose not in purposes:
                    purposes.append(a.purpose)
                cats |= a.categories & held
        if not purposes:
            continue
        decision: dict[str, Any] = {
            "decision": "erasure",
            "command_id": command_id(policy.controller, subject_id, rec.id, action, cause),
            "controller": policy.controller,
            "subject_id": subject_id,
            "target": rec.id,
            "action": action,
            "purposes": purposes,
            "categories": policy.names(cats),
            "reason": cause.reason,
            "rule": cause.rule,
            "issued_at": issued,
            "deadline": deadline,
            "due_at": due_at,
        }
        if cause.request_id is not None:
            decision["request_id"] = cause.request_id
        if cause.recorded_before is not None:
            decision["recorded_before"] = format_instant(cause.recorded_before)
        out.append(decision)
    return out


def plan_endings(
    policy: CompiledPolicy, subject_id: str, endings: Sequence[Ending]
) -> list[dict[str, Any]]:
    """The commands of every ending, in the order the steps decided them."""
    out: list[dict[str, Any]] = []
    for ending in endings:
        out += plan_commands(policy, subject_id, ending.action, ending.affected, ending.cause)
    return out
