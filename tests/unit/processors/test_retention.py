"""Retention timers: per-record expiry, same-day records, sliding activity, relationship end.

Observed through the enforcer (tags, the holds' due instants, and the erasure commands its
timers issue), so the tests hold whatever the internal layout of a hold.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import parse_event
from privacy_pipeline.processors.instants import format_instant, parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.replay import Replay
from privacy_pipeline.processors.state import SubjectState

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)
POLICY = {c: CompiledPolicy(p) for c, p in PACKS.items()}

ANALYTICS = "inrego.analytics.web-visits"
BOOKKEEPING = "inrego.bookkeeping.invoices"
REJOIN_CONTRACT = "rejoin.contract.customers"
REJOIN_PERSONALIZATION = "rejoin.personalization.behaviour"
IRET_CONTRACT = "iret.contract.customers"
EMAIL = {"email": "anna@example.se", "name": "Anna"}


class Subject:
    def __init__(self, controller: str) -> None:
        self.enforcer = PolicyEnforcer(PACKS)
        self.controller = controller
        self.state: SubjectState | None = None
        self.n = 0

    def send(self, etype: str, at: str, **kw: Any) -> list[dict[str, Any]]:
        self.n += 1
        obj: dict[str, Any] = {
            "event_id": f"e{self.n}",
            "type": etype,
            "controller": self.controller,
            "subject_id": "s1",
            "occurred_at": at,
            **kw,
        }
        if etype == "click":
            obj.update(url="https://x/", ip="192.0.2.1", user_agent="ua")
        if etype == "order":
            obj.setdefault("order_id", f"o{self.n}")
        event = parse_event(obj)
        self.state, decisions = self.enforcer.on_event(self.state, event, event.occurred_at)
        return decisions

    def expires(self, etype: str, at: str, rule: str, **kw: Any) -> str | None:
        [tag, *_] = self.send(etype, at, **kw)
        [found] = [p["expires_at"] for p in tag["purposes"] if p["rule"] == rule]
        return found  # type: ignore[no-any-return]

    def tick(self, at: str) -> list[dict[str, Any]]:
        assert self.state is not None
        self.state, decisions = self.enforcer.on_time(
            self.state, self.controller, "s1", parse_instant(at)
        )
        return decisions

    def due(self, rule: str) -> str | None:
        assert self.state is not None
        hold = self.state.holds[rule]
        return None if hold.due is None else format_instant(hold.due)

    def holds(self) -> set[str]:
        assert self.state is not None
        return set(self.state.holds)


def fmt(value: datetime | None) -> str | None:
    return None if value is None else format_instant(value)


# -- per record (from: event) --------------------------------------------------------------


def test_per_record_expiry_is_duration_after_each_record() -> None:
    person = Subject("inrego")
    assert person.expires("click", "2024-03-02T11:00:00Z", ANALYTICS) == "2026-03-02T11:00:00Z"
    assert person.due(ANALYTICS) == "2026-03-02T11:00:00Z"
    assert person.expires("click", "2024-07-02T11:00:00Z", ANALYTICS) == "2026-07-02T11:00:00Z"
    assert person.due(ANALYTICS) == "2026-03-02T11:00:00Z"  # the earliest record goes first


def test_each_record_is_reported_with_its_own_expiry_across_dst() -> None:
    person = Subject("inrego")
    # 10:00 CET in January; 24 months later still 10:00 CET. July: 10:00 CEST.
    assert person.expires("click", "2024-01-15T09:00:00Z", ANALYTICS) == "2026-01-15T09:00:00Z"
    assert person.expires("click", "2024-07-15T08:00:00Z", ANALYTICS) == "2026-07-15T08:00:00Z"


def test_two_visits_the_same_day_are_never_erased_before_either_expires() -> None:
    person = Subject("inrego")
    person.send("click", "2024-03-02T08:00:00Z")
    person.send("click", "2024-03-02T15:00:00Z")
    assert person.tick("2026-03-02T07:59:59Z") == []
    issued = person.tick("2026-03-02T08:00:00Z") + person.tick("2026-03-02T14:59:59Z")
    # Whatever goes by 14:59:59 covers only the 08:00 visit.
    for command in issued:
        assert command["recorded_before"] == "2024-03-02T08:00:00Z"
    assert ANALYTICS in person.holds()
    last = person.tick("2026-03-02T15:00:00Z")
    assert last, "the 15:00 visit is erased when it expires"
    assert {d["recorded_before"] for d in last} == {"2024-03-02T15:00:00Z"}
    assert {d["target"] for d in last} == {"web-analytics", "it-service-providers"}
    assert {d["reason"] for d in last} == {"retention_expired"}
    assert ANALYTICS not in person.holds()
    assert person.tick("2030-01-01T00:00:00Z") == []


def test_a_later_jump_erases_both_same_day_visits_and_ids_stay_distinct() -> None:
    person = Subject("inrego")
    person.send("click", "2024-03-02T08:00:00Z")
    person.send("click", "2024-03-02T15:00:00Z")
    fired = person.tick("2026-03-03T00:00:00Z")
    assert max(d["recorded_before"] for d in fired) == "2024-03-02T15:00:00Z"
    assert {d["issued_at"] for d in fired} == {"2026-03-03T00:00:00Z"}
    ids = [d["command_id"] for d in fired]
    assert len(ids) == len(set(ids))
    assert ANALYTICS not in person.holds()


def test_records_arriving_out_of_order_expire_in_time_order() -> None:
    person = Subject("inrego")
    for day in ("05", "01", "03"):
        person.send("click", f"2024-03-{day}T10:00:00Z")
    assert person.due(ANALYTICS) == "2026-03-01T10:00:00Z"
    seen = []
    for day in ("01", "03", "05"):
        fired = person.tick(f"2026-03-{day}T10:00:00Z")
        seen.append({d["recorded_before"] for d in fired})
    assert seen == [
        {"2024-03-01T10:00:00Z"},
        {"2024-03-03T10:00:00Z"},
        {"2024-03-05T10:00:00Z"},
    ]


def test_records_within_one_millisecond_get_distinct_command_ids() -> None:
    # Two records 100 µs apart expire at two instants that format to the same millisecond;
    # the commands erasing them are different commands and must not share a command_id
    # (downstream deduplicates by id and would drop the second).
    lines = [
        json.dumps(
            {
                "event_id": f"c{i}",
                "type": "click",
                "controller": "inrego",
                "subject_id": "s1",
                "occurred_at": at,
                "url": "u",
                "ip": "192.0.2.1",
                "user_agent": "ua",
            }
        )
        for i, at in enumerate(["2024-03-02T08:00:00.000100Z", "2024-03-02T08:00:00.000200Z"])
    ]
    replay = Replay(PolicyEnforcer(PACKS))
    decisions = list(replay.run(lines, parse_instant("2027-01-01T00:00:00Z")))
    erasures = [d for d in decisions if d["decision"] == "erasure"]
    ids = [d["command_id"] for d in erasures]
    assert len(ids) == len(set(ids)), [
        (d["target"], d["recorded_before"], d["command_id"]) for d in erasures
    ]


# -- calendar year end ---------------------------------------------------------------------


def test_calendar_year_end_counts_from_the_end_of_the_invoice_year() -> None:
    person = Subject("inrego")
    expires = person.expires("order", "2024-07-01T00:00:00Z", BOOKKEEPING, action="invoiced")
    assert expires == "2031-12-31T23:00:00Z"
    assert person.due(BOOKKEEPING) == "2031-12-31T23:00:00Z"


def test_invoices_of_one_year_go_together_at_the_end_of_the_seventh_year() -> None:
    person = Subject("inrego")
    person.send("order", "2024-01-02T10:00:00Z", action="invoiced")
    person.send("order", "2024-11-30T10:00:00Z", action="invoiced")
    person.send("order", "2025-02-01T10:00:00Z", action="invoiced")
    before = person.tick("2031-12-31T22:59:59Z")
    assert BOOKKEEPING not in {d["rule"] for d in before}  # contract data went earlier
    fired = person.tick("2031-12-31T23:00:00Z")
    assert {d["rule"] for d in fired} == {BOOKKEEPING}
    assert {d["recorded_before"] for d in fired} == {"2024-11-30T10:00:00Z"}
    assert {d["target"] for d in fired} == {"business-systems", "it-service-providers", "auditors"}
    assert person.due(BOOKKEEPING) == "2032-12-31T23:00:00Z"


def test_calendar_year_is_the_local_year() -> None:
    person = Subject("inrego")
    # New Year's Eve 23:30 UTC is already 2025 in Stockholm.
    expires = person.expires("order", "2024-12-31T23:30:00Z", BOOKKEEPING, action="invoiced")
    assert expires == "2032-12-31T23:00:00Z"


def test_iret_bookkeeping_is_ten_years_from_the_invoice() -> None:
    person = Subject("iret")
    expires = person.expires(
        "order", "2024-03-02T10:00:00Z", "iret.bookkeeping.invoices", action="invoiced"
    )
    assert expires == "2034-03-02T10:00:00Z"


# -- latest activity (sliding) -------------------------------------------------------------


def test_latest_activity_slides_only_on_activity() -> None:
    person = Subject("rejoin")
    e = person.expires
    assert e("customer", "2024-01-10T09:00:00Z", REJOIN_CONTRACT, action="created") == (
        "2027-01-10T09:00:00Z"
    )
    # An update is not activity: the end does not move.
    assert e("customer", "2024-06-01T09:00:00Z", REJOIN_CONTRACT, action="updated") == (
        "2027-01-10T09:00:00Z"
    )
    # A purchase is: 36 months from it.
    assert e("order", "2025-02-01T09:00:00Z", REJOIN_CONTRACT, action="placed") == (
        "2028-02-01T09:00:00Z"
    )
    # So is a customer-service contact; an older one arriving late does not move it back.
    assert e("customer", "2024-12-01T09:00:00Z", REJOIN_CONTRACT, action="contacted") == (
        "2028-02-01T09:00:00Z"
    )
    assert e("customer", "2025-07-01T08:00:00Z", REJOIN_CONTRACT, action="contacted") == (
        "2028-07-01T08:00:00Z"
    )
    assert person.due(REJOIN_CONTRACT) == "2028-07-01T08:00:00Z"


def test_a_delivery_or_complaint_is_not_activity() -> None:
    person = Subject("rejoin")
    person.send("order", "2024-01-10T09:00:00Z", action="placed")
    for action in ("invoiced", "delivered", "returned", "complaint"):
        assert (
            person.expires("order", "2024-05-10T09:00:00Z", REJOIN_CONTRACT, action=action)
            == "2027-01-10T09:00:00Z"
        )


def test_activity_slides_every_rule_that_counts_from_it() -> None:
    # Rejoin: contract, personalization and marketing all last 36 months after the person
    # was last active (a purchase or a customer-service contact), seed 002.
    person = Subject("rejoin")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    person.send("click", "2024-01-11T09:00:00Z")
    assert person.due(REJOIN_PERSONALIZATION) == "2027-01-10T09:00:00Z"
    person.send("customer", "2025-03-03T09:00:00Z", action="contacted", fields=EMAIL)
    assert person.due(REJOIN_CONTRACT) == "2028-03-03T09:00:00Z"
    assert person.due("rejoin.direct_marketing.customers") == "2028-03-03T09:00:00Z"
    assert person.due(REJOIN_PERSONALIZATION) == "2028-03-03T09:00:00Z"


def test_sliding_data_expires_whole_at_the_end() -> None:
    person = Subject("rejoin")
    person.send("customer", "2024-01-10T09:00:00Z", action="created")
    person.send("customer", "2024-06-01T09:00:00Z", action="updated")
    assert person.tick("2027-01-10T08:59:59Z") == []
    fired = person.tick("2027-01-10T09:00:00Z")
    assert {d["rule"] for d in fired} == {REJOIN_CONTRACT}
    assert all("recorded_before" not in d for d in fired)
    assert person.holds() == set()


def test_a_record_after_expired_activity_never_expires_before_it_was_made() -> None:
    # The contract data of 2020 expired in 2023; an update in 2024 is a new record and
    # cannot be tagged with an expiry before its own time.
    person = Subject("rejoin")
    person.send("order", "2020-01-01T09:00:00Z", action="placed")
    person.tick("2023-01-02T00:00:00Z")
    assert person.holds() == set()
    expires = person.expires("customer", "2024-01-01T09:00:00Z", REJOIN_CONTRACT, action="updated")
    assert expires is not None
    assert expires >= "2024-01-01T09:00:00Z"


# -- relationship end ----------------------------------------------------------------------


def test_relationship_end_is_open_until_the_end_then_end_plus_duration() -> None:
    person = Subject("iret")
    [tag] = person.send(
        "customer", "2024-01-10T09:00:00Z", action="created", role="customer", fields=EMAIL
    )
    assert [(p["rule"], p["expires_at"]) for p in tag["purposes"]] == [
        (IRET_CONTRACT, None),
        ("iret.legal_claims.customers", None),
        ("iret.direct_marketing.customer-representatives", None),
    ]
    assert person.due(IRET_CONTRACT) is None
    assert (
        person.send(
            "customer", "2024-06-01T10:00:00Z", action="relationship_ended", role="customer"
        )[1:]
        == []
    )
    assert person.state is not None
    hold = person.state.holds[IRET_CONTRACT]
    assert hold.ended
    assert fmt(hold.anchor) == "2024-06-01T10:00:00Z"
    assert {rule: person.due(rule) for rule in sorted(person.holds())} == {
        IRET_CONTRACT: "2026-06-01T10:00:00Z",
        "iret.direct_marketing.customer-representatives": "2025-06-01T10:00:00Z",
        "iret.legal_claims.customers": "2027-06-01T10:00:00Z",
    }
    assert person.tick("2025-06-01T09:59:59Z") == []
    assert {d["rule"] for d in person.tick("2025-06-01T10:00:00Z")} == {
        "iret.direct_marketing.customer-representatives"
    }
    assert {d["rule"] for d in person.tick("2026-06-01T10:00:00Z")} == {IRET_CONTRACT}
    assert {d["rule"] for d in person.tick("2027-06-01T10:00:00Z")} == {
        "iret.legal_claims.customers"
    }
    assert person.holds() == set()


def test_a_new_record_after_the_end_reopens_the_relationship() -> None:
    person = Subject("iret")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", role="customer")
    person.send("customer", "2024-06-01T10:00:00Z", action="relationship_ended", role="customer")
    assert person.due(IRET_CONTRACT) == "2026-06-01T10:00:00Z"
    assert person.expires("order", "2024-07-01T10:00:00Z", IRET_CONTRACT, action="placed") is None
    assert person.due(IRET_CONTRACT) is None
    assert person.state is not None
    assert not person.state.holds[IRET_CONTRACT].ended


def test_zero_duration_relationship_is_erased_when_it_ends() -> None:
    person = Subject("inrego")
    person.send(
        "customer",
        "2024-01-10T09:00:00Z",
        action="created",
        role="contact_person",
        fields={"email": "a@b.se", "title": "CTO"},
    )
    assert "inrego.business_relationship.contact-persons" in person.holds()
    decisions = person.send(
        "customer", "2024-06-01T10:00:00Z", action="relationship_ended", role="contact_person"
    )
    ended = [d for d in decisions if d["decision"] == "erasure"]
    assert [(d["target"], d["reason"], d["rule"], d["action"]) for d in ended] == [
        (
            "business-systems",
            "relationship_ended",
            "inrego.business_relationship.contact-persons",
            "erase",
        ),
        (
            "it-service-providers",
            "relationship_ended",
            "inrego.business_relationship.contact-persons",
            "erase",
        ),
    ]
    assert {(d["issued_at"], d["deadline"]) for d in ended} == {
        ("2024-06-01T10:00:00Z", "2024-06-02T10:00:00Z")
    }
    assert {tuple(d["categories"]) for d in ended} == {("contact", "employment")}
    assert "inrego.business_relationship.contact-persons" not in person.holds()


# -- open-ended ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("controller", "rule_id", "grant"),
    [
        ("rego", "rego.direct_marketing.consent", True),
        ("inrego", "inrego.direct_marketing.customers-and-contacts", False),
    ],
)
def test_until_withdrawn_or_objection_has_no_end(
    controller: str, rule_id: str, grant: bool
) -> None:
    person = Subject(controller)
    if grant:
        person.send(
            "consent",
            "2024-01-10T08:00:00Z",
            purpose="direct_marketing",
            action="grant",
            channel="web",
        )
    assert (
        person.expires("customer", "2024-01-10T09:00:00Z", rule_id, action="created", fields=EMAIL)
        is None
    )
    assert person.due(rule_id) is None
    assert rule_id not in {d["rule"] for d in person.tick("2099-01-01T00:00:00Z")}
    assert rule_id in person.holds()


def test_hold_categories_are_those_the_event_carries_or_all_of_the_rule() -> None:
    person = Subject("rejoin")
    person.send(
        "customer",
        "2024-01-10T09:00:00Z",
        action="created",
        fields={"email": "a@b.se", "personnummer": "19900101-1234"},
    )
    assert person.state is not None
    names = POLICY["rejoin"].names
    assert names(person.state.holds[REJOIN_CONTRACT].categories) == ["identity", "contact"]
    other = Subject("rejoin")
    other.send("customer", "2024-01-10T09:00:00Z", action="created")
    assert other.state is not None
    assert names(other.state.holds[REJOIN_CONTRACT].categories) == [
        "identity",
        "contact",
        "account",
        "location",
        "order",
    ]
