"""The policy enforcer: tagging, opt-outs, objections, restriction, erasure, timers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import Event, EventError, parse_event
from privacy_pipeline.processors.instants import format_instant, parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.state import DEDUP_WINDOW, SubjectState

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)


class Subject:
    """One person at one controller, driven event by event with the clock at each event."""

    def __init__(self, controller: str, subject_id: str = "s1") -> None:
        self.enforcer = PolicyEnforcer(PACKS)
        self.controller = controller
        self.subject_id = subject_id
        self.state: SubjectState | None = None
        self.n = 0

    def event(self, etype: str, at: str, **kw: Any) -> Event:
        self.n += 1
        obj: dict[str, Any] = {
            "event_id": kw.pop("event_id", f"e{self.n}"),
            "type": etype,
            "controller": self.controller,
            "subject_id": self.subject_id,
            "occurred_at": at,
            **kw,
        }
        if etype == "click":
            obj.update(url="https://x/", ip="192.0.2.1", user_agent="ua")
        if etype == "order":
            obj.setdefault("order_id", f"o{self.n}")
        if etype == "privacy_request":
            obj.setdefault("request_id", f"r{self.n}")
        return parse_event(obj)

    def send(self, etype: str, at: str, **kw: Any) -> list[dict[str, Any]]:
        return self.apply(self.event(etype, at, **kw))

    def consent(self, at: str, action: str, channel: str = "email") -> list[dict[str, Any]]:
        """Send a consent event for direct marketing: grant, withdraw or object."""
        return self.send("consent", at, purpose="direct_marketing", action=action, channel=channel)

    def request(self, at: str, right: str, **kw: Any) -> list[dict[str, Any]]:
        """Send a verified privacy request for `right` (`purposes=[...]` to name some)."""
        return self.send("privacy_request", at, right=right, **kw)

    def apply(self, event: Event, now: datetime | None = None) -> list[dict[str, Any]]:
        self.state, decisions = self.enforcer.on_event(self.state, event, now or event.occurred_at)
        return decisions

    def tick(self, at: str) -> list[dict[str, Any]]:
        assert self.state is not None
        self.state, decisions = self.enforcer.on_time(
            self.state, self.controller, self.subject_id, parse_instant(at)
        )
        return decisions

    @property
    def holds(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state.holds


def tagged(decision: dict[str, Any]) -> list[tuple[str, str]]:
    assert decision["decision"] == "tag"
    return [(p["purpose"], p["legal_basis"]) for p in decision["purposes"]]


def suppressed(decision: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["purpose"], s["reason"]) for s in decision["suppressed"]]


def commands(decisions: list[dict[str, Any]]) -> list[tuple[str, str, list[str], str]]:
    return [
        (d["target"], d["action"], d["purposes"], d["reason"])
        for d in decisions
        if d["decision"] == "erasure"
    ]


EMAIL = {"email": "anna@example.se", "name": "Anna"}


# -- tagging and the contract shape --------------------------------------------------------


def test_tag_decision_shape() -> None:
    person = Subject("inrego")
    [tag] = person.send("customer", "2024-03-01T10:00:00Z", action="created", fields=EMAIL)
    assert tag == {
        "decision": "tag",
        "event_id": "e1",
        "controller": "inrego",
        "subject_id": "s1",
        "purposes": [
            {
                "purpose": "account",
                "legal_basis": "contract",
                "expires_at": "2029-03-01T10:00:00Z",
                "rule": "inrego.account.user-accounts",
            },
            {
                "purpose": "direct_marketing",
                "legal_basis": "legitimate_interest",
                "expires_at": None,
                "rule": "inrego.direct_marketing.customers-and-contacts",
            },
        ],
        "suppressed": [],
    }


def test_account_basis_turns_to_legitimate_interest_once_inactive() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    [tag] = person.send("customer", "2024-12-10T09:00:00Z", action="updated", fields=EMAIL)
    assert ("account", "contract") in tagged(tag)
    [tag] = person.send("customer", "2025-01-10T09:00:00Z", action="updated", fields=EMAIL)
    assert ("account", "legitimate_interest") in tagged(tag)
    assert tag["purposes"][0]["expires_at"] == "2029-01-10T09:00:00Z"
    person.send("order", "2025-02-01T09:00:00Z", action="placed")  # activity again
    [tag] = person.send("customer", "2025-03-01T09:00:00Z", action="updated", fields=EMAIL)
    assert ("account", "contract") in tagged(tag)
    assert tag["purposes"][0]["expires_at"] == "2030-02-01T09:00:00Z"


def test_a_new_person_without_a_role_is_a_customer() -> None:
    person = Subject("inrego")
    [tag] = person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    assert ("account", "contract") in tagged(tag)  # the account rule is for role customer
    assert person.state is not None
    assert person.state.role == "customer"


def test_sources_and_role_are_remembered() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", role="contact_person")
    person.send("click", "2024-01-10T09:01:00Z")
    assert person.state is not None
    assert person.state.role == "contact_person"
    assert person.state.sources == 0b00101  # click and customer (sorted type order)


# -- redelivery and unknown controllers ----------------------------------------------------


def test_second_delivery_of_an_event_gives_no_decisions() -> None:
    person = Subject("rego")
    event = person.event("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    assert person.apply(event) != []
    assert person.state is not None
    before = person.state.to_dict()
    assert person.apply(event) == []
    assert person.state.to_dict() == before


def test_redelivered_withdrawal_issues_no_second_round_of_commands() -> None:
    person = Subject("rego")
    person.consent("2024-01-10T09:00:00Z", "grant", "web")
    person.send("customer", "2024-01-10T09:01:00Z", action="created", fields=EMAIL)
    withdraw = person.event(
        "consent",
        "2024-02-01T09:00:00Z",
        purpose="direct_marketing",
        action="withdraw",
        channel="email",
    )
    assert commands(person.apply(withdraw))
    assert person.apply(withdraw) == []
    assert person.state is not None
    assert len(person.state.ledger) == 2


def test_dedup_window_covers_the_recent_events_of_the_subject() -> None:
    person = Subject("inrego")
    first = person.event("click", "2024-01-10T09:00:00Z")
    person.apply(first)
    for i in range(DEDUP_WINDOW - 1):
        person.send("click", f"2024-01-10T10:{i:02d}:00Z")
    assert person.apply(first) == []


def test_unknown_controller_is_an_event_error() -> None:
    enforcer = PolicyEnforcer(PACKS)
    event = parse_event(
        {
            "event_id": "e1",
            "type": "click",
            "controller": "acme",
            "subject_id": "s1",
            "occurred_at": "2024-01-10T09:00:00Z",
            "url": "u",
            "ip": "192.0.2.1",
            "user_agent": "a",
        }
    )
    with pytest.raises(EventError) as info:
        enforcer.on_event(None, event, event.occurred_at)
    assert info.value.field == "controller"
    assert str(info.value) == "field 'controller': unknown controller (no policy pack)"
    with pytest.raises(EventError):
        enforcer.on_time(SubjectState(), "acme", "s1", event.occurred_at)


# -- consent withdrawal --------------------------------------------------------------------


def test_withdrawal_stops_exactly_the_consent_based_purposes() -> None:
    person = Subject("rego")
    [tag] = person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    assert tagged(tag) == [("contract", "contract")]
    assert suppressed(tag) == [("direct_marketing", "no_consent")]

    assert person.consent("2024-01-10T09:05:00Z", "grant") == []
    [tag] = person.send("customer", "2024-01-11T09:00:00Z", action="updated", fields=EMAIL)
    assert tagged(tag) == [("contract", "contract"), ("direct_marketing", "consent")]
    person.send("click", "2024-01-11T10:00:00Z")
    assert set(person.holds) == {
        "rego.contract.customers",
        "rego.direct_marketing.consent",
        "rego.analytics.web",
    }

    decisions = person.consent("2024-02-01T09:00:00Z", "withdraw")
    assert commands(decisions) == [
        ("crm", "erase", ["direct_marketing"], "consent_withdrawn"),
        ("address-and-print", "erase", ["direct_marketing"], "consent_withdrawn"),
        ("email-sms", "erase", ["direct_marketing"], "consent_withdrawn"),
    ]
    assert {(d["rule"], d["issued_at"], d["deadline"]) for d in decisions} == {
        # An opt-out takes effect at once: the pack's opt-out deadline (default one day).
        ("rego.consent.withdrawal", "2024-02-01T09:00:00Z", "2024-02-02T09:00:00Z")
    }
    assert {tuple(d["categories"]) for d in decisions} == {("contact",)}
    # Only the consent-based data went; the rest is untouched.
    assert set(person.holds) == {"rego.contract.customers", "rego.analytics.web"}

    # The very next record: contract goes on, direct marketing is suppressed.
    [tag] = person.send("customer", "2024-02-01T09:00:01Z", action="updated", fields=EMAIL)
    assert tagged(tag) == [("contract", "contract")]
    assert suppressed(tag) == [("direct_marketing", "consent_withdrawn")]

    # A new grant opens it again.
    person.consent("2024-03-01T09:00:00Z", "grant", "web")
    [tag] = person.send("customer", "2024-03-02T09:00:00Z", action="updated", fields=EMAIL)
    assert ("direct_marketing", "consent") in tagged(tag)


def test_withdrawal_at_unnamed004_erases_marketing_and_profiling_only() -> None:
    person = Subject("unnamed004")
    person.consent("2024-01-10T09:00:00Z", "grant", "web")
    person.send(
        "customer",
        "2024-01-10T09:01:00Z",
        action="created",
        fields={"email": "a@b.se", "segment": "A1"},
    )
    person.send("click", "2024-01-10T09:02:00Z")
    decisions = person.consent("2024-02-01T09:00:00Z", "withdraw")
    assert [(d["target"], d["purposes"], d["categories"]) for d in decisions] == [
        ("registers", ["direct_marketing"], ["contact", "profile"]),
    ]
    assert set(person.holds) == {
        "unnamed004.contract.customers-and-suppliers",
        "unnamed004.analytics.digital-services",
    }


def test_withdrawal_for_a_purpose_not_on_consent_is_an_objection() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    decisions = person.consent("2024-02-01T09:00:00Z", "withdraw")
    assert {d["reason"] for d in decisions} == {"objection"}
    assert "inrego.direct_marketing.customers-and-contacts" not in person.holds


def test_grant_alone_issues_nothing() -> None:
    person = Subject("rego")
    assert person.consent("2024-01-10T09:00:00Z", "grant", "web") == []


# -- objection -----------------------------------------------------------------------------


def test_objection_to_direct_marketing_erases_marketing_data_only() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    person.send("click", "2024-01-10T09:01:00Z")
    person.send("order", "2024-01-11T09:00:00Z", action="invoiced")
    before = set(person.holds)
    decisions = person.consent("2024-02-01T09:00:00Z", "object")
    assert commands(decisions) == [
        ("business-systems", "erase", ["direct_marketing"], "objection"),
        ("it-service-providers", "erase", ["direct_marketing"], "objection"),
        ("marketing-services", "erase", ["direct_marketing"], "objection"),
    ]
    assert {(d["rule"], d["deadline"]) for d in decisions} == {
        ("inrego.rights.objection", "2024-02-02T09:00:00Z")
    }
    assert set(person.holds) == before - {"inrego.direct_marketing.customers-and-contacts"}
    assert not any(h.restricted for h in person.holds.values())
    [tag] = person.send("customer", "2024-02-01T09:00:01Z", action="updated", fields=EMAIL)
    assert tagged(tag) == [("account", "contract")]
    assert suppressed(tag) == [("direct_marketing", "objection")]


def test_objection_request_defaults_to_direct_marketing_and_is_recorded() -> None:
    person = Subject("rejoin")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    decisions = person.request("2024-02-01T09:00:00Z", "objection")
    assert commands(decisions) == [
        ("customer-systems", "erase", ["direct_marketing"], "objection"),
    ]
    assert person.state is not None
    [entry] = person.state.ledger.entries
    assert (entry.purpose, entry.action, entry.channel) == ("direct_marketing", "object", "request")
    assert set(person.holds) == {"rejoin.contract.customers"}


def test_objection_to_direct_marketing_also_ends_iret_prospecting() -> None:
    # The IRET pack ends prospecting on an objection to direct marketing (seed 003).
    person = Subject("iret")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", role="prospect", fields=EMAIL)
    decisions = person.consent("2024-01-11T09:00:00Z", "object")
    assert commands(decisions) == [
        ("sales", "erase", ["prospecting"], "objection"),
        ("it", "erase", ["prospecting"], "objection"),
        ("marketing", "erase", ["prospecting"], "objection"),
    ]
    [tag] = person.send(
        "customer", "2024-01-12T09:00:00Z", action="updated", role="prospect", fields=EMAIL
    )
    assert suppressed(tag) == [("prospecting", "objection")]


def test_objection_to_another_purpose_restricts_it() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    person.send("click", "2024-01-10T09:01:00Z")
    decisions = person.request("2024-02-01T09:00:00Z", "objection", purposes=["analytics"])
    assert commands(decisions) == [
        ("web-analytics", "restrict", ["analytics"], "objection"),
        ("it-service-providers", "restrict", ["analytics"], "objection"),
    ]
    assert person.holds["inrego.analytics.web-visits"].restricted


def test_objection_to_marketing_and_another_purpose_restricts_the_other() -> None:
    # `_object`: "direct marketing stops and its data goes; other purposes are restricted".
    # Objecting to direct marketing and analytics together must not erase analytics data.
    person = Subject("inrego")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    person.send("click", "2024-01-11T09:00:00Z")
    decisions = person.request(
        "2024-01-12T09:00:00Z", "objection", purposes=["direct_marketing", "analytics"]
    )
    by_purpose = {
        (p, d["action"]) for d in decisions if d["decision"] == "erasure" for p in d["purposes"]
    }
    assert ("direct_marketing", "erase") in by_purpose
    assert ("analytics", "restrict") in by_purpose
    assert ("analytics", "erase") not in by_purpose
    assert person.holds["inrego.analytics.web-visits"].restricted


# -- restriction ---------------------------------------------------------------------------


def test_restriction_suppresses_but_bookkeeping_continues() -> None:
    person = Subject("rejoin")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    person.send("order", "2024-01-11T09:00:00Z", action="invoiced")
    decisions = person.request("2024-02-01T09:00:00Z", "restriction")
    assert commands(decisions) == [
        ("customer-systems", "restrict", ["contract", "direct_marketing"], "restriction_request"),
        ("subcontractors", "restrict", ["contract"], "restriction_request"),
        ("credit-agency", "restrict", ["contract"], "restriction_request"),
        ("accounting-archive", "restrict", ["bookkeeping"], "restriction_request"),
    ]
    assert {d["rule"] for d in decisions} == {"rejoin.rights.restriction"}
    assert all(h.restricted for h in person.holds.values())

    [tag] = person.send("order", "2024-02-02T09:00:00Z", action="invoiced")
    # Bookkeeping (a legal obligation) goes on; the rest is suppressed for restriction.
    assert tagged(tag) == [("bookkeeping", "legal_obligation")]
    assert suppressed(tag) == [("contract", "restriction_request")]
    # ...and the bookkeeping of the pipeline goes on too: the records are still kept.
    contract = person.holds["rejoin.contract.customers"]
    assert format_instant(contract.last) == "2024-02-02T09:00:00Z"
    assert contract.restricted
    assert format_instant(person.holds["rejoin.bookkeeping.invoices"].last) == (
        "2024-02-02T09:00:00Z"
    )

    [tag] = person.send("order", "2024-02-03T09:00:00Z", action="placed")
    assert tag["purposes"] == []
    assert suppressed(tag) == [
        ("contract", "restriction_request"),
        ("personalization", "restriction_request"),
        ("direct_marketing", "restriction_request"),
    ]
    assert person.holds["rejoin.personalization.behaviour"].restricted


def test_restriction_of_named_purposes_only() -> None:
    person = Subject("rejoin")
    person.send("customer", "2024-01-10T09:00:00Z", action="created", fields=EMAIL)
    decisions = person.request("2024-02-01T09:00:00Z", "restriction", purposes=["direct_marketing"])
    assert commands(decisions) == [
        ("customer-systems", "restrict", ["direct_marketing"], "restriction_request"),
    ]
    [tag] = person.send("customer", "2024-02-02T09:00:00Z", action="contacted", fields=EMAIL)
    assert tagged(tag) == [("contract", "contract")]
    assert suppressed(tag) == [("direct_marketing", "restriction_request")]


# -- erasure request -----------------------------------------------------------------------


def test_erasure_request_erases_all_but_legal_obligation_which_it_restricts() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-03-01T10:00:00Z", action="created", fields=EMAIL)
    person.send("order", "2024-03-02T10:00:00Z", action="invoiced", amount=10, currency="SEK")
    person.send("click", "2024-03-02T11:00:00Z")
    decisions = person.request("2024-04-01T10:00:00Z", "erasure")
    assert commands(decisions) == [
        (
            "business-systems",
            "erase",
            ["account", "contract", "direct_marketing"],
            "erasure_request",
        ),
        ("web-analytics", "erase", ["analytics"], "erasure_request"),
        (
            "it-service-providers",
            "erase",
            ["analytics", "account", "contract", "direct_marketing"],
            "erasure_request",
        ),
        ("marketing-services", "erase", ["direct_marketing"], "erasure_request"),
        ("logistics", "erase", ["contract"], "erasure_request"),
        ("business-systems", "restrict", ["bookkeeping"], "erasure_request"),
        ("it-service-providers", "restrict", ["bookkeeping"], "erasure_request"),
        ("auditors", "restrict", ["bookkeeping"], "erasure_request"),
    ]
    assert {(d["rule"], d["issued_at"], d["deadline"]) for d in decisions} == {
        ("inrego.rights.erasure", "2024-04-01T10:00:00Z", "2024-05-01T10:00:00Z")
    }
    assert list(person.holds) == ["inrego.bookkeeping.invoices"]
    hold = person.holds["inrego.bookkeeping.invoices"]
    assert hold.restricted
    assert format_instant(hold.due) == "2031-12-31T23:00:00Z"  # type: ignore[arg-type]

    # A second request finds nothing new to do.
    assert person.request("2024-04-02T10:00:00Z", "erasure") == []

    # The restricted accounting records go when the law no longer keeps them.
    assert person.tick("2031-12-31T22:59:59Z") == []
    fired = person.tick("2031-12-31T23:00:00Z")
    assert commands(fired) == [
        ("business-systems", "erase", ["bookkeeping"], "retention_expired"),
        ("it-service-providers", "erase", ["bookkeeping"], "retention_expired"),
        ("auditors", "erase", ["bookkeeping"], "retention_expired"),
    ]
    assert {(d["rule"], d["issued_at"], d["deadline"], d["recorded_before"]) for d in fired} == {
        (
            "inrego.bookkeeping.invoices",
            "2031-12-31T23:00:00Z",
            "2032-01-01T23:00:00Z",
            "2024-03-02T10:00:00Z",
        )
    }
    assert person.holds == {}
    assert person.tick("2040-01-01T00:00:00Z") == []


def test_erasure_request_for_named_purposes() -> None:
    person = Subject("inrego")
    person.send("customer", "2024-03-01T10:00:00Z", action="created", fields=EMAIL)
    person.send("click", "2024-03-02T11:00:00Z")
    decisions = person.request("2024-04-01T10:00:00Z", "erasure", purposes=["analytics"])
    assert commands(decisions) == [
        ("web-analytics", "erase", ["analytics"], "erasure_request"),
        ("it-service-providers", "erase", ["analytics"], "erasure_request"),
    ]
    assert set(person.holds) == {
        "inrego.account.user-accounts",
        "inrego.direct_marketing.customers-and-contacts",
    }


def test_erasure_request_honours_on_erasure_request_restrict() -> None:
    person = Subject("rejoin")
    person.send("order", "2024-01-11T09:00:00Z", action="invoiced")
    decisions = person.request("2024-02-01T09:00:00Z", "erasure")
    assert commands(decisions) == [
        ("customer-systems", "erase", ["contract"], "erasure_request"),
        ("subcontractors", "erase", ["contract"], "erasure_request"),
        ("accounting-archive", "restrict", ["bookkeeping"], "erasure_request"),
    ]


# -- triggers and timers -------------------------------------------------------------------


def test_account_closed_by_the_person_is_anonymised_within_a_month() -> None:
    person = Subject("inrego")
    person.send("customer", "2025-01-10T09:00:00Z", action="created", fields=EMAIL)
    decisions = person.send("customer", "2025-03-10T09:00:00Z", action="closed")
    assert decisions[0]["purposes"] == []
    assert commands(decisions) == [
        ("business-systems", "anonymize", ["account"], "account_closed"),
        ("it-service-providers", "anonymize", ["account"], "account_closed"),
    ]
    assert {(d["rule"], d["deadline"]) for d in decisions[1:]} == {
        ("inrego.account.closed-by-person", "2025-04-10T08:00:00Z")  # CET -> CEST
    }
    assert set(person.holds) == {"inrego.direct_marketing.customers-and-contacts"}


def test_on_event_fires_what_is_due_at_its_clock() -> None:
    person = Subject("inrego")
    person.send("click", "2024-01-10T09:00:00Z")
    # The clock is passed in: an event handled at a later clock fires the due timer after it.
    event = person.event("click", "2026-01-10T09:00:00Z")
    decisions = person.apply(event, parse_instant("2026-01-10T09:00:00Z"))
    assert [d["decision"] for d in decisions] == ["tag", "erasure", "erasure"]
    assert decisions[1]["recorded_before"] == "2024-01-10T09:00:00Z"
    assert decisions[1]["reason"] == "retention_expired"


def test_on_time_before_due_fires_nothing() -> None:
    person = Subject("inrego")
    person.send("click", "2024-01-10T09:00:00Z")
    assert person.tick("2026-01-10T08:59:59Z") == []
    assert person.state is not None
    assert format_instant(person.state.next_due()) == "2026-01-10T09:00:00Z"  # type: ignore[arg-type]
    assert len(person.tick("2026-01-10T09:00:00Z")) == 2
    assert person.state.next_due() is None
