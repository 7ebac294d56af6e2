"""The rights step: answers to data-subject requests (erasure, objection, restriction,
rectification, and the register extract for access and portability)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .compiled import CompiledPolicy
from .consent import ConsentEntry
from .erasure import Affected, Cause, Ending, restrict
from .events import Event
from .instants import format_instant
from .optout import object_to
from .state import RESTRICT_ALL, SubjectState
from .vocabulary import EVENT_TYPES

_SOURCES = {
    "customer": "customer records (given by you, or by us when you contacted us)",
    "order": "your orders, invoices, deliveries, returns and complaints",
    "click": "technical data from your visits to our website (IP address, browser, pages)",
    "consent": "the consents and objections you gave us",
    "privacy_request": "the requests you made about your personal data",
}
_SOURCE_ORDER = sorted(EVENT_TYPES)
_PORTABLE_BASES = frozenset({"consent", "contract"})


def answer_request(
    policy: CompiledPolicy,
    state: SubjectState,
    event: Event,
    now: datetime,
    endings: list[Ending],
) -> list[dict[str, Any]]:
    """Answer a privacy request: the extract or rectify decision it gets, if any; append
    what an erasure, objection or restriction ends."""
    right = event.right
    wanted = set(event.purposes) if event.purposes else None
    if right == "erasure":
        _erase(policy, state, event, wanted, now, endings)
        return []
    if right == "objection":
        purposes = event.purposes or ("direct_marketing",)
        for p in purposes:
            state.ledger = state.ledger.append(
                ConsentEntry(p, "object", "request", event.occurred_at, event.event_id)
            )
        object_to(policy, state, event, tuple(purposes), now, endings)
        return []
    if right == "restriction":
        state.restricted = state.restricted | (wanted or {RESTRICT_ALL})
        cause = Cause(
            "restriction_request",
            f"{policy.controller}.rights.restriction",
            now,
            policy.rights_deadline,
            event.event_id,
            request_id=event.request_id,
        )
        affected = restrict(policy, state, lambda v: wanted is None or v.purpose in wanted)
        endings.append(Ending("restrict", affected, cause))
        return []
    if right == "rectification":
        return [build_rectify(policy, state, event, now)]
    return [build_extract(policy, state, event, now)]  # access, portability


def _erase(
    policy: CompiledPolicy,
    state: SubjectState,
    event: Event,
    wanted: set[str] | None,
    now: datetime,
    endings: list[Ending],
) -> None:
    """Erase what no law keeps at once; restrict what one does until it ends."""
    cause = Cause(
        "erasure_request",
        f"{policy.controller}.rights.erasure",
        now,
        policy.rights_deadline,
        event.event_id,
        request_id=event.request_id,
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
    for action in ("erase", "anonymize", "restrict"):
        if action in by_action:
            endings.append(Ending(action, by_action[action], cause))


def _retention_words(view_kind: str, duration: str) -> str:
    return {
        "event": f"{duration} after each record",
        "latest_activity": f"{duration} after your latest activity",
        "relationship_end": f"while the relationship lasts, then {duration}",
        "calendar_year_end": f"{duration} after the end of the calendar year of the record",
        "until_withdrawn": "until you withdraw your consent",
        "until_objection": "until you object",
    }[view_kind]


def build_extract(
    policy: CompiledPolicy, state: SubjectState, event: Event, now: datetime
) -> dict[str, Any]:
    """The register extract (GDPR art. 15): what we hold, why, from where, to whom, how long."""
    portability = event.right == "portability"
    held_cats = 0
    purposes: list[dict[str, Any]] = []
    held_purposes: set[str] = set()
    for view in policy.rules:
        hold = state.holds.get(view.id)
        if hold is None:
            continue
        if portability and view.rule.legal_basis not in _PORTABLE_BASES:
            continue
        held_cats |= hold.categories
        held_purposes.add(view.purpose)
        purposes.append(
            {
                "purpose": view.purpose,
                "legal_basis": view.rule.legal_basis,
                "rule": view.id,
                "categories": policy.names(hold.categories),
                "retention": _retention_words(view.kind, view.duration.describe()),
                "expires_at": None if hold.due is None else format_instant(hold.due),
                "restricted": hold.restricted,
                "source": ", ".join(
                    dict.fromkeys(f"seed section {c.section}" for c in view.rule.cites)
                ),
            }
        )
    sources = [
        {"type": t, "description": _SOURCES[t]}
        for i, t in enumerate(_SOURCE_ORDER)
        if state.sources & (1 << i)
    ]
    recipients = [
        {
            "target": rec.id,
            "description": rec.description,
            "categories": policy.names(cats),
            "purposes": held,
        }
        for rec, held, cats in policy.recipients_for(held_purposes, held_cats)
    ]
    consents = [
        {"purpose": e.purpose, "action": e.action, "channel": e.channel, "at": format_instant(e.at)}
        for e in state.ledger.entries
    ]
    categories = [
        {"category": name, "description": policy.pack.categories[name].description}
        for name in policy.names(held_cats)
    ]
    extract: dict[str, Any] = {
        "decision": "extract",
        "request_id": event.request_id,
        "controller": policy.controller,
        "subject_id": event.subject_id,
        "right": event.right,
        "issued_at": format_instant(now),
        "deadline": format_instant(policy.rights_deadline.after(now, policy.zone)),
        "controller_name": policy.pack.name,
        "org_nr": policy.pack.org_nr,
        "categories": categories,
        "purposes": purposes,
        "sources": sources,
        "recipients": recipients,
        "consents": consents,
        "restrictions": sorted("all" if r == RESTRICT_ALL else r for r in state.restricted),
    }
    extract["text"] = render_extract(extract)
    return extract


def render_extract(extract: dict[str, Any]) -> str:
    """A plain-text register extract a DPO can send to the person."""
    name = extract["controller_name"] or f"the controller '{extract['controller']}'"
    org = f" (org.nr {extract['org_nr']})" if extract["org_nr"] else ""
    title = "Data portability export" if extract["right"] == "portability" else "Register extract"
    lines = [
        f"{title} from {name}{org}",
        f"Request {extract['request_id']}, answered {extract['issued_at']}.",
        "",
    ]
    if not extract["purposes"]:
        lines.append("We hold no personal data about you.")
    else:
        lines.append("Personal data we hold about you:")
        lines += [f"  - {c['category']}: {c['description']}" for c in extract["categories"]]
        lines += ["", "Why we hold it, on what legal basis, and for how long:"]
        for p in extract["purposes"]:
            until = p["expires_at"] or "no fixed date yet"
            note = " (restricted: stored only, not used)" if p["restricted"] else ""
            lines.append(
                f"  - {p['purpose']} ({p['legal_basis']}): kept {p['retention']}; "
                f"currently until {until}{note}"
            )
        lines += ["", "Where it comes from:"]
        lines += [f"  - {s['description']}" for s in extract["sources"]]
        lines += ["", "Who receives it:"]
        lines += [
            f"  - {r['description']} ({', '.join(r['purposes'])})" for r in extract["recipients"]
        ] or ["  - no one outside our own systems"]
    if extract["consents"]:
        lines += ["", "Your consents and objections:"]
        lines += [
            f"  - {c['at']}: {c['action']} {c['purpose']} via {c['channel']}"
            for c in extract["consents"]
        ]
    return "\n".join(lines)


def build_rectify(
    policy: CompiledPolicy, state: SubjectState, event: Event, now: datetime
) -> dict[str, Any]:
    """Art. 16 and 19: pass a correction on to every target holding the person's data."""
    held_cats = 0
    held_purposes: set[str] = set()
    for view in policy.rules:
        hold = state.holds.get(view.id)
        if hold is not None:
            held_cats |= hold.categories
            held_purposes.add(view.purpose)
    return {
        "decision": "rectify",
        "request_id": event.request_id,
        "controller": policy.controller,
        "subject_id": event.subject_id,
        "targets": [r.id for r, _, _ in policy.recipients_for(held_purposes, held_cats)],
        "issued_at": format_instant(now),
        "deadline": format_instant(policy.rights_deadline.after(now, policy.zone)),
    }
