"""Seed conformance: IRET (controller `iret`, seed 003_06869a113b05da9b.txt).

Each scenario cites the seed section it comes from. Instants are UTC; the pack counts
calendar periods on the Europe/Stockholm wall clock (CET +01:00 in winter, CEST +02:00
from the last Sunday of March to the last Sunday of October).
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import pytest

from privacy_pipeline.processors.instants import format_instant, parse_instant
from privacy_pipeline.processors.policy import load_pack

from .scenarios import (
    POLICIES,
    RIGHTS,
    answers_within_a_month,
    assert_same_output,
    consent,
    customer,
    erasure_command,
    erasure_commands,
    erasures,
    extracts,
    order,
    request,
    run,
    second_before,
    tag_of,
    tag_purpose,
)

C = "iret"
SEED = "003_06869a113b05da9b.txt"
S = "person-1"

CONTACT = {"name": "Per Persson", "email": "per@kund.se", "phone": "08-123 45"}

# Targets holding contact data for prospecting or direct marketing, in pack order
# (seed: "Vilka personuppgifter behandlas och vem är mottagare?": säljavdelning,
# IT-avdelning, marknadsavdelning).
PROSPECT_HOLDERS = ["sales", "it", "marketing"]

PROSPECTING = tag_purpose("prospecting", "legitimate_interest", None, "iret.prospecting.prospects")
CONTRACT_OPEN = tag_purpose("contract", "contract", None, "iret.contract.customers")
CLAIMS_OPEN = tag_purpose(
    "legal_claims", "legitimate_interest", None, "iret.legal_claims.customers"
)
DM_OPEN = tag_purpose(
    "direct_marketing",
    "legitimate_interest",
    None,
    "iret.direct_marketing.customer-representatives",
)

_cmd = partial(erasure_command, C, subject=S)


def _objection_commands(objected: str, **extra: Any) -> list[dict[str, Any]]:
    """Prospect data erased at once on an objection (deadline left out: see
    test_prospect_objection_is_acted_on_at_once_not_within_a_month).
    """
    rule = "iret.rights.objection"
    return [
        _cmd(t, "erase", ["prospecting"], ["contact"], "objection", rule, objected, None, **extra)
        for t in PROSPECT_HOLDERS
    ]


def _undated(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**c, "deadline": None} for c in commands]


def _prospect_dialogue() -> list[dict[str, Any]]:
    return [
        customer(C, S, "2024-04-02T07:00:00Z", role="prospect", fields=CONTACT, event_id="p1"),
        customer(
            C,
            S,
            "2024-05-15T12:00:00Z",
            "contacted",
            role="prospect",
            fields={"name": "Per Persson"},
            event_id="p2",
        ),
        customer(
            C,
            S,
            "2024-09-01T08:00:00Z",
            "updated",
            role="prospect",
            fields={"phone": "070-111"},
            event_id="p3",
        ),
    ]


def test_prospect_data_tagged_prospecting_while_the_dialogue_lasts() -> None:
    """Seed 003, "För vilka ändamål behandlas personuppgifterna?": data about
    representatives of potential customers is processed "i syfte att ta kontakt med kund för
    att kunna ge erbjudanden och information via telefon, e-post eller för att administrera
    inbokade möten". While the dialogue lasts it has no end date (expires_at null), and with
    no end event nothing is ever erased.
    """
    decisions = run(_prospect_dialogue(), until="2034-12-31T00:00:00Z")
    for event_id in ("p1", "p2", "p3"):
        tag = tag_of(decisions, event_id)
        assert tag["purposes"] == [PROSPECTING], event_id
        assert tag["suppressed"] == [], event_id
    assert erasures(decisions) == []


def test_prospect_data_erased_when_the_dialogue_ends_without_a_customer_relationship() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "Personuppgift avseende företrädare
    för potentiella kunder tas bort när dialogen upphört, under förutsättning att ingen
    kundrelation inletts". The end of the dialogue erases the prospect data at once (issued
    at that instant, reason relationship_ended) at sales, IT and marketing, and nothing is
    left to expire later.
    """
    ended = "2024-10-01T08:00:00Z"
    events = [
        *_prospect_dialogue(),
        customer(C, S, ended, "relationship_ended", role="prospect", fields={}, event_id="e1"),
    ]
    decisions = run(events, until="2040-01-01T00:00:00Z")
    assert tag_of(decisions, "e1")["purposes"] == []
    rule, due = "iret.prospecting.prospects", "2024-10-02T08:00:00Z"
    assert erasure_commands(decisions) == [
        _cmd(t, "erase", ["prospecting"], ["contact"], "relationship_ended", rule, ended, due)
        for t in PROSPECT_HOLDERS
    ]


def test_prospect_data_erased_at_once_on_objection_to_direct_marketing() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": prospect data is removed "direkt om
    personen invänder mot direktmarknadsföring" ("För vilka ändamål behandlas
    personuppgifterna?": "Företrädaren har alltid rätt att invända mot behandling för
    direktmarknadsföring"). An unsubscribe (consent event, action object) erases it at once
    with reason objection; later records of the person are not used for prospecting.
    """
    objected = "2024-04-03T07:00:00Z"
    decisions = run(
        [
            customer(C, S, "2024-04-02T07:00:00Z", role="prospect", fields=CONTACT),
            consent(C, S, objected, "direct_marketing", "object", channel="email"),
            customer(
                C,
                S,
                "2024-06-01T08:00:00Z",
                "contacted",
                role="prospect",
                fields={"phone": "070-111"},
                event_id="p2",
            ),
        ],
        until="2040-01-01T00:00:00Z",
    )
    assert _undated(erasure_commands(decisions)) == _objection_commands(objected)
    later = tag_of(decisions, "p2")
    assert later["purposes"] == []
    assert later["suppressed"] == [{"purpose": "prospecting", "reason": "objection"}]


def test_objection_request_erases_prospect_data_at_once() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "... eller direkt om personen
    invänder mot direktmarknadsföring". The same holds when the objection arrives as a
    verified privacy request (right=objection, no purposes: direct marketing).
    """
    objected = "2024-04-03T07:00:00Z"
    decisions = run(
        [
            customer(C, S, "2024-04-02T07:00:00Z", role="prospect", fields=CONTACT),
            request(C, S, objected, "objection", request_id="R-obj"),
            customer(
                C,
                S,
                "2024-04-10T07:00:00Z",
                "updated",
                role="prospect",
                fields={"email": "per@ny.se"},
                event_id="p2",
            ),
        ]
    )
    # The commands name the request that caused them (traceability for the DPO).
    commands = erasure_commands(decisions)
    assert _undated(commands) == _objection_commands(objected, request_id="R-obj")
    assert tag_of(decisions, "p2")["suppressed"] == [
        {"purpose": "prospecting", "reason": "objection"}
    ]


@pytest.mark.parametrize("via", ["consent", "request"])
def test_prospect_objection_is_acted_on_at_once_not_within_a_month(via: str) -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": prospect data "tas bort när dialogen
    upphört ... eller direkt om personen invänder mot direktmarknadsföring". "Direkt" is at
    once: the targets must be given no longer than for the end of the dialogue, which the
    text does not call immediate (the pack's culling deadline, one day), let alone the
    one-month maximum of GDPR art. 12(3).
    """
    objected = "2024-04-03T07:00:00Z"
    objection = (
        consent(C, S, objected, "direct_marketing", "object", channel="email")
        if via == "consent"
        else request(C, S, objected, "objection", request_id="R-obj")
    )
    prospect = customer(C, S, "2024-04-02T07:00:00Z", role="prospect", fields=CONTACT)
    by_objection = erasures(run([prospect, objection]), reason="objection")
    ended = customer(C, S, objected, "relationship_ended", role="prospect", fields={})
    by_dialogue_end = erasures(run([prospect, ended]), reason="relationship_ended")
    assert len(by_objection) == len(by_dialogue_end) == 3
    dialogue_deadline = parse_instant(by_dialogue_end[0]["deadline"])
    assert dialogue_deadline == parse_instant(objected) + timedelta(days=1)
    for c in by_objection:
        assert c["issued_at"] == objected
        assert parse_instant(c["deadline"]) <= dialogue_deadline, c


def test_objection_applies_to_every_later_event_of_the_person() -> None:
    """Seed 003, "För vilka ändamål behandlas personuppgifterna?": "Företrädares
    personuppgifter kan även behandlas för ändamålet att skicka nyhetsbrev/direktmarknadsföring
    till kunden. Företrädaren har dock rätt att när som helst invända". After the objection the
    marketing data is erased at once (an objection to direct marketing is absolute, GDPR art.
    21(3): the pack's opt-out deadline, one day) and every later record of that person has
    direct marketing suppressed (reason objection), years later too; contract and legal-claims
    processing go on and are not erased by it.
    """
    objected = "2024-02-05T10:00:00Z"
    decisions = run(
        [
            customer(C, S, "2024-02-01T10:00:00Z", role="customer", fields=CONTACT, event_id="c1"),
            request(C, S, objected, "objection", request_id="R-obj"),
            customer(
                C,
                S,
                "2024-08-01T08:00:00Z",
                "updated",
                fields={"email": "per@ny.se"},
                event_id="u1",
            ),
            order(C, S, "2025-01-10T10:00:00Z", "invoiced", event_id="i1"),
            customer(
                C, S, "2027-03-01T10:00:00Z", "updated", fields={"phone": "070-222"}, event_id="u2"
            ),
        ]
    )
    assert tag_of(decisions, "c1")["purposes"] == [CONTRACT_OPEN, CLAIMS_OPEN, DM_OPEN]
    rule, due = "iret.rights.objection", "2024-02-06T10:00:00Z"  # opt-out: one day after
    assert erasure_commands(decisions) == [
        _cmd(
            t,
            "erase",
            ["direct_marketing"],
            ["contact"],
            "objection",
            rule,
            objected,
            due,
            request_id="R-obj",
        )
        for t in PROSPECT_HOLDERS
    ]
    stopped = [{"purpose": "direct_marketing", "reason": "objection"}]
    for event_id in ("u1", "u2"):
        tag = tag_of(decisions, event_id)
        assert tag["purposes"] == [CONTRACT_OPEN, CLAIMS_OPEN], event_id
        assert tag["suppressed"] == stopped, event_id
    invoice = tag_of(decisions, "i1")
    assert "direct_marketing" not in [p["purpose"] for p in invoice["purposes"]]


def test_bookkeeping_kept_up_to_ten_years_from_the_invoice() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "Om sådan skyldighet föreligger kan
    personuppgifterna sparas i upp till 10 år" ("GDPR": "personuppgifter på fakturor till
    följd av bokföringsskyldighet"). The invoice is kept under a legal obligation for ten
    years from the invoice and erased at that instant (finance and IT), not a second before.
    """
    invoiced = "2024-03-15T10:00:00Z"
    expiry = "2034-03-15T10:00:00Z"
    events = [order(C, S, invoiced, "invoiced", event_id="i1")]
    tag = tag_of(run(events), "i1")
    rule = "iret.bookkeeping.invoices"
    assert tag["purposes"] == [
        CONTRACT_OPEN,
        CLAIMS_OPEN,
        tag_purpose("bookkeeping", "legal_obligation", expiry, rule),
    ]
    assert erasures(run(events, until=second_before(expiry))) == []
    assert erasure_commands(run(events, until=expiry)) == [
        _cmd(
            t,
            "erase",
            ["bookkeeping"],
            ["order"],
            "retention_expired",
            rule,
            expiry,
            "2034-03-16T10:00:00Z",
            recorded_before=invoiced,
        )
        for t in ("finance", "it")
    ]


def test_each_invoice_erased_when_its_own_ten_years_end() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "kan personuppgifterna sparas i upp
    till 10 år" -- ten years is the upper limit for each invoice. Two invoices on the same
    day (08:00 and 16:00 Stockholm): the morning invoice is erased at 08:00 ten years later,
    as its tag promised, not kept until the afternoon one expires.
    """
    first, second = "2024-03-15T07:00:00Z", "2024-03-15T15:00:00Z"
    first_expiry = "2034-03-15T07:00:00Z"
    events = [
        order(C, S, first, "invoiced", order_id="F-1", event_id="i1"),
        order(C, S, second, "invoiced", order_id="F-2", event_id="i2"),
    ]
    decisions = run(events)
    promised = {p["purpose"]: p["expires_at"] for p in tag_of(decisions, "i1")["purposes"]}
    assert promised["bookkeeping"] == first_expiry
    assert erasures(run(events, until=second_before(first_expiry))) == []
    fired = erasures(run(events, until=first_expiry), rule="iret.bookkeeping.invoices")
    assert [(c["target"], c["issued_at"]) for c in fired] == [
        ("finance", first_expiry),
        ("it", first_expiry),
    ]
    for c in fired:  # covers the morning invoice, not the afternoon one
        assert first <= c["recorded_before"] < second, c


def test_customer_data_expires_the_chosen_time_after_the_relationship_ends() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "Undantagsvis sparas därför
    personuppgifter viss tid efter kundförhållandets upphörande eller till att personen
    invänt mot direktmarknadsföring" (warranties and complaint periods, legal claims,
    marketing to former customers). "Viss tid" is not a period: the pack chooses 12 months
    for marketing, 24 for contract data and 36 for legal claims, each flagged as an
    assumption. While the relationship lasts nothing expires; after the end each purpose is
    erased at its instant, not a second before.
    """
    ended = "2024-06-30T12:00:00Z"
    events = [
        customer(C, S, "2023-09-01T08:00:00Z", role="customer", fields=CONTACT, event_id="c1"),
        order(C, S, "2023-10-01T08:00:00Z", "placed"),
        customer(C, S, ended, "relationship_ended", role="customer", fields={}),
        request(C, S, "2024-07-01T12:00:00Z", "access", request_id="R-acc"),
    ]
    decisions = run(events)
    assert tag_of(decisions, "c1")["purposes"] == [CONTRACT_OPEN, CLAIMS_OPEN, DM_OPEN]
    (extract,) = extracts(decisions)
    assert {p["rule"]: p["expires_at"] for p in extract["purposes"]} == {
        "iret.contract.customers": "2026-06-30T12:00:00Z",
        "iret.legal_claims.customers": "2027-06-30T12:00:00Z",
        "iret.direct_marketing.customer-representatives": "2025-06-30T12:00:00Z",
    }

    pack = load_pack(POLICIES / "iret.yaml")
    assert pack.seed == SEED
    chosen = {
        "iret.contract.customers": "24 months",
        "iret.legal_claims.customers": "36 months",
        "iret.direct_marketing.customer-representatives": "12 months",
    }
    for rule in pack.rules:
        if rule.id in chosen:
            assert rule.assumption and chosen[rule.id] in rule.assumption, rule.id

    dm, contract, claims = (
        "iret.direct_marketing.customer-representatives",
        "iret.contract.customers",
        "iret.legal_claims.customers",
    )
    expected = {
        dm: (
            "2025-06-30T12:00:00Z",
            [("sales", ["contact"]), ("it", ["contact"]), ("marketing", ["contact"])],
        ),
        contract: (
            "2026-06-30T12:00:00Z",
            [
                ("sales", ["contact"]),
                ("production", ["contact", "order"]),
                ("finance", ["contact", "order"]),
                ("it", ["contact", "order"]),
            ],
        ),
        claims: (
            "2027-06-30T12:00:00Z",
            [("finance", ["contact", "order"]), ("it", ["contact", "order"])],
        ),
    }
    for rule, (at, targets) in expected.items():
        assert erasures(run(events, until=second_before(at)), rule=rule) == [], rule
        fired = erasure_commands(run(events, until=at), rule=rule)
        purpose = _purpose_of(pack, rule)
        assert fired == [
            _cmd(
                t,
                "erase",
                [purpose],
                cats,
                "retention_expired",
                rule,
                at,
                format_instant(parse_instant(at) + timedelta(days=1)),
            )
            for t, cats in targets
        ], rule


def _purpose_of(pack: Any, rule_id: str) -> str:
    return next(r.purpose for r in pack.rules if r.id == rule_id)


def test_prospect_who_becomes_a_customer_is_not_erased_as_a_prospect() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": prospect data goes when the dialogue
    ends "under förutsättning att ingen kundrelation inletts". Once a customer relationship
    has begun the data is customer data: it is tagged for the customer purposes and nothing
    is erased while the relationship lasts.
    """
    decisions = run(
        [
            customer(C, S, "2024-01-10T10:00:00Z", role="prospect", fields=CONTACT),
            customer(C, S, "2024-03-01T10:00:00Z", role="customer", fields=CONTACT, event_id="c1"),
            order(C, S, "2024-03-05T10:00:00Z", "placed"),
        ],
        until="2040-01-01T00:00:00Z",
    )
    assert tag_of(decisions, "c1")["purposes"] == [CONTRACT_OPEN, CLAIMS_OPEN, DM_OPEN]
    assert erasures(decisions) == []


def test_pack_rules_without_a_period_in_the_text_carry_an_assumption() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": only the prospect rule ("när
    dialogen upphört ... eller direkt") and bookkeeping ("upp till 10 år") have periods in
    the text; the rest ("viss tid efter kundförhållandets upphörande") must be flagged. The
    seed names no legal basis at all, which the pack says too.
    """
    pack = load_pack(POLICIES / "iret.yaml")
    explicit = {"iret.prospecting.prospects", "iret.bookkeeping.invoices"}
    for rule in pack.rules:
        if rule.id not in explicit:
            assert rule.assumption and rule.assumption.strip(), rule.id
    assert any("legal basis" in a for a in pack.assumptions)
    prospecting = next(r for r in pack.rules if r.id == "iret.prospecting.prospects")
    assert prospecting.retention.from_ == "relationship_end"
    assert prospecting.retention.duration.calendar().is_zero()
    assert "direct_marketing" in prospecting.retention.ended_by_objection_to
    bookkeeping = next(r for r in pack.rules if r.id == "iret.bookkeeping.invoices")
    assert (bookkeeping.legal_basis, bookkeeping.retention.duration.years) == (
        "legal_obligation",
        10,
    )


def _history() -> list[dict[str, Any]]:
    return [
        customer(C, S, "2024-01-10T10:00:00Z", role="customer", fields=CONTACT),
        order(C, S, "2024-01-15T10:00:00Z", "invoiced"),
    ]


@pytest.mark.parametrize("right", RIGHTS)
def test_every_right_is_answered_within_one_month(right: str) -> None:
    """Seed 003, "För vilka ändamål behandlas personuppgifterna?" ("Företrädaren har dock
    rätt att när som helst invända"); the seed states no other right, but GDPR gives them
    all. Each request is answered at once, with a deadline one month after it was issued
    (GDPR art. 12(3)); 31 January 2024 + 1 month = 29 February 2024. An objection to direct
    marketing is absolute (art. 21(3); seed, on prospects: "direkt om personen invänder mot
    direktmarknadsföring"), so its commands carry the pack's opt-out deadline, one day:
    1 February 2024, well within the month.
    """
    answers = answers_within_a_month(C, S, _history(), right)
    if right in ("access", "portability"):
        (extract,) = answers
        assert extract["controller_name"] == "IRET"
        held = [p["purpose"] for p in extract["purposes"]]
        if right == "access":
            assert held == ["contract", "legal_claims", "direct_marketing", "bookkeeping"]
        else:
            assert held == ["contract"]
    elif right == "rectification":
        (rectify,) = answers
        assert rectify["decision"] == "rectify"
        assert rectify["targets"] == ["sales", "production", "finance", "it", "marketing"]
    elif right == "erasure":
        assert {c["reason"] for c in answers} == {"erasure_request"}
        restricted = [(c["target"], c["purposes"]) for c in answers if c["action"] == "restrict"]
        assert restricted == [("finance", ["bookkeeping"]), ("it", ["bookkeeping"])]
        assert not any("bookkeeping" in c["purposes"] for c in answers if c["action"] == "erase")
    elif right == "objection":
        assert [(c["target"], c["action"], c["purposes"], c["reason"]) for c in answers] == [
            (t, "erase", ["direct_marketing"], "objection") for t in PROSPECT_HOLDERS
        ]
    else:
        assert {(c["action"], c["reason"]) for c in answers} == {
            ("restrict", "restriction_request")
        }


def test_same_input_gives_identical_output() -> None:
    """Seed 003, "Hur länge lagras personuppgifterna?": "IRET genomför därför regelbundna
    gallringar": the culling must be reproducible, so the same events give byte-identical
    decisions, command ids included, and each command id is distinct.
    """
    events = [
        *_prospect_dialogue(),
        customer(C, S, "2024-10-01T08:00:00Z", "relationship_ended", role="prospect", fields={}),
        customer(C, "person-2", "2024-01-10T10:00:00Z", role="customer", fields=CONTACT),
        order(C, "person-2", "2024-01-15T10:00:00Z", "invoiced"),
        request(C, "person-2", "2024-02-01T10:00:00Z", "objection", request_id="R-2"),
        customer(C, "person-2", "2024-06-30T12:00:00Z", "relationship_ended", fields={}),
    ]
    assert_same_output(events, "2035-01-01T00:00:00Z", at_least=10)
