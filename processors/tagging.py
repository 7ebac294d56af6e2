"""The tag step: what one record may be used for, on which legal basis, and until when.

For every rule that applies to the record, in pack order: the consent check
(`optout.suppression`) says whether its purpose may be used now; retention keeps the
record under the rule (`retention.record`) and gives the record's expiry; the legal basis
is the rule's, or its inactive basis once the person is no longer active.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy, RuleView
from .events import Event
from .instants import format_instant
from .optout import suppression
from .retention import record
from .state import RuleHold, SubjectState


def tag_record(
    policy: CompiledPolicy, state: SubjectState, event: Event, ended: Set[str]
) -> dict[str, Any]:
    """The `tag` decision of a customer, order or click record; keeps its data under each
    rule that applies, except the rules in `ended` (their data this record ended)."""
    role = state.role
    # What the person has given us so far travels with each record about them: an
    # invoice names who was invoiced even when the event carries only the order.
    categories = policy.categories_of(event)
    state.categories |= categories
    categories |= state.categories
    purposes: list[dict[str, Any]] = []
    suppressed: list[dict[str, str]] = []
    # Nothing to check for most people: no consent given or refused, nothing restricted.
    checks = bool(state.ledger.entries or state.restricted)
    for view in policy.rules_for(event, role):
        if view.id in ended:
            continue
        reason = suppression(view, state) if (checks or view.consent) else None
        if reason is not None:
            if not any(s["purpose"] == view.purpose for s in suppressed):
                suppressed.append({"purpose": view.purpose, "reason": reason})
            if reason != "restriction_request":
                continue
        hold, expires = record(
            policy, view, state.holds.get(view.id), event, role, categories, state
        )
        state.holds[view.id] = hold
        if reason is not None:
            # Restricted data is still kept (and still expires), but not used.
            hold.restricted = True
            continue
        purposes.append(
            {
                "purpose": view.purpose,
                "legal_basis": legal_basis(policy, view, hold, event.occurred_at),
                "expires_at": None if expires is None else format_instant(expires),
                "rule": view.id,
            }
        )
    return {
        "decision": "tag",
        "event_id": event.event_id,
        "controller": event.controller,
        "subject_id": event.subject_id,
        "purposes": purposes,
        "suppressed": suppressed,
    }


def legal_basis(policy: CompiledPolicy, view: RuleView, hold: RuleHold, at: datetime) -> str:
    """The rule's legal basis at `at`: its inactive basis once the person's latest activity
    is more than `active_for` ago."""
    rule = view.rule
    if view.active_for is not None and rule.inactive_legal_basis and hold.anchor is not None:
        if at >= view.active_for.after(hold.anchor, policy.zone):
            return rule.inactive_legal_basis
    return rule.legal_basis
