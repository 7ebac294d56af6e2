"""Retention: when data kept under a rule expires, what moves or ends it, and the timers.

Two steps of an event live here: `end_by_record` (what a record ends before it is kept:
a closed account, an ended relationship) and `fire_due` (the timers due by the clock).
"""

from __future__ import annotations

from array import array
from bisect import insort
from collections.abc import Set
from datetime import datetime, timedelta

from .compiled import CompiledPolicy, RuleView
from .erasure import Affected, Cause, Ending, release
from .events import Event
from .instants import EPOCH, end_of_calendar_year
from .policy import Trigger
from .state import RuleHold, SubjectState

PER_RECORD = frozenset({"event", "calendar_year_end"})
_MICRO = timedelta(microseconds=1)
_NONE: frozenset[str] = frozenset()


def to_micros(instant: datetime) -> int:
    """Epoch microseconds, exact."""
    return (instant - EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    """Inverse of to_micros, in UTC."""
    return EPOCH + timedelta(microseconds=micros)


def record_expiry(policy: CompiledPolicy, view: RuleView, at: datetime) -> datetime:
    """When one record kept under a per-record rule expires."""
    base = at if view.kind == "event" else end_of_calendar_year(at, policy.zone)
    return view.duration.after(base, policy.zone)


def record(
    policy: CompiledPolicy,
    view: RuleView,
    hold: RuleHold | None,
    event: Event,
    role: str,
    categories: int,
    state: SubjectState,
) -> tuple[RuleHold, datetime | None]:
    """Keep the event's data under the rule; return the hold and the record's expiry."""
    at = event.occurred_at
    cats = view.categories & categories
    if hold is None:
        # An event carrying none of the rule's categories still leaves a trace under it.
        hold = RuleHold(categories=cats or view.categories, last=at)
    else:
        hold.categories |= cats
        if at > hold.last:
            hold.last = at
    kind = view.kind
    if kind in PER_RECORD:
        expires = record_expiry(policy, view, at)
        micros = to_micros(at)
        if not hold.pending:
            hold.pending = array("q", [micros])
            hold.due = expires
        elif micros >= hold.pending[-1]:
            hold.pending.append(micros)  # in order: the earliest record, and due, stay
        else:
            items = list(hold.pending)
            insort(items, micros)
            hold.pending = array("q", items)
            hold.due = record_expiry(policy, view, from_micros(items[0]))
        return hold, expires
    if kind == "latest_activity":
        if hold.anchor is None:
            # A new hold counts from the latest activity while that still keeps data alive
            # (a complaint after a purchase: five years from the purchase); an activity
            # whose period has run out starts nothing, so the record counts from itself.
            hold.anchor = at
            latest = _latest_activity(view, state)
            if latest is not None and view.duration.after(latest, policy.zone) > at:
                hold.anchor = latest
        slide(policy, view, hold, state)
        return hold, hold.due
    if kind == "relationship_end":
        ends = policy.ends_relationship(view, event, role)
        if hold.ended and not ends:
            # A new record after the end means the relationship goes on again.
            hold.ended, hold.anchor, hold.due = False, None, None
        if not hold.ended and ends:
            end_relationship(policy, view, hold, at)
        return hold, hold.due
    return hold, None  # until_withdrawn, until_objection: open-ended


def _latest_activity(view: RuleView, state: SubjectState) -> datetime | None:
    latest: datetime | None = None
    if state.activity:
        for key in view.activity_keys:
            seen = state.activity.get(key)
            if seen is not None and (latest is None or seen > latest):
                latest = seen
    return latest


def slide(policy: CompiledPolicy, view: RuleView, hold: RuleHold, state: SubjectState) -> None:
    """Move a sliding retention forward to the latest activity (never back)."""
    latest = _latest_activity(view, state)
    moved = hold.due is None
    if latest is not None and (hold.anchor is None or latest > hold.anchor):
        hold.anchor = latest
        moved = True
    if moved and hold.anchor is not None:
        hold.due = view.duration.after(hold.anchor, policy.zone)


def note_activity(policy: CompiledPolicy, state: SubjectState, event: Event) -> None:
    """Remember an activity and move every sliding retention that counts from it."""
    key = f"{event.type}:{event.action}"
    if key not in policy.activity_keys:
        return
    if state.activity is None:
        state.activity = {}
    seen = state.activity.get(key)
    if seen is not None and seen >= event.occurred_at:
        return
    state.activity[key] = event.occurred_at
    for view in policy.sliding_rules:
        hold = state.holds.get(view.id)
        if hold is not None and key in view.activity_keys:
            slide(policy, view, hold, state)


def end_relationship(policy: CompiledPolicy, view: RuleView, hold: RuleHold, at: datetime) -> None:
    """The relationship ended at `at`: the rule's data now expires `duration` later."""
    hold.ended = True
    hold.anchor = at
    hold.due = view.duration.after(at, policy.zone)


def expire_due(
    policy: CompiledPolicy, view: RuleView, hold: RuleHold, now: datetime
) -> tuple[bool, datetime | None]:
    """Take the records due at the hold's earliest expiry (each expiry instant is its own
    timer); return (hold now empty, records covered up to)."""
    pending = hold.pending
    if view.kind in PER_RECORD and pending:
        covered = None
        first = hold.due if hold.due is not None else now
        while pending and record_expiry(policy, view, from_micros(pending[0])) <= first:
            covered = pending.pop(0)
        if pending:
            hold.due = record_expiry(policy, view, from_micros(pending[0]))
            return False, None if covered is None else from_micros(covered)
        return True, None if covered is None else from_micros(covered)
    return True, None


def end_by_record(
    policy: CompiledPolicy,
    state: SubjectState,
    event: Event,
    now: datetime,
    endings: list[Ending],
) -> Set[str]:
    """What a record ends before it is kept: the purposes of the triggers it sets off (an
    account the person closed) and the relationships it ends. Appends those endings;
    returns the rules whose data went at once, which the record is not kept under."""
    role = state.role
    triggers = policy.triggers_for(event, role)
    relationships = policy.relationships_ended_by(event, role)
    if not triggers and not relationships:
        return _NONE
    ended: set[str] = set()
    for trig in triggers:
        ended.update(_set_off(policy, state, trig, event, now, endings))
    for view in relationships:
        if view.duration.is_zero():
            ended.add(view.id)
            hold = state.holds.pop(view.id, None)
            if hold is not None:
                cause = Cause(
                    "relationship_ended", view.id, now, policy.retention_deadline, event.event_id
                )
                affected = [Affected(view.purpose, hold.categories)]
                endings.append(Ending(view.rule.on_expiry, affected, cause))
        else:
            hold = state.holds.get(view.id)
            if hold is not None and not hold.ended:
                end_relationship(policy, view, hold, event.occurred_at)
    return ended


def _set_off(
    policy: CompiledPolicy,
    state: SubjectState,
    trig: Trigger,
    event: Event,
    now: datetime,
    endings: list[Ending],
) -> list[str]:
    """A trigger ends its purposes at once; returns the rules it ends."""
    affected = release(policy, state, lambda v: v.purpose in trig.purposes)
    cause = Cause(trig.reason, trig.id, now, policy.trigger_deadlines[trig.id], event.event_id)
    endings.append(Ending(trig.action, affected, cause))
    return [v.id for v in policy.rules if v.purpose in trig.purposes]


def fire_due(
    policy: CompiledPolicy,
    state: SubjectState,
    now: datetime,
    endings: list[Ending],
    during: str = "",
) -> None:
    """Fire every retention timer of the subject due by `now`, earliest first: append the
    ending of the data each one covers. `during`: the id of the event being applied, if
    any."""
    while True:
        due_id, due_hold = _earliest(state.holds, now)
        if due_id is None or due_hold is None or due_hold.due is None:
            return
        view = policy.rule_by_id[due_id]
        due = due_hold.due
        last = due_hold.last
        emptied, covered = expire_due(policy, view, due_hold, now)
        if emptied:
            del state.holds[due_id]
        cause = Cause(
            "retention_expired",
            view.id,
            now,
            policy.retention_deadline,
            # The event id keeps a late record's command, fired as it is applied, apart
            # from an identical-looking earlier one.
            f"expiry:{due.isoformat()}:{(covered or last).isoformat()}:{during}",
            covered if view.kind in PER_RECORD else None,
            due_at=due,
        )
        affected = [Affected(view.purpose, due_hold.categories)]
        endings.append(Ending(view.rule.on_expiry, affected, cause))


def _earliest(holds: dict[str, RuleHold], now: datetime) -> tuple[str | None, RuleHold | None]:
    best_id: str | None = None
    best: RuleHold | None = None
    for rid, hold in holds.items():
        due = hold.due
        if due is not None and due <= now and (best is None or best.due is None or due < best.due):
            best_id, best = rid, hold
    return best_id, best
