"""Properties of the whole engine over generated event sequences (hypothesis).

Events for the five controllers, a few subjects, random types, actions, roles and times
within 2020-2030 (in and out of order, in UTC and in local offsets), with redeliveries;
run through the same replay `evaluate` uses, line by line.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import end_of_calendar_year, parse_instant
from privacy_pipeline.processors.policy import PolicyPack, Rule, load_packs
from privacy_pipeline.processors.replay import Replay, encode_decision
from privacy_pipeline.processors.state import DEDUP_WINDOW
from privacy_pipeline.processors.vocabulary import (
    CHANNELS,
    CONSENT_ACTIONS,
    CUSTOMER_ACTIONS,
    ORDER_ACTIONS,
    RIGHTS,
    ROLES,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS: dict[str, PolicyPack] = load_packs(POLICIES)
CONTROLLERS = sorted(PACKS)
SUBJECTS = ["s1", "s2", "s3"]
MAX_EVENTS = 15
assert MAX_EVENTS < DEDUP_WINDOW  # every redelivery falls inside the dedup window

START = datetime(2020, 1, 1, tzinfo=UTC)
SPAN = int((datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC) - START).total_seconds())
FIELD_VALUES = {
    "name": "Anna Andersson",
    "email": "anna@example.se",
    "phone": "+46701234567",
    "address": "Storgatan 1",
    "personnummer": "19900101-1234",
    "customer_type": "private",
    "title": "CTO",
    "segment": "A1",
}
CONSENT_PURPOSES = ["direct_marketing", "analytics", "personalization", "prospecting"]
REQUEST_PURPOSES = ["direct_marketing", "analytics", "contract", "bookkeeping", "account"]
UNTIL = [None, datetime(2045, 1, 1, tzinfo=UTC), datetime(2032, 6, 1, tzinfo=UTC)]

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- strategies ----------------------------------------------------------------------------


@st.composite
def instants(draw: st.DrawFn) -> str:
    at = START + timedelta(seconds=draw(st.integers(0, SPAN)))
    offset = draw(st.sampled_from([0, 1, 2]))
    if offset == 0:
        return at.isoformat().replace("+00:00", "Z")
    return at.astimezone(timezone(timedelta(hours=offset))).isoformat()


@st.composite
def events(draw: st.DrawFn, controllers: list[str], subjects: list[str]) -> dict[str, Any]:
    etype = draw(st.sampled_from(["customer", "order", "click", "consent", "privacy_request"]))
    obj: dict[str, Any] = {
        "event_id": "",  # numbered by `scenarios`
        "type": etype,
        "controller": draw(st.sampled_from(controllers)),
        "subject_id": draw(st.sampled_from(subjects)),
        "occurred_at": draw(instants()),
    }
    if etype == "customer":
        obj["action"] = draw(st.sampled_from(sorted(CUSTOMER_ACTIONS)))
        role = draw(st.one_of(st.none(), st.sampled_from(sorted(ROLES))))
        if role is not None:
            obj["role"] = role
        names = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), unique=True, max_size=4))
        obj["fields"] = {n: FIELD_VALUES[n] for n in names}
    elif etype == "order":
        obj["action"] = draw(st.sampled_from(sorted(ORDER_ACTIONS)))
        obj["order_id"] = "o1"
        obj["amount"] = 100
        obj["currency"] = "SEK"
    elif etype == "click":
        obj.update(url="https://example.se/", ip="192.0.2.44", user_agent="Mozilla/5.0")
    elif etype == "consent":
        obj["purpose"] = draw(st.sampled_from(CONSENT_PURPOSES))
        obj["action"] = draw(st.sampled_from(sorted(CONSENT_ACTIONS)))
        obj["channel"] = draw(st.sampled_from(sorted(CHANNELS)))
    else:
        obj["request_id"] = "r1"
        obj["right"] = draw(st.sampled_from(sorted(RIGHTS)))
        if draw(st.booleans()):
            obj["purposes"] = draw(
                st.lists(st.sampled_from(REQUEST_PURPOSES), unique=True, min_size=1, max_size=3)
            )
    return obj


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], datetime | None]:
    # A few of the five controllers and three subjects: fewer keys, denser histories.
    controllers = draw(st.lists(st.sampled_from(CONTROLLERS), min_size=1, unique=True))
    subjects = draw(st.lists(st.sampled_from(SUBJECTS), min_size=1, unique=True))
    out = draw(st.lists(events(controllers, subjects), min_size=1, max_size=MAX_EVENTS - 5))
    for number, event in enumerate(out):
        event["event_id"] = f"e{number}"
    if draw(st.booleans()):
        out.sort(key=lambda e: parse_instant(e["occurred_at"]))
    # At-least-once delivery: a few events delivered again, later in the stream.
    for _ in range(draw(st.integers(0, 5))):
        copied = draw(st.integers(0, len(out) - 1))
        where = draw(st.integers(copied + 1, len(out)))
        out.insert(where, dict(out[copied]))
    return out, draw(st.sampled_from(UNTIL))


def _known(
    *events: tuple[str, str, str, str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], datetime | None]:
    """A hand-written scenario: (controller, type, occurred_at, action, extra fields)."""
    out = []
    for number, (controller, etype, at, action, extra) in enumerate(events):
        obj: dict[str, Any] = {
            "event_id": f"k{number}",
            "type": etype,
            "controller": controller,
            "subject_id": "s1",
            "occurred_at": at,
            **extra,
        }
        if action:
            obj["action"] = action
        if etype == "order":
            obj["order_id"] = f"o{number}"
        if etype == "click":
            obj.update(url="https://example.se/", ip="192.0.2.44", user_agent="Mozilla/5.0")
        out.append(obj)
    return out, None


# The sliding anchor outlives the data: a purchase on 2020-01-01 kept Rejoin's data until
# 2023-01-01; a visit in June 2023 and an update in 2024 are new records, yet they are tagged
# as expiring on 2023-01-01 (found by reading the code; kept as an explicit example).
SLIDE_BACK = _known(
    ("rejoin", "order", "2020-01-01T00:00:00Z", "placed", {}),
    ("rejoin", "click", "2023-06-01T00:00:00Z", "", {}),
    ("rejoin", "customer", "2024-01-01T00:00:00Z", "updated", {}),
)
# A complaint five years after the only purchase expires at once, under the same
# `expiry:<instant>` as the contract data erased just before (found by hypothesis).
SAME_EXPIRY = _known(
    ("inrego", "order", "2020-01-01T00:00:00Z", "complaint", {}),
    ("inrego", "order", "2020-01-01T00:00:00Z", "placed", {}),
    ("inrego", "order", "2025-01-01T00:00:00Z", "complaint", {}),
)


# -- running -------------------------------------------------------------------------------


def run(
    lines: list[str], until: datetime | None
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Decisions per input line (timers fired before the event, then the event's), and
    the decisions of the final advance, exactly as `Replay.run` produces them."""
    replay = Replay(PolicyEnforcer(PACKS))
    per_line = [replay.process_line(n, text) for n, text in enumerate(lines, start=1)]
    final = replay.advance(until or replay.clock) if replay.clock is not None else []
    return per_line, final


def as_lines(scenario: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(e) for e in scenario]


def legal_obligation_rules(controller: str) -> list[Rule]:
    return [r for r in PACKS[controller].rules if r.legal_basis == "legal_obligation"]


def legal_end(controller: str, rule: Rule, at: datetime) -> datetime:
    zone = ZoneInfo(PACKS[controller].timezone)
    span = rule.retention.duration.calendar()
    if rule.retention.from_ == "calendar_year_end":
        return span.after(end_of_calendar_year(at, zone), zone)
    assert rule.retention.from_ == "event"
    return span.after(at, zone)


def applies(rule: Rule, event: dict[str, Any]) -> bool:
    for m in rule.applies_to:
        assert m.roles is None and m.with_fields is None  # true of every seed's bookkeeping
        if m.type == event["type"] and (m.actions is None or event.get("action") in m.actions):
            return True
    return False


# -- properties ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios())
@example(SLIDE_BACK)
def test_every_tag_expires_no_earlier_than_its_event(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    per_line, _ = run(as_lines(scenario), until)
    for event, decisions in zip(scenario, per_line, strict=True):
        occurred = parse_instant(event["occurred_at"])
        for d in decisions:
            if d["decision"] != "tag" or d["event_id"] != event["event_id"]:
                continue
            for p in d["purposes"]:
                if p["expires_at"] is not None:
                    assert parse_instant(p["expires_at"]) >= occurred, (event, p)


@PROPERTY_SETTINGS
@given(scenarios())
def test_legal_obligation_data_is_never_erased_before_its_legal_end(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    per_line, final = run(as_lines(scenario), until)
    records: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)

    def check(decisions: list[dict[str, Any]]) -> None:
        for d in decisions:
            if d["decision"] != "erasure" or d["action"] not in ("erase", "anonymize"):
                continue
            obligated = {r.purpose for r in legal_obligation_rules(d["controller"])}
            if not obligated & set(d["purposes"]):
                continue
            issued = parse_instant(d["issued_at"])
            limit = d.get("recorded_before")
            covered = None if limit is None else parse_instant(limit)
            for at, end in records[(d["controller"], d["subject_id"])]:
                if covered is None or at <= covered:
                    assert issued >= end, (d, at, end)

    for event, decisions in zip(scenario, per_line, strict=True):
        at = parse_instant(event["occurred_at"])
        for rule in legal_obligation_rules(event["controller"]):
            if applies(rule, event):
                records[(event["controller"], event["subject_id"])].append(
                    (at, legal_end(event["controller"], rule, at))
                )
        check(decisions)
    check(final)


@PROPERTY_SETTINGS
@given(scenarios())
def test_no_direct_marketing_after_withdrawal_or_objection_until_a_new_grant(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    per_line, _ = run(as_lines(scenario), until)
    blocked: dict[tuple[str, str], str | None] = defaultdict(lambda: None)
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event, decisions in zip(scenario, per_line, strict=True):
        key = (event["controller"], event["subject_id"])
        for d in decisions:
            if d["decision"] == "tag" and d["event_id"] == event["event_id"] and blocked[key]:
                purposes = [p["purpose"] for p in d["purposes"]]
                assert "direct_marketing" not in purposes, (blocked[key], event, d)
        if event["event_id"] in seen[key]:
            continue  # a redelivery changes nothing
        seen[key].add(event["event_id"])
        if event["type"] == "consent" and event["purpose"] == "direct_marketing":
            blocked[key] = None if event["action"] == "grant" else event["event_id"]
        if event["type"] == "privacy_request" and event["right"] == "objection":
            if "direct_marketing" in event.get("purposes", ["direct_marketing"]):
                blocked[key] = event["event_id"]


@PROPERTY_SETTINGS
@given(scenarios())
def test_the_same_input_gives_identical_output(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    lines = as_lines(scenario)
    first = list(Replay(PolicyEnforcer(PACKS)).run(lines, until))
    second = list(Replay(PolicyEnforcer(PACKS)).run(lines, until))
    assert first == second
    assert [encode_decision(d) for d in first] == [encode_decision(d) for d in second]
    per_line, final = run(lines, until)
    assert [d for ds in per_line for d in ds] + final == first


@PROPERTY_SETTINGS
@given(scenarios())
def test_erasure_commands_have_a_deadline_after_issue_and_a_uuid(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    decisions = list(Replay(PolicyEnforcer(PACKS)).run(as_lines(scenario), until))
    for d in decisions:
        if d["decision"] != "erasure":
            continue
        assert parse_instant(d["deadline"]) >= parse_instant(d["issued_at"]), d
        parsed = uuid.UUID(d["command_id"])
        assert str(parsed) == d["command_id"]
        assert parsed.version == 5
        assert d["action"] in ("erase", "anonymize", "restrict")


@PROPERTY_SETTINGS
@given(scenarios())
@example(SAME_EXPIRY)
def test_different_commands_never_share_a_command_id(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    decisions = list(Replay(PolicyEnforcer(PACKS)).run(as_lines(scenario), until))
    by_id: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if d["decision"] == "erasure":
            assert d["command_id"] not in by_id, (by_id.get(d["command_id"]), d)
            by_id[d["command_id"]] = d


@PROPERTY_SETTINGS
@given(scenarios())
def test_no_personal_value_ever_appears_in_a_decision(
    data: tuple[list[dict[str, Any]], datetime | None],
) -> None:
    scenario, until = data
    text = "\n".join(
        encode_decision(d) for d in Replay(PolicyEnforcer(PACKS)).run(as_lines(scenario), until)
    )
    personal = ["name", "email", "phone", "address", "personnummer"]
    for value in [*(FIELD_VALUES[n] for n in personal), "192.0.2.44", "Mozilla/5.0"]:
        assert value not in text
