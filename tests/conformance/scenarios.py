"""Shared helpers for the seed-conformance tests.

`run` pushes canonical JSON events (the input-event contract of the design) through the
same offline engine as `privacy-pipeline evaluate`: Replay(PolicyEnforcer(load_packs(...)))
over the repository's policy packs, with an optional `until` instant, and returns the
decision dicts. The builders make events in their canonical JSON form; event ids are
derived from the subject, type, action and instant unless given, so scenarios stay short.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.policy import PolicyPack, load_packs
from privacy_pipeline.processors.replay import Replay, encode_decision

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"

Event = dict[str, Any]
Decision = dict[str, Any]


@lru_cache(maxsize=1)
def packs() -> dict[str, PolicyPack]:
    """The repository's policy packs, loaded once (they are immutable)."""
    return load_packs(POLICIES)


def run(events: Iterable[Mapping[str, Any]], until: str | None = None) -> list[Decision]:
    """Every decision for `events` (in order), then those due by `until` (ISO instant)."""
    replay = Replay(PolicyEnforcer(packs()))
    lines = [json.dumps(e, ensure_ascii=False) for e in events]
    end = parse_instant(until) if until is not None else None
    return list(replay.run(lines, until=end))


def run_lines(events: Iterable[Mapping[str, Any]], until: str | None = None) -> list[str]:
    """Like `run`, but the decisions as canonical JSON lines (for byte comparisons)."""
    return [encode_decision(d) for d in run(events, until)]


# -- builders ---------------------------------------------------------------------------


def _event(
    etype: str, controller: str, subject: str, at: str, event_id: str | None, tag: str
) -> Event:
    return {
        "event_id": event_id or f"{controller}-{subject}-{etype}-{tag}-{at}",
        "type": etype,
        "controller": controller,
        "subject_id": subject,
        "occurred_at": at,
    }


def click(
    controller: str,
    subject: str,
    at: str,
    *,
    url: str = "https://example.se/produkter",
    ip: str = "192.0.2.10",
    user_agent: str = "Mozilla/5.0",
    anonymous_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    """A website visit (technical data: URL, IP, browser)."""
    e = _event("click", controller, subject, at, event_id, "visit")
    e.update({"url": url, "ip": ip, "user_agent": user_agent})
    if anonymous_id is not None:
        e["anonymous_id"] = anonymous_id
    return e


DEFAULT_FIELDS: dict[str, Any] = {
    "name": "Anna Andersson",
    "email": "anna@example.se",
    "customer_type": "privatperson",
}


def customer(
    controller: str,
    subject: str,
    at: str,
    action: str = "created",
    *,
    role: str | None = None,
    fields: Mapping[str, Any] | None = None,
    event_id: str | None = None,
) -> Event:
    """A person record: created, updated, contacted, closed or relationship_ended."""
    e = _event("customer", controller, subject, at, event_id, action)
    e["action"] = action
    if role is not None:
        e["role"] = role
    e["fields"] = dict(DEFAULT_FIELDS if fields is None else fields)
    return e


def order(
    controller: str,
    subject: str,
    at: str,
    action: str = "placed",
    *,
    order_id: str = "O-1",
    amount: float | None = 1990.0,
    currency: str | None = "SEK",
    event_id: str | None = None,
) -> Event:
    """An order event: placed, invoiced, delivered, returned or complaint."""
    e = _event("order", controller, subject, at, event_id, f"{action}-{order_id}")
    e["action"] = action
    e["order_id"] = order_id
    if amount is not None:
        e["amount"] = amount
    if currency is not None:
        e["currency"] = currency
    return e


def consent(
    controller: str,
    subject: str,
    at: str,
    purpose: str = "direct_marketing",
    action: str = "object",
    *,
    channel: str = "email",
    event_id: str | None = None,
) -> Event:
    """A consent grant, withdrawal or objection (e.g. the unsubscribe link of a mailing)."""
    e = _event("consent", controller, subject, at, event_id, f"{action}-{purpose}")
    e.update({"purpose": purpose, "action": action, "channel": channel})
    return e


def request(
    controller: str,
    subject: str,
    at: str,
    right: str,
    *,
    request_id: str | None = None,
    purposes: list[str] | None = None,
    event_id: str | None = None,
) -> Event:
    """A verified data-subject request."""
    e = _event("privacy_request", controller, subject, at, event_id, right)
    e["request_id"] = request_id or f"REQ-{subject}-{right}"
    e["right"] = right
    if purposes is not None:
        e["purposes"] = purposes
    return e


# -- selectors --------------------------------------------------------------------------


def tags(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if d["decision"] == "tag"]


def tag_of(decisions: Iterable[Decision], event_id: str) -> Decision:
    """The single tag decision for an event."""
    found = [d for d in tags(decisions) if d["event_id"] == event_id]
    assert len(found) == 1, f"expected one tag for {event_id}, got {found}"
    return found[0]


def erasures(decisions: Iterable[Decision], **match: Any) -> list[Decision]:
    """Erasure decisions whose fields equal every `match` item."""
    return [
        d
        for d in decisions
        if d["decision"] == "erasure" and all(d.get(k) == v for k, v in match.items())
    ]


def extracts(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if d["decision"] == "extract"]


def rejects(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if d["decision"] == "reject"]


def purpose_map(tag: Decision) -> dict[str, tuple[str, str | None, str]]:
    """purpose -> (legal_basis, expires_at, rule), asserting each purpose appears once."""
    out: dict[str, tuple[str, str | None, str]] = {}
    for p in tag["purposes"]:
        assert p["purpose"] not in out, f"purpose listed twice: {tag['purposes']}"
        out[p["purpose"]] = (p["legal_basis"], p["expires_at"], p["rule"])
    return out


def by_target(commands: Iterable[Decision]) -> dict[str, Decision]:
    """target -> command, asserting one command per target."""
    out: dict[str, Decision] = {}
    for c in commands:
        assert c["target"] not in out, f"two commands for target {c['target']}"
        out[c["target"]] = c
    return out
