"""Shared helpers for the seed-conformance tests.

`run` pushes canonical JSON events (the input-event contract of the design) through the
same offline engine as `privacy-pipeline evaluate`: Replay(PolicyEnforcer(load_packs(...)))
over the repository's policy packs, with an optional `until` instant, and returns the
decision dicts. The builders make events in their canonical JSON form; event ids are
derived from the subject, type, action and instant unless given, so scenarios stay short.
The expectation helpers build what the decisions should be (tag purposes, erasure commands
less their ids) and hold the checks every seed shares (answers to a request within a month,
byte-identical output for the same input).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import format_instant, parse_instant
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


# -- expectations -----------------------------------------------------------------------


def second_before(instant: str) -> str:
    """The ISO instant one second before `instant` (to show a timer has not fired yet)."""
    return format_instant(parse_instant(instant) - timedelta(seconds=1))


def tag_purpose(purpose: str, legal_basis: str, expires_at: str | None, rule: str) -> Decision:
    """One entry of a tag decision's `purposes`, as the enforcer writes it."""
    return {"purpose": purpose, "legal_basis": legal_basis, "expires_at": expires_at, "rule": rule}


def erasure_command(
    controller: str,
    target: str,
    action: str,
    purposes: list[str],
    categories: list[str],
    reason: str,
    rule: str,
    issued_at: str,
    deadline: str | None,
    *,
    subject: str,
    due_at: str | None = None,
    **extra: Any,
) -> Decision:
    """An erasure command as decided, less its command_id (compare with `erasure_commands`).

    `due_at`, the instant the obligation arose, is the issue by default; a command a
    privacy request caused names it in `request_id` (pass it as an extra).
    A seed's tests bind controller and subject once:
    `_cmd = partial(erasure_command, C, subject=S)`.
    """
    return {
        "decision": "erasure",
        "controller": controller,
        "subject_id": subject,
        "target": target,
        "action": action,
        "purposes": purposes,
        "categories": categories,
        "reason": reason,
        "rule": rule,
        "issued_at": issued_at,
        "deadline": deadline,
        "due_at": issued_at if due_at is None else due_at,
        **extra,
    }


def without_id(command: Mapping[str, Any]) -> Decision:
    """A command without its command_id (a hash, asserted apart from the content)."""
    return {k: v for k, v in command.items() if k != "command_id"}


def erasure_commands(decisions: Iterable[Decision], **match: Any) -> list[Decision]:
    """`erasures(decisions, **match)` without their command ids, in decision order."""
    return [without_id(c) for c in erasures(decisions, **match)]


RIGHTS = ["access", "portability", "rectification", "erasure", "objection", "restriction"]


def answers_within_a_month(
    controller: str, subject: str, history: Sequence[Event], right: str
) -> list[Decision]:
    """The decisions answering a request for `right` (request id R-1) made on 31 January
    2024 12:00 after `history`, once the deadline rule every seed shares is asserted: each
    answer is issued at once and due one month later, 29 February 2024 (GDPR art. 12(3)),
    except an objection to direct marketing, absolute under art. 21(3), which carries the
    pack's one-day opt-out deadline, 1 February 2024. An access or portability request is
    answered by a single extract for R-1.
    """
    at, due = "2024-01-31T12:00:00Z", "2024-02-29T12:00:00Z"
    optout_due = "2024-02-01T12:00:00Z"
    decisions = run([*history, request(controller, subject, at, right, request_id="R-1")])
    answers = [d for d in decisions if d["decision"] != "tag"]
    assert answers, f"no answer to {right}"
    expected_due = optout_due if right == "objection" else due
    for answer in answers:
        assert (answer["issued_at"], answer["deadline"]) == (at, expected_due), answer
        assert parse_instant(answer["deadline"]) <= parse_instant(due), answer
    if right in ("access", "portability"):
        (extract,) = answers
        assert (extract["decision"], extract["request_id"], extract["right"]) == (
            "extract",
            "R-1",
            right,
        )
    return answers


def assert_same_output(events: Sequence[Event], until: str, *, at_least: int) -> None:
    """The same events give byte-identical decisions up to `until`, command ids included,
    with at least `at_least` erasure commands, each id distinct.
    """
    first = run_lines(events, until=until)
    second = run_lines(events, until=until)
    assert first == second
    ids = [c["command_id"] for c in erasures(run(events, until=until))]
    assert len(ids) >= at_least
    assert len(set(ids)) == len(ids)
