"""The consent step: grants, withdrawals and objections, and what each of them stops.

A withdrawal stops exactly the purposes that rest on that consent, and their data goes.
An objection (GDPR art. 21) stops direct marketing absolutely, and its data goes; any
other purpose it hits is restricted. `suppression` is the same rule seen from a record:
may this purpose be used for the person now?
"""

from __future__ import annotations

from datetime import datetime

from .compiled import CompiledPolicy, RuleView
from .consent import ConsentEntry
from .erasure import Cause, Ending, release, restrict
from .events import Event
from .state import RESTRICT_ALL, SubjectState


def record_consent(
    policy: CompiledPolicy,
    state: SubjectState,
    event: Event,
    now: datetime,
    endings: list[Ending],
) -> None:
    """Enter a consent event in the ledger; append what a withdrawal or objection ends."""
    purpose = event.purpose or ""
    action = event.action or ""
    state.ledger = state.ledger.append(
        ConsentEntry(purpose, action, event.channel or "", event.occurred_at, event.event_id)
    )
    if action == "grant":
        return
    rests_on_consent = any(
        v.purpose == purpose and v.rule.legal_basis == "consent" for v in policy.rules
    )
    if action == "withdraw" and rests_on_consent:
        affected = release(
            policy, state, lambda v: v.purpose == purpose and v.rule.legal_basis == "consent"
        )
        cause = Cause(
            "consent_withdrawn",
            f"{policy.controller}.consent.withdrawal",
            now,
            policy.optout_deadline,
            event.event_id,
        )
        endings.append(Ending("erase", affected, cause))
        return
    # An unsubscribe from a purpose resting on legitimate interest is an objection.
    object_to(policy, state, event, (purpose,), now, endings)


def object_to(
    policy: CompiledPolicy,
    state: SubjectState,
    event: Event,
    purposes: tuple[str, ...],
    now: datetime,
    endings: list[Ending],
) -> None:
    """Art. 21: append the erasure of direct marketing's data and the restriction of the
    other purposes the objection hits. The ledger entry is the caller's."""
    cause = Cause(
        "objection",
        f"{policy.controller}.rights.objection",
        now,
        policy.optout_deadline,
        event.event_id,
        request_id=event.request_id if event.type == "privacy_request" else None,
    )
    objected = set(purposes)

    def hit(v: RuleView) -> frozenset[str]:
        if v.rule.legal_basis not in ("consent", "legitimate_interest"):
            return frozenset()
        return v.objection_purposes & objected

    # Art. 21(3): against direct marketing the objection is absolute, so the data goes;
    # against another legitimate interest it restricts until the balance is reviewed.
    erased = release(policy, state, lambda v: "direct_marketing" in hit(v))
    restricted = restrict(
        policy, state, lambda v: bool(hit(v)) and "direct_marketing" not in hit(v)
    )
    endings.append(Ending("erase", erased, cause))
    endings.append(Ending("restrict", restricted, cause))


def suppression(view: RuleView, state: SubjectState) -> str | None:
    """Why the rule's purpose may not be used for this person now, or None."""
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
