"""Retention timers: when data kept under a rule expires, and what moves that instant."""

from __future__ import annotations

from bisect import insort
from datetime import datetime

from .compiled import CompiledPolicy, RuleView, matches
from .events import Event
from .instants import end_of_calendar_year
from .state import RuleHold

PER_RECORD = frozenset({"event", "calendar_year_end"})


def record(
    policy: CompiledPolicy,
    view: RuleView,
    hold: RuleHold | None,
    event: Event,
    role: str,
    categories: int,
) -> tuple[RuleHold, datetime | None]:
    """Keep the event's data under the rule; return the hold and the record's expiry."""
    at = event.occurred_at
    cats = (view.categories & categories) or view.categories
    if hold is None:
        hold = RuleHold(categories=cats, last=at)
    else:
        hold.categories |= cats
        if at > hold.last:
            hold.last = at
    kind = view.kind
    zone = policy.zone
    if kind in PER_RECORD:
        base = at if kind == "event" else end_of_calendar_year(at, zone)
        expires = view.duration.after(base, zone)
        _add_pending(hold, expires, at, policy)
        return hold, expires
    if kind == "latest_activity":
        activity = view.rule.retention.activity or ()
        if hold.anchor is None or (
            at > hold.anchor and any(matches(m, event, role) for m in activity)
        ):
            hold.anchor = at
        hold.due = view.duration.after(hold.anchor, zone)
        return hold, hold.due
    if kind == "relationship_end":
        if hold.ended and not policy.ends_relationship(view, event, role):
            # A new record after the end means the relationship goes on again.
            hold.ended, hold.anchor, hold.due = False, None, None
        if not hold.ended and policy.ends_relationship(view, event, role):
            end_relationship(policy, view, hold, at)
        return hold, hold.due
    return hold, None  # until_withdrawn, until_objection: open-ended


def end_relationship(policy: CompiledPolicy, view: RuleView, hold: RuleHold, at: datetime) -> None:
    """The relationship ended at `at`: the rule's data now expires `duration` later."""
    hold.ended = True
    hold.anchor = at
    hold.due = view.duration.after(at, policy.zone)


def _add_pending(hold: RuleHold, expires: datetime, at: datetime, policy: CompiledPolicy) -> None:
    # One bucket per local day of expiry: culling runs per day, so a daily visitor costs
    # one timer a day, not one per click. A bucket fires at the latest expiry in it, so
    # nothing is erased before its time.
    pending = hold.pending
    if pending is None:
        hold.pending = [(expires, at)]
        hold.due = expires
        return
    day = expires.astimezone(policy.zone).date()
    for i, (due, covered) in enumerate(pending):
        if due.astimezone(policy.zone).date() == day:
            pending[i] = (max(due, expires), max(covered, at))
            break
    else:
        insort(pending, (expires, at))
    hold.due = pending[0][0]


def expire_next(view: RuleView, hold: RuleHold) -> tuple[bool, datetime | None]:
    """Take the due part of a hold; return (hold now empty, records covered up to)."""
    if view.kind in PER_RECORD and hold.pending:
        _, covered = hold.pending.pop(0)
        if hold.pending:
            hold.due = hold.pending[0][0]
            return False, covered
        return True, covered
    return True, None
