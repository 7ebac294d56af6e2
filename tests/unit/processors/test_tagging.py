"""The tag step: per rule, the consent check, retention, and the legal basis at the time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.consent import ConsentEntry
from privacy_pipeline.processors.events import Event, parse_event
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.state import RESTRICT_ALL, RuleHold, SubjectState
from privacy_pipeline.processors.tagging import legal_basis, tag_record

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)
REGO = CompiledPolicy(PACKS["rego"])
INREGO = CompiledPolicy(PACKS["inrego"])


def event(controller: str, etype: str, at: str, **kw: Any) -> Event:
    obj: dict[str, Any] = {
        "event_id": kw.pop("event_id", "e1"),
        "type": etype,
        "controller": controller,
        "subject_id": "s1",
        "occurred_at": at,
        **kw,
    }
    if etype == "order":
        obj.setdefault("order_id", "o1")
    return parse_event(obj)


def created(controller: str, at: str = "2024-03-01T10:00:00Z") -> Event:
    fields = {"name": "A", "email": "a@example.se", "personnummer": "19800101-0000"}
    return event(controller, "customer", at, action="created", fields=fields)


def purposes(tag: dict[str, Any]) -> list[str]:
    return [p["purpose"] for p in tag["purposes"]]


def test_a_record_is_tagged_and_kept_under_every_rule_that_applies() -> None:
    state = SubjectState()
    tag = tag_record(REGO, state, created("rego"), frozenset())
    assert tag["decision"] == "tag"
    assert (tag["event_id"], tag["controller"], tag["subject_id"]) == ("e1", "rego", "s1")
    assert purposes(tag) == ["contract", "credit_assessment"]
    # Direct marketing rests on consent, and there is none on record.
    assert tag["suppressed"] == [{"purpose": "direct_marketing", "reason": "no_consent"}]
    assert set(state.holds) == {"rego.contract.customers", "rego.credit_assessment.orders"}
    assert state.categories != 0


def test_rules_the_record_ended_are_skipped() -> None:
    state = SubjectState()
    tag = tag_record(REGO, state, created("rego"), {"rego.credit_assessment.orders"})
    assert purposes(tag) == ["contract"]
    assert "rego.credit_assessment.orders" not in state.holds


def test_a_granted_consent_lets_the_purpose_through() -> None:
    state = SubjectState()
    at = parse_instant("2024-02-01T10:00:00Z")
    state.ledger = state.ledger.append(ConsentEntry("direct_marketing", "grant", "web", at, "c"))
    tag = tag_record(REGO, state, created("rego"), frozenset())
    assert purposes(tag) == ["contract", "credit_assessment", "direct_marketing"]
    assert tag["suppressed"] == []
    dm = next(p for p in tag["purposes"] if p["purpose"] == "direct_marketing")
    assert (dm["legal_basis"], dm["expires_at"]) == ("consent", None)


def test_restricted_data_is_kept_but_not_used() -> None:
    state = SubjectState(restricted=frozenset({RESTRICT_ALL}))
    tag = tag_record(REGO, state, created("rego"), frozenset())
    assert purposes(tag) == []
    assert {"purpose": "contract", "reason": "restriction_request"} in tag["suppressed"]
    assert state.holds["rego.contract.customers"].restricted


def test_an_order_carries_the_categories_the_person_gave_before() -> None:
    state = SubjectState()
    tag_record(REGO, state, created("rego"), frozenset())
    invoiced = event("rego", "order", "2024-03-02T10:00:00Z", action="invoiced", event_id="e2")
    tag_record(REGO, state, invoiced, frozenset())
    held = REGO.names(state.holds["rego.bookkeeping.invoices"].categories)
    assert "order" in held
    assert "contact" in held


def test_the_legal_basis_lapses_to_the_inactive_basis() -> None:
    view = INREGO.rule_by_id["inrego.account.user-accounts"]
    anchor = parse_instant("2024-01-10T09:00:00Z")
    hold = RuleHold(categories=view.categories, last=anchor, anchor=anchor)
    within = parse_instant("2024-12-10T09:00:00Z")
    after = parse_instant("2025-01-10T09:00:00Z")
    assert legal_basis(INREGO, view, hold, within) == "contract"
    assert legal_basis(INREGO, view, hold, after) == "legitimate_interest"


def test_a_rule_without_an_inactive_basis_keeps_its_own() -> None:
    view = REGO.rule_by_id["rego.contract.customers"]
    anchor = parse_instant("2020-01-01T00:00:00Z")
    hold = RuleHold(categories=view.categories, last=anchor, anchor=anchor)
    assert legal_basis(REGO, view, hold, parse_instant("2030-01-01T00:00:00Z")) == "contract"
