"""Erasure planning: one command per target system that holds the affected data."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy
from .instants import CalendarDuration, format_instant

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
        }
        if cause.recorded_before is not None:
            decision["recorded_before"] = format_instant(cause.recorded_before)
        out.append(decision)
    return out
