"""The policy enforcer: `(state, event, clock) -> (state, decisions)` for every subject.

The same object runs inside `evaluate`, the live faust agent and audit replay. It never
reads the wall clock: `now` is passed in, and retention timers fire only in `on_time`.
The state passed in is updated in place and returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy, RuleView
from .consent import ConsentEntry
from .erasure import Affected, Cause, plan_commands
from .events import Event, EventError
from .instants import format_instant
from .policy import PolicyPack
from .retention import PER_RECORD, end_relationship, expire_due, note_activity, record
from .rights import build_extract, build_rectify
from .state import RuleHold, SubjectState
from .vocabulary import EVENT_TYPES

Decision = dict[str, Any]

TAGGED_TYPES = frozenset({"customer", "order", "click"})
_SOURCE_BIT = {t: 1 << i for i, t in enumerate(sorted(EVENT_TYPES))}
RESTRICT_ALL = "*"


class PolicyEnforcer:
    """Applies each controller's policy pack to events and to the passing of time."""

    def __init__(self, packs: Mapping[str, PolicyPack]) -> None:
        self.policies = {cid: CompiledPolicy(p) for cid, p in packs.items()}

    def policy(self, controller: str) -> CompiledPolicy:
        """The compiled pack of a controller; EventError if there is none."""
        found = self.policies.get(controller)
        if found is None:
            raise EventError("controller", "unknown controller (no policy pack)")
        return found

    # -- events -------------------------------------------------------------

    def on_event(
        self, state: SubjectState | None, event: Event, now: datetime
    ) -> tuple[SubjectState, list[Decision]]:
        """Apply one event at clock `now`; then fire whatever of this subject is due."""
        policy = self.policy(event.controller)
        if state is None:
            state = SubjectState()
        if state.seen(event.event_id):
            return state, []
        state.sources |= _SOURCE_BIT[event.type]
        if event.type == "customer" and event.role:
            state.role = event.role
        if event.action is not None and event.type in TAGGED_TYPES:
            note_activity(policy, state, event)
        if event.type in TAGGED_TYPES:
            decisions = self._record(policy, state, event, now)
        elif event.type == "consent":
            decisions = self._consent(policy, state, event, now)
        else:
            decisions = self._request(policy, state, event, now)
        # Data recorded already past its expiry (a late event) goes at once; the event id in
        # the cause keeps that command apart from an identical-looking earlier one.
        decisions.extend(self._fire(policy, state, event.subject_id, now, event.event_id))
        return state, decisions

    def on_time(
        self, state: SubjectState, controller: str, subject_id: str, now: datetime
    ) -> tuple[SubjectState, list[Decision]]:
        """The clock reached `now`: fire every retention timer of the subject due by then."""
        return state, self._fire(self.policy(controller), state, subject_id, now)

    # -- tagging ------------------------------------------------------------

    def _record(
        self, policy: CompiledPolicy, state: SubjectState, event: Event, now: datetime
    ) -> list[Decision]:
        role = state.role
        commands: list[Decision] = []
        ended_purposes: set[str] = set()
        for trig in policy.triggers_for(event, role):
            ended_purposes.update(trig.purposes)
            affected = self._release(policy, state, lambda v, t=trig: v.purpose in t.purposes)
            cause = Cause(
                trig.reason, trig.id, now, policy.trigger_deadlines[trig.id], event.event_id
            )
            commands.extend(plan_commands(policy, event.subject_id, trig.action, affected, cause))
        closed_rules = self._end_relationships(policy, state, event, role, now, commands)

        # What the person has given us so far travels with each record about them: an
        # invoice names who was invoiced even when the event carries only the order.
        event_cats = policy.categories_of(event)
        state.categories |= event_cats
        event_cats |= state.categories
        purposes: list[dict[str, Any]] = []
        suppressed: list[dict[str, str]] = []
        checks = bool(state.ledger.entries or state.restricted)
        for view in policy.rules_for(event, role):
            if view.purpose in ended_purposes or view.id in closed_rules:
                continue
            reason = _suppression(view, state) if (checks or view.consent) else None
            if reason is not None:
                if not any(s["purpose"] == view.purpose for s in suppressed):
                    suppressed.append({"purpose": view.purpose, "reason": reason})
                if reason != "restriction_request":
                    continue
            hold, expires = record(
                policy, view, state.holds.get(view.id), event, role, event_cats, state
            )
            state.holds[view.id] = hold
            if reason is not None:
                hold.restricted = True
                continue
            purposes.append(
                {
                    "purpose": view.purpose,
                    "legal_basis": _basis(view, hold, event.occurred_at, policy),
                    "expires_at": None if expires is None else format_instant(expires),
                    "rule": view.id,
                }
            )
        tag: Decision = {
            "decision": "tag",
            "event_id": event.event_id,
            "controller": event.controller,
            "subject_id": event.subject_id,
            "purposes": purposes,
            "suppressed": suppressed,
        }
        return [tag, *commands]

    def _end_relationships(
        self,
        policy: CompiledPolicy,
        state: SubjectState,
        event: Event,
        role: str,
        now: datetime,
        commands: list[Decision],
    ) -> set[str]:
        """Relationships this event ends; returns the rules whose data goes at once."""
        closed: set[str] = set()
        for view in policy.relationships_ended_by(event, role):
            if view.duration.is_zero():
                closed.add(view.id)
                hold = state.holds.pop(view.id, None)
                if hold is not None:
                    cause = Cause(
                        "relationship_ended",
                        view.id,
                        now,
                        policy.retention_deadline,
                        event.event_id,
                    )
                    commands.extend(
                        plan_commands(
                            policy,
                            event.subject_id,
                            view.rule.on_expiry,
                            [Affected(view.purpose, hold.categories)],
                            cause,
                        )
                    )
            else:
                hold = state.holds.get(view.id)
                if hold is not None and not hold.ended:
                    end_relationship(policy, view, hold, event.occurred_at)
        return closed

    # -- consent and objection ----------------------------------------------

    def _consent(
        self, policy: CompiledPolicy, state: SubjectState, event: Event, now: datetime
    ) -> list[Decision]:
        purpose = event.purpose or ""
        action = event.action or ""
        state.ledger = state.ledger.append(
            ConsentEntry(purpose, action, event.channel or "", event.occurred_at, event.event_id)
        )
        if action == "grant":
            return []
        rests_on_consent = any(
            v.purpose == purpose and v.rule.legal_basis == "consent" for v in policy.rules
        )
        if action == "withdraw" and rests_on_consent:
            affected = self._release(
                policy,
                state,
                lambda v: v.purpose == purpose and v.rule.legal_basis == "consent",
            )
            cause = Cause(
                "consent_withdrawn",
                f"{policy.controller}.consent.withdrawal",
                now,
                policy.optout_deadline,
                event.event_id,
            )
            return plan_commands(policy, event.subject_id, "erase", affected, cause)
        # An unsubscribe from a purpose resting on legitimate interest is an objection.
        return self._object(policy, state, event, (purpose,), now)

    def _object(
        self,
        policy: CompiledPolicy,
        state: SubjectState,
        event: Event,
        purposes: tuple[str, ...],
        now: datetime,
    ) -> list[Decision]:
        """Art. 21: direct marketing stops and its data goes; other purposes are restricted."""
        cause = Cause(
            "objection",
            f"{policy.controller}.rights.objection",
            now,
            policy.optout_deadline,
            event.event_id,
        )
        objected = set(purposes)

        def hit(v: RuleView) -> frozenset[str]:
            if v.rule.legal_basis not in ("consent", "legitimate_interest"):
                return frozenset()
            return v.objection_purposes & objected

        # Art. 21(3): against direct marketing the objection is absolute, so the data goes;
        # against another legitimate interest it restricts until the balance is reviewed.
        erased = self._release(policy, state, lambda v: "direct_marketing" in hit(v))
        restricted = self._restrict(
            state, policy, lambda v: bool(hit(v)) and "direct_marketing" not in hit(v)
        )
        return plan_commands(policy, event.subject_id, "erase", erased, cause) + plan_commands(
            policy, event.subject_id, "restrict", restricted, cause
        )

    # -- data-subject requests ----------------------------------------------

    def _request(
        self, policy: CompiledPolicy, state: SubjectState, event: Event, now: datetime
    ) -> list[Decision]:
        right = event.right
        wanted = set(event.purposes) if event.purposes else None
        if right == "erasure":
            return self._erase_all(policy, state, event, wanted, now)
        if right == "objection":
            purposes = event.purposes or ("direct_marketing",)
            for p in purposes:
                state.ledger = state.ledger.append(
                    ConsentEntry(p, "object", "request", event.occurred_at, event.event_id)
                )
            return self._object(policy, state, event, tuple(purposes), now)
        if right == "restriction":
            state.restricted = state.restricted | (wanted or {RESTRICT_ALL})
            cause = Cause(
                "restriction_request",
                f"{policy.controller}.rights.restriction",
                now,
                policy.rights_deadline,
                event.event_id,
            )
            affected = self._restrict(
                state, policy, lambda v: wanted is None or v.purpose in wanted
            )
            return plan_commands(policy, event.subject_id, "restrict", affected, cause)
        if right == "rectification":
            return [build_rectify(policy, state, event, now)]
        return [build_extract(policy, state, event, now)]  # access, portability

    def _erase_all(
        self,
        policy: CompiledPolicy,
        state: SubjectState,
        event: Event,
        wanted: set[str] | None,
        now: datetime,
    ) -> list[Decision]:
        """Erase what no law keeps at once; restrict what one does until it ends."""
        cause = Cause(
            "erasure_request",
            f"{policy.controller}.rights.erasure",
            now,
            policy.rights_deadline,
            event.event_id,
        )
        by_action: dict[str, list[Affected]] = {}
        for view in policy.rules:
            hold = state.holds.get(view.id)
            if hold is None or (wanted is not None and view.purpose not in wanted):
                continue
            action = view.rule.erasure_action
            if action == "restrict":
                if hold.restricted:
                    continue
                hold.restricted = True
            else:
                del state.holds[view.id]
            by_action.setdefault(action, []).append(Affected(view.purpose, hold.categories))
        out: list[Decision] = []
        for action in ("erase", "anonymize", "restrict"):
            out.extend(
                plan_commands(policy, event.subject_id, action, by_action.get(action, []), cause)
            )
        return out

    # -- helpers --------------------------------------------------------------

    def _release(self, policy: CompiledPolicy, state: SubjectState, which: Any) -> list[Affected]:
        """Drop the holds of the rules `which` selects; return what they held."""
        out: list[Affected] = []
        for view in policy.rules:
            if view.id in state.holds and which(view):
                hold = state.holds.pop(view.id)
                out.append(Affected(view.purpose, hold.categories))
        return out

    def _restrict(self, state: SubjectState, policy: CompiledPolicy, which: Any) -> list[Affected]:
        out: list[Affected] = []
        for view in policy.rules:
            hold = state.holds.get(view.id)
            if hold is not None and not hold.restricted and which(view):
                hold.restricted = True
                out.append(Affected(view.purpose, hold.categories))
        return out

    def _fire(
        self,
        policy: CompiledPolicy,
        state: SubjectState,
        subject_id: str,
        now: datetime,
        during: str = "",
    ) -> list[Decision]:
        out: list[Decision] = []
        while True:
            due_id, due_hold = _earliest(state.holds, now)
            if due_id is None or due_hold is None or due_hold.due is None:
                return out
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
                f"expiry:{due.isoformat()}:{(covered or last).isoformat()}:{during}",
                covered if view.kind in PER_RECORD else None,
            )
            out.extend(
                plan_commands(
                    policy,
                    subject_id,
                    view.rule.on_expiry,
                    [Affected(view.purpose, due_hold.categories)],
                    cause,
                )
            )


def _earliest(holds: dict[str, RuleHold], now: datetime) -> tuple[str | None, RuleHold | None]:
    best_id: str | None = None
    best: RuleHold | None = None
    for rid, hold in holds.items():
        due = hold.due
        if due is not None and due <= now and (best is None or best.due is None or due < best.due):
            best_id, best = rid, hold
    return best_id, best


def _suppression(view: RuleView, state: SubjectState) -> str | None:
    """Why a purpose may not be used for this person now, or None."""
    ledger = state.ledger
    basis = view.rule.legal_basis
    if ledger.entries:
        if basis == "consent":
            status = ledger.status(view.purpose)
            if status is None:
                return "no_consent"
            if status != "granted":
                return "consent_withdrawn" if status == "withdrawn" else "objection"
        elif basis == "legitimate_interest":
            for p in view.objection_purposes:
                if ledger.status(p) in ("objected", "withdrawn"):
                    return "objection"
    elif basis == "consent":
        return "no_consent"
    restricted = state.restricted
    if restricted and (RESTRICT_ALL in restricted or view.purpose in restricted):
        if basis != "legal_obligation":
            return "restriction_request"
    return None


def _basis(view: RuleView, hold: RuleHold, at: datetime, policy: CompiledPolicy) -> str:
    rule = view.rule
    if view.active_for is not None and rule.inactive_legal_basis and hold.anchor is not None:
        if at >= view.active_for.after(hold.anchor, policy.zone):
            return rule.inactive_legal_basis
    return rule.legal_basis
