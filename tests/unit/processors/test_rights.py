"""Answers to data-subject requests: register extract, portability, rectification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import parse_event
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.replay import Replay
from privacy_pipeline.processors.rights import build_extract, build_rectify, render_extract
from privacy_pipeline.processors.state import SubjectState

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)
REGO = CompiledPolicy(PACKS["rego"])

PERSONAL = ["Anna Andersson", "anna@example.se", "19900101-1234", "192.0.2.44"]


def line(event_id: str, etype: str, at: str, controller: str = "rego", **kw: Any) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "type": etype,
            "controller": controller,
            "subject_id": "s1",
            "occurred_at": at,
            **kw,
        }
    )


HISTORY = [
    line(
        "1",
        "customer",
        "2024-01-10T09:00:00Z",
        action="created",
        fields={
            "name": "Anna Andersson",
            "email": "anna@example.se",
            "personnummer": "19900101-1234",
        },
    ),
    line(
        "2",
        "consent",
        "2024-01-10T09:05:00Z",
        purpose="direct_marketing",
        action="grant",
        channel="email",
    ),
    line(
        "3",
        "customer",
        "2024-02-01T09:00:00Z",
        action="updated",
        fields={"email": "anna@example.se"},
    ),
    line(
        "4",
        "order",
        "2024-02-02T09:00:00Z",
        action="placed",
        order_id="o1",
        amount=5,
        currency="SEK",
    ),
    line(
        "5",
        "order",
        "2024-02-03T09:00:00Z",
        action="invoiced",
        order_id="o1",
        amount=5,
        currency="SEK",
    ),
    line(
        "6",
        "click",
        "2024-02-04T09:00:00Z",
        url="https://rego.se/",
        ip="192.0.2.44",
        user_agent="ua",
    ),
]


def replay(lines: list[str]) -> tuple[Replay, list[dict[str, Any]]]:
    r = Replay(PolicyEnforcer(PACKS))
    return r, list(r.run(lines))


def request(right: str, at: str = "2024-03-01T10:00:00Z", **kw: Any) -> str:
    return line("r", "privacy_request", at, request_id="req-1", right=right, **kw)


def answer(right: str, history: list[str] = HISTORY, **kw: Any) -> dict[str, Any]:
    _, decisions = replay([*history, request(right, **kw)])
    return decisions[-1]


# -- access --------------------------------------------------------------------------------


def test_access_extract_header_fields() -> None:
    extract = answer("access")
    assert {
        k: extract[k]
        for k in (
            "decision",
            "request_id",
            "controller",
            "subject_id",
            "right",
            "issued_at",
            "deadline",
            "controller_name",
            "org_nr",
            "restrictions",
        )
    } == {
        "decision": "extract",
        "request_id": "req-1",
        "controller": "rego",
        "subject_id": "s1",
        "right": "access",
        "issued_at": "2024-03-01T10:00:00Z",
        "deadline": "2024-04-01T09:00:00Z",  # one calendar month, same Stockholm wall time
        "controller_name": "RE&GO AB",
        "org_nr": "559311-6113",
        "restrictions": [],
    }


def test_access_extract_categories() -> None:
    assert [c["category"] for c in answer("access")["categories"]] == [
        "identity",
        "contact",
        "order",
        "technical",
    ]
    assert answer("access")["categories"][2] == {
        "category": "order",
        "description": "order, purchase and transaction history",
    }


def test_access_extract_purposes_bases_and_retention() -> None:
    purposes = answer("access")["purposes"]
    assert [
        (
            p["purpose"],
            p["legal_basis"],
            p["rule"],
            p["categories"],
            p["retention"],
            p["expires_at"],
            p["restricted"],
        )
        for p in purposes
    ] == [
        (
            "contract",
            "contract",
            "rego.contract.customers",
            ["identity", "contact", "order"],
            "3 years after your latest activity",
            "2027-02-02T09:00:00Z",
            False,
        ),
        (
            "bookkeeping",
            "legal_obligation",
            "rego.bookkeeping.invoices",
            # The invoice names who was invoiced: what the person gave us travels with it.
            ["identity", "contact", "order"],
            "7 years after the end of the calendar year of the record",
            "2031-12-31T23:00:00Z",
            False,
        ),
        (
            "credit_assessment",
            "legitimate_interest",
            "rego.credit_assessment.orders",
            ["identity", "contact"],
            "12 months after each record",
            "2025-01-10T09:00:00Z",
            False,
        ),
        (
            "analytics",
            "legitimate_interest",
            "rego.analytics.web",
            ["technical"],
            "24 months after each record",
            "2026-02-04T09:00:00Z",
            False,
        ),
        (
            "direct_marketing",
            "consent",
            "rego.direct_marketing.consent",
            ["contact"],
            "until you withdraw your consent",
            None,
            False,
        ),
    ]
    assert purposes[3]["source"] == (
        "seed section Personuppgifter som RE&GO har samlat in om dig, "
        "seed section Andra som får del av dina uppgifter"
    )


def test_access_extract_sources_are_the_event_types_seen() -> None:
    assert [s["type"] for s in answer("access")["sources"]] == [
        "click",
        "consent",
        "customer",
        "order",
        "privacy_request",
    ]
    only_customer = answer("access", history=HISTORY[:1])
    assert [s["type"] for s in only_customer["sources"]] == ["customer", "privacy_request"]


def test_access_extract_recipients() -> None:
    recipients = answer("access")["recipients"]
    assert [(r["target"], r["purposes"]) for r in recipients] == [
        ("crm", ["contract", "direct_marketing", "credit_assessment"]),
        ("erp", ["contract", "bookkeeping"]),
        ("address-and-print", ["contract", "direct_marketing"]),
        ("payment", ["contract"]),
        ("web-analytics", ["analytics"]),
        ("market-analysis", ["analytics"]),
        ("email-sms", ["direct_marketing"]),
        ("credit-agency", ["credit_assessment"]),
    ]
    assert recipients[0]["description"] == "CRM and case-management system providers"


def test_access_extract_consents() -> None:
    assert answer("access")["consents"] == [
        {
            "purpose": "direct_marketing",
            "action": "grant",
            "channel": "email",
            "at": "2024-01-10T09:05:00Z",
        },
    ]


def test_access_extract_text() -> None:
    text = answer("access")["text"]
    lines = text.splitlines()
    assert lines[0] == "Register extract from RE&GO AB (org.nr 559311-6113)"
    assert lines[1] == "Request req-1, answered 2024-03-01T10:00:00Z."
    assert (
        "  - bookkeeping (legal_obligation): kept 7 years after the end of the calendar year "
        "of the record; currently until 2031-12-31T23:00:00Z" in lines
    )
    assert (
        "  - direct_marketing (consent): kept until you withdraw your consent; currently "
        "until no fixed date yet" in lines
    )
    assert "  - 2024-01-10T09:05:00Z: grant direct_marketing via email" in lines
    assert "  - credit-information agencies (credit_assessment)" in lines


def test_extract_never_contains_personal_values() -> None:
    text = json.dumps(answer("access"), ensure_ascii=False)
    for value in PERSONAL:
        assert value not in text


def test_access_for_an_unknown_person() -> None:
    extract = answer("access", history=[])
    assert extract["purposes"] == []
    assert extract["categories"] == []
    assert extract["recipients"] == []
    assert extract["sources"] == [
        {"type": "privacy_request", "description": "the requests you made about your personal data"}
    ]
    assert extract["text"] == (
        "Register extract from RE&GO AB (org.nr 559311-6113)\n"
        "Request req-1, answered 2024-03-01T10:00:00Z.\n"
        "\n"
        "We hold no personal data about you."
    )


def test_extract_of_a_controller_without_name_or_org_nr() -> None:
    history = [
        line(
            "1",
            "click",
            "2024-01-10T09:00:00Z",
            controller="unnamed004",
            url="u",
            ip="192.0.2.1",
            user_agent="ua",
        )
    ]
    _, decisions = replay(
        [
            *history,
            line(
                "r",
                "privacy_request",
                "2024-03-01T10:00:00Z",
                controller="unnamed004",
                request_id="q",
                right="access",
            ),
        ]
    )
    extract = decisions[-1]
    assert (extract["controller_name"], extract["org_nr"]) == (None, None)
    assert extract["text"].splitlines()[0] == "Register extract from the controller 'unnamed004'"


def test_restricted_data_is_marked_in_the_extract() -> None:
    history = [
        *HISTORY,
        line("x", "privacy_request", "2024-02-20T09:00:00Z", request_id="q0", right="erasure"),
    ]
    extract = answer("access", history=history)
    assert [(p["purpose"], p["restricted"]) for p in extract["purposes"]] == [("bookkeeping", True)]
    assert "(restricted: stored only, not used)" in extract["text"]


# -- portability ---------------------------------------------------------------------------


def test_portability_only_includes_consent_and_contract_bases() -> None:
    extract = answer("portability")
    assert extract["right"] == "portability"
    assert [(p["purpose"], p["legal_basis"]) for p in extract["purposes"]] == [
        ("contract", "contract"),
        ("direct_marketing", "consent"),
    ]
    assert {p["legal_basis"] for p in extract["purposes"]} <= {"consent", "contract"}
    # Categories and recipients follow the portable purposes only (no technical data).
    assert [c["category"] for c in extract["categories"]] == ["identity", "contact", "order"]
    assert [r["target"] for r in extract["recipients"]] == [
        "crm",
        "erp",
        "address-and-print",
        "payment",
        "email-sms",
    ]
    for r in extract["recipients"]:
        assert set(r["purposes"]) <= {"contract", "direct_marketing"}
    assert extract["text"].startswith("Data portability export from RE&GO AB")


# -- rectification -------------------------------------------------------------------------


def test_rectify_lists_every_target_holding_the_persons_data() -> None:
    decision = answer("rectification")
    assert decision == {
        "decision": "rectify",
        "request_id": "req-1",
        "controller": "rego",
        "subject_id": "s1",
        "targets": [
            "crm",
            "erp",
            "address-and-print",
            "payment",
            "web-analytics",
            "market-analysis",
            "email-sms",
            "credit-agency",
        ],
        "issued_at": "2024-03-01T10:00:00Z",
        "deadline": "2024-04-01T09:00:00Z",
    }


def test_rectify_for_a_visitor_only_lists_the_analytics_targets() -> None:
    assert answer("rectification", history=HISTORY[5:])["targets"] == [
        "web-analytics",
        "market-analysis",
    ]


def test_rectify_for_an_unknown_person_lists_no_targets() -> None:
    assert answer("rectification", history=[])["targets"] == []


# -- direct calls --------------------------------------------------------------------------


@pytest.mark.parametrize("right", ["access", "portability"])
def test_build_extract_directly_on_an_empty_state(right: str) -> None:
    event = parse_event(json.loads(request(right)))
    now = parse_instant("2024-01-31T12:00:00Z")
    extract = build_extract(REGO, SubjectState(), event, now)
    assert extract["deadline"] == "2024-02-29T12:00:00Z"
    assert extract["text"] == render_extract(extract)


def test_build_rectify_directly_on_an_empty_state() -> None:
    event = parse_event(json.loads(request("rectification")))
    decision = build_rectify(REGO, SubjectState(), event, parse_instant("2024-01-31T12:00:00Z"))
    assert decision["targets"] == []
    assert decision["deadline"] == "2024-02-29T12:00:00Z"
