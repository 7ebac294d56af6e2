"""The consent step: the ledger, what a withdrawal or an objection ends, and suppression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.consent import ConsentEntry
from privacy_pipeline.processors.erasure import Affected, Ending
from privacy_pipeline.processors.events import Event, parse_event
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.optout import object_to, record_consent, suppression
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.state import RESTRICT_ALL, RuleHold, SubjectState

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)
REGO = CompiledPolicy(PACKS["rego"])
INREGO = CompiledPolicy(PACKS["inrego"])
AT = "2024-03-01T10:00:00Z"
NOW = parse_instant(AT)


def consent(controller: str, action: str, purpose: str = "direct_marketing") -> Event:
    obj: dict[str, Any] = {
        "event_id": f"c-{action}",
        "type": "consent",
        "controller": controller,
        "subject_id": "s1",
        "occurred_at": AT,
        "purpose": purpose,
        "action": action,
        "channel": "email",
    }
    return parse_event(obj)


def holding(policy: CompiledPolicy, *rule_ids: str) -> SubjectState:
    state = SubjectState()
    for rid in rule_ids:
        view = policy.rule_by_id[rid]
        state.holds[rid] = RuleHold(categories=view.categories, last=NOW)
    return state


def test_a_grant_is_entered_and_ends_nothing() -> None:
    state = SubjectState()
    endings: list[Ending] = []
    record_consent(REGO, state, consent("rego", "grant"), NOW, endings)
    assert endings == []
    assert state.ledger.status("direct_marketing") == "granted"
    assert state.ledger.entries[-1].event_id == "c-grant"


def test_a_withdrawal_erases_exactly_the_data_resting_on_that_consent() -> None:
    dm, contract = "rego.direct_marketing.consent", "rego.contract.customers"
    state = holding(REGO, dm, contract)
    endings: list[Ending] = []
    record_consent(REGO, state, consent("rego", "withdraw"), NOW, endings)
    assert set(state.holds) == {contract}
    [ending] = endings
    assert ending.action == "erase"
    assert list(ending.affected) == [Affected("direct_marketing", REGO.rule_by_id[dm].categories)]
    assert (ending.cause.reason, ending.cause.rule) == (
        "consent_withdrawn",
        "rego.consent.withdrawal",
    )
    assert (ending.cause.issued_at, ending.cause.key) == (NOW, "c-withdraw")


def test_an_unsubscribe_from_legitimate_interest_is_an_objection() -> None:
    dm = "inrego.direct_marketing.customers-and-contacts"
    state = holding(INREGO, dm, "inrego.contract.orders")
    endings: list[Ending] = []
    record_consent(INREGO, state, consent("inrego", "withdraw"), NOW, endings)
    assert [(e.action, e.cause.reason) for e in endings] == [
        ("erase", "objection"),
        ("restrict", "objection"),
    ]
    assert [a.purpose for a in endings[0].affected] == ["direct_marketing"]
    assert dm not in state.holds
    assert "inrego.contract.orders" in state.holds


def test_an_objection_leaves_the_ledger_to_the_caller() -> None:
    state = holding(INREGO, "inrego.direct_marketing.customers-and-contacts")
    endings: list[Ending] = []
    object_to(INREGO, state, consent("inrego", "object"), ("direct_marketing",), NOW, endings)
    assert state.ledger.entries == ()
    assert [a.purpose for a in endings[0].affected] == ["direct_marketing"]
    assert list(endings[1].affected) == []


def with_ledger(*entries: tuple[str, str]) -> SubjectState:
    state = SubjectState()
    for purpose, action in entries:
        state.ledger = state.ledger.append(ConsentEntry(purpose, action, "web", NOW, "x"))
    return state


def test_suppression_of_a_purpose_resting_on_consent() -> None:
    view = REGO.rule_by_id["rego.direct_marketing.consent"]
    assert suppression(view, SubjectState()) == "no_consent"
    assert suppression(view, with_ledger(("analytics", "object"))) == "no_consent"
    assert suppression(view, with_ledger(("direct_marketing", "grant"))) is None
    withdrawn = with_ledger(("direct_marketing", "grant"), ("direct_marketing", "withdraw"))
    assert suppression(view, withdrawn) == "consent_withdrawn"
    assert suppression(view, with_ledger(("direct_marketing", "object"))) == "objection"


def test_suppression_of_a_purpose_resting_on_legitimate_interest() -> None:
    view = INREGO.rule_by_id["inrego.direct_marketing.customers-and-contacts"]
    assert suppression(view, SubjectState()) is None
    assert suppression(view, with_ledger(("direct_marketing", "object"))) == "objection"
    assert suppression(view, with_ledger(("direct_marketing", "withdraw"))) == "objection"
    assert suppression(view, with_ledger(("analytics", "object"))) is None


def test_a_restriction_suppresses_all_but_legal_obligations() -> None:
    everything = SubjectState(restricted=frozenset({RESTRICT_ALL}))
    named = SubjectState(restricted=frozenset({"analytics"}))
    contract = REGO.rule_by_id["rego.contract.customers"]
    analytics = REGO.rule_by_id["rego.analytics.web"]
    bookkeeping = REGO.rule_by_id["rego.bookkeeping.invoices"]
    assert suppression(contract, everything) == "restriction_request"
    assert suppression(bookkeeping, everything) is None
    assert suppression(analytics, named) == "restriction_request"
    assert suppression(contract, named) is None
