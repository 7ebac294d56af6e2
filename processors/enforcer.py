"""The policy enforcer: `(state, event, clock) -> (state, decisions)` for every subject.

The same object runs inside `evaluate`, the live faust agent and audit replay. It never
reads the wall clock: `now` is passed in, and retention timers fire only at `now`.
The state passed in is updated in place and returned.

`on_event` takes one event through these steps, in this order, each in its own module:

1. parse (`events.parse_event`, by the caller): a JSON object to an `Event`;
2. dedupe (`state.SubjectState.seen`): a redelivered event changes nothing;
3. note (here): the source, the role and the activity the event shows;
4. the step of the event's type:
   - a record (customer, order, click): what it ends (`retention.end_by_record`), then
     its tag (`tagging.tag_record`: per rule, the consent check, retention, legal basis);
   - a consent, withdrawal or objection: `optout.record_consent`;
   - a data-subject request: `rights.answer_request`;
5. retention (`retention.fire_due`): every timer due by `now` ends its data;
6. plan commands (`erasure.plan_endings`): one erasure command per target system;
7. track them (`tracker.track`), when the enforcer runs with a tracker (the live worker):
   each stays open until its target answers (`on_ack`); `on_time` re-issues or escalates
   the ones whose wait ran out.

Steps 4 and 5 only decide what ends (an `erasure.Ending`); step 6 alone turns that into
commands, so the decisions come out as: the tag (extract, rectify) first, then the
commands in the order their endings were decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy
from .erasure import Ending, plan_endings
from .events import Event, EventError
from .optout import record_consent
from .policy import PolicyPack
from .retention import end_by_record, fire_due, note_activity
from .rights import answer_request
from .state import RESTRICT_ALL, SubjectState
from .tagging import tag_record
from .tracker import Tracking, on_ack, open_request, retry_due, track
from .vocabulary import EVENT_TYPES

__all__ = ["RESTRICT_ALL", "TAGGED_TYPES", "Decision", "PolicyEnforcer"]

Decision = dict[str, Any]

TAGGED_TYPES = frozenset({"customer", "order", "click"})
_SOURCE_BIT = {t: 1 << i for i, t in enumerate(sorted(EVENT_TYPES))}


class PolicyEnforcer:
    """Applies each controller's policy pack to events and to the passing of time."""

    def __init__(self, packs: Mapping[str, PolicyPack], tracking: Tracking | None = None) -> None:
        self.policies = {cid: CompiledPolicy(p) for cid, p in packs.items()}
        self.tracking = tracking

    def policy(self, controller: str) -> CompiledPolicy:
        """The compiled pack of a controller; EventError if there is none."""
        found = self.policies.get(controller)
        if found is None:
            raise EventError("controller", "unknown controller (no policy pack)")
        return found

    def on_event(
        self, state: SubjectState | None, event: Event, now: datetime
    ) -> tuple[SubjectState, list[Decision]]:
        """Apply one event at clock `now`; then fire whatever of this subject is due."""
        policy = self.policy(event.controller)
        if state is None:
            state = SubjectState()
        if state.seen(event.event_id):
            return state, []
        _note(policy, state, event)
        endings: list[Ending] = []
        decisions: list[Decision]
        if event.type in TAGGED_TYPES:
            ended = end_by_record(policy, state, event, now, endings)
            decisions = [tag_record(policy, state, event, ended)]
        elif event.type == "consent":
            decisions = []
            record_consent(policy, state, event, now, endings)
        else:
            decisions = answer_request(policy, state, event, now, endings)
        # Data recorded already past its expiry (a late event) goes at once.
        fire_due(policy, state, now, endings, event.event_id)
        if endings:
            commands = plan_endings(policy, event.subject_id, endings)
            if self.tracking is not None:
                track(state, commands, now, self.tracking)
            decisions += commands
        if self.tracking is not None and event.type == "privacy_request":
            # GDPR art. 12(3): answered within one month of receipt.
            due = policy.rights_deadline.after(event.occurred_at, policy.zone)
            about = {
                "request_id": event.request_id,
                "right": event.right,
                "controller": event.controller,
                "subject_id": event.subject_id,
            }
            decisions.append(open_request(state, about, decisions, event.occurred_at, due, now))
        return state, decisions

    def on_time(
        self, state: SubjectState, controller: str, subject_id: str, now: datetime
    ) -> tuple[SubjectState, list[Decision]]:
        """The clock reached `now`: fire every retention timer of the subject due by then,
        and (with a tracker) re-issue or escalate the commands whose wait ran out."""
        policy = self.policy(controller)
        endings: list[Ending] = []
        fire_due(policy, state, now, endings)
        commands = plan_endings(policy, subject_id, endings)
        if self.tracking is None:
            return state, commands
        track(state, commands, now, self.tracking)
        return state, retry_due(state, now, self.tracking) + commands

    def on_ack(
        self, state: SubjectState, ack: Mapping[str, Any], now: datetime
    ) -> tuple[SubjectState, list[Decision]]:
        """A target answered one of the subject's commands; an escalation may follow."""
        if self.tracking is None:
            return state, []
        return state, on_ack(state, ack, now, self.tracking)


def _note(policy: CompiledPolicy, state: SubjectState, event: Event) -> None:
    """What the event shows about the person: a source of their data, their role, and an
    activity that moves every sliding retention counting from it."""
    state.sources |= _SOURCE_BIT[event.type]
    if event.type == "customer" and event.role:
        state.role = event.role
    if event.action is not None and event.type in TAGGED_TYPES:
        note_activity(policy, state, event)
