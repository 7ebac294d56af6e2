"""Seed conformance: RE&GO AB (controller `rego`, seed 000_6bf9072790decf88.txt).

Each scenario cites the seed section it comes from. Instants are UTC; the pack counts
calendar periods on the Europe/Stockholm wall clock (CET +01:00 in winter, CEST +02:00
from the last Sunday of March to the last Sunday of October).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from privacy_pipeline.processors.policy import load_pack

from .scenarios import (
    POLICIES,
    RIGHTS,
    answers_within_a_month,
    assert_same_output,
    click,
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

C = "rego"
SEED = "000_6bf9072790decf88.txt"
S = "kund-1"

CONTACT = {"name": "Anna Andersson", "email": "anna@example.se", "address": "Storgatan 1"}
WITH_PNR = {**CONTACT, "personnummer": "19790101-1234"}

# The recipients of the pack, in pack order (seed: "Andra som får del av dina uppgifter").
DM_HOLDERS = ["crm", "address-and-print", "email-sms"]


_cmd = partial(erasure_command, C, subject=S)


def _contract(expires_at: str) -> dict[str, Any]:
    return tag_purpose("contract", "contract", expires_at, "rego.contract.customers")


def _credit_assessment(expires_at: str) -> dict[str, Any]:
    return tag_purpose(
        "credit_assessment", "legitimate_interest", expires_at, "rego.credit_assessment.orders"
    )


def test_direct_marketing_without_consent_is_suppressed() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": direct marketing rests
    on consent ("Om du särskilt lämnat ditt samtycke till att få direktmarknadsföring ...").
    With no consent on record, or consent only to something else, the record may not be used
    for direct marketing: it is listed as suppressed with reason `no_consent`. Contract data
    and the credit check ("Därför behöver vi dina personuppgifter": "genom kreditupplysning")
    are tagged with the pack's periods.
    """
    other = "kund-2"
    decisions = run(
        [
            customer(C, S, "2024-03-15T10:00:00Z", fields=WITH_PNR, event_id="c1"),
            consent(C, other, "2024-03-15T09:00:00Z", "surveys", "grant", event_id="g2"),
            customer(C, other, "2024-03-15T10:00:00Z", fields=CONTACT, event_id="c2"),
        ]
    )
    first = tag_of(decisions, "c1")
    assert first["purposes"] == [
        _contract("2027-03-15T10:00:00Z"),
        _credit_assessment("2025-03-15T10:00:00Z"),
    ]
    assert first["suppressed"] == [{"purpose": "direct_marketing", "reason": "no_consent"}]
    second = tag_of(decisions, "c2")
    assert [p["purpose"] for p in second["purposes"]] == ["contract"]
    assert second["suppressed"] == [{"purpose": "direct_marketing", "reason": "no_consent"}]
    assert erasures(decisions) == []


def test_consent_grant_tags_direct_marketing_until_withdrawn() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": with consent, RE&GO
    processes the data used only for direct marketing "tills du avregistrerar dig": consent
    is the basis and there is no end date (expires_at null) until the person unsubscribes.
    """
    decisions = run(
        [
            consent(C, S, "2024-03-15T09:00:00Z", "direct_marketing", "grant", channel="web"),
            customer(C, S, "2024-03-15T10:00:00Z", fields=CONTACT, event_id="c1"),
            customer(
                C, S, "2025-11-20T10:00:00Z", "updated", fields={"phone": "0701"}, event_id="u1"
            ),
        ],
        until="2026-12-31T00:00:00Z",
    )
    dm = tag_purpose("direct_marketing", "consent", None, "rego.direct_marketing.consent")
    created = tag_of(decisions, "c1")
    assert created["purposes"] == [_contract("2027-03-15T10:00:00Z"), dm]
    assert created["suppressed"] == []
    updated = tag_of(decisions, "u1")
    assert dm in updated["purposes"]
    assert updated["suppressed"] == []
    # The grant itself is no record; nothing is erased while consent stands.
    assert [d["decision"] for d in decisions] == ["tag", "tag"]


def test_unsubscribe_erases_marketing_data_only_where_it_is_held() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": "tills du
    avregistrerar dig eller meddelar oss att du inte längre vill motta
    direktmarknadsföring". The withdrawal erases the marketing data at once, with reason
    consent_withdrawn, at the targets holding it for direct marketing ("Andra som får del
    av dina uppgifter": CRM, address/print and distribution, e-mail/SMS dispatch), and only
    there; an opt-out is acted on at once (GDPR art. 21(3), the pack's opt-out deadline of
    one day, not the month of art. 12(3)): 2 May 10:00 CEST -> 3 May 10:00 CEST.
    """
    decisions = run(
        [
            consent(C, S, "2024-03-15T09:00:00Z", "direct_marketing", "grant"),
            customer(C, S, "2024-03-15T10:00:00Z", fields=CONTACT, event_id="c1"),
            order(C, S, "2024-03-20T10:00:00Z", "placed"),
            click(C, S, "2024-03-21T10:00:00Z"),
            consent(C, S, "2024-05-02T08:00:00Z", "direct_marketing", "withdraw", event_id="w1"),
        ]
    )
    expected = [
        _cmd(
            t,
            "erase",
            ["direct_marketing"],
            ["contact"],
            "consent_withdrawn",
            "rego.consent.withdrawal",
            "2024-05-02T08:00:00Z",
            "2024-05-03T08:00:00Z",
        )
        for t in DM_HOLDERS
    ]
    assert erasure_commands(decisions) == expected
    # Other processing goes on: nothing held for contract, credit or analytics is touched.
    assert all(c["purposes"] == ["direct_marketing"] for c in erasures(decisions))


def test_after_unsubscribe_marketing_stays_stopped_and_other_processing_continues() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": "Ofta används dock
    uppgifterna även till andra ändamål varför behandlingen kan fortsätta, men vi slutar
    skicka dig direktmarknadsföring." Every record after the withdrawal has direct marketing
    suppressed (consent_withdrawn), while contract and analytics are still tagged.
    """
    decisions = run(
        [
            consent(C, S, "2024-03-15T09:00:00Z", "direct_marketing", "grant"),
            customer(C, S, "2024-03-15T10:00:00Z", fields=CONTACT, event_id="c1"),
            consent(C, S, "2024-05-02T08:00:00Z", "direct_marketing", "withdraw"),
            customer(
                C, S, "2024-05-10T08:00:00Z", "updated", fields={"email": "a@b.se"}, event_id="u1"
            ),
            order(C, S, "2024-06-01T10:00:00Z", "placed", event_id="o1"),
            click(C, S, "2024-06-02T10:00:00Z", event_id="k1"),
            customer(
                C,
                S,
                "2025-01-10T09:00:00Z",
                "updated",
                fields={"address": "Ny väg 2"},
                event_id="u2",
            ),
        ]
    )
    stopped = [{"purpose": "direct_marketing", "reason": "consent_withdrawn"}]
    u1 = tag_of(decisions, "u1")
    assert u1["purposes"] == [_contract("2027-03-15T10:00:00Z")]
    assert u1["suppressed"] == stopped
    o1 = tag_of(decisions, "o1")
    assert o1["purposes"] == [
        _contract("2027-06-01T10:00:00Z"),
        _credit_assessment("2025-06-01T10:00:00Z"),
    ]
    k1 = tag_of(decisions, "k1")
    assert k1["purposes"] == [
        tag_purpose(
            "analytics", "legitimate_interest", "2026-06-02T10:00:00Z", "rego.analytics.web"
        )
    ]
    u2 = tag_of(decisions, "u2")
    assert [p["purpose"] for p in u2["purposes"]] == ["contract"]
    assert u2["suppressed"] == stopped
    # The withdrawal's three commands and nothing more.
    assert len(erasures(decisions)) == 3
    assert {c["reason"] for c in erasures(decisions)} == {"consent_withdrawn"}


def test_unsubscribe_link_sent_as_objection_also_stops_marketing() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": marketing stops when
    "du avregistrerar dig eller meddelar oss att du inte längre vill motta
    direktmarknadsföring", however it reaches us. An unsubscribe link delivered as a consent
    event with action `object` (the design's example of an objection) stops it just the
    same: erased at once at the same three targets (the pack's opt-out deadline, one day:
    GDPR art. 21(3)), suppressed on every later record.
    """
    unsubscribed = "2024-05-02T08:00:00Z"
    decisions = run(
        [
            consent(C, S, "2024-03-15T09:00:00Z", "direct_marketing", "grant"),
            customer(C, S, "2024-03-15T10:00:00Z", fields=CONTACT),
            consent(C, S, unsubscribed, "direct_marketing", "object", channel="email"),
            customer(
                C, S, "2024-05-10T08:00:00Z", "updated", fields={"email": "a@b.se"}, event_id="u1"
            ),
        ]
    )
    commands = erasures(decisions)
    assert [(c["target"], c["action"], c["purposes"], c["categories"]) for c in commands] == [
        (t, "erase", ["direct_marketing"], ["contact"]) for t in DM_HOLDERS
    ]
    assert {(c["issued_at"], c["deadline"]) for c in commands} == {
        (unsubscribed, "2024-05-03T08:00:00Z")
    }
    # Withdrawal of consent or objection: the seed does not tell them apart.
    assert {c["reason"] for c in commands} <= {"consent_withdrawn", "objection"}
    later = tag_of(decisions, "u1")
    assert [p["purpose"] for p in later["purposes"]] == ["contract"]
    assert [s["purpose"] for s in later["suppressed"]] == ["direct_marketing"]
    assert later["suppressed"][0]["reason"] in {"consent_withdrawn", "objection"}


def test_erasure_request_restricts_bookkeeping_and_erases_the_rest() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": "Dina personuppgifter
    kan sparas längre än vad som angetts ovan i den mån RE&GO är skyldiga att göra det enligt
    lag". On an erasure request the invoice (Bookkeeping Act) is restricted, not erased, at
    the business system that keeps it; everything else is erased at once at every target
    holding it; when the bookkeeping period ends (through 2031, the seventh year after 2024)
    the invoice is erased: at 2032-01-01 00:00 Stockholm, not a second before. The invoice
    holds who was invoiced as well as the order: the person gave identity and contact data
    at account creation, and the bookkeeping rule keeps identity, contact and order, of which
    the ERP holds contact and order.
    """
    events = [
        customer(C, S, "2024-03-15T10:00:00Z", fields=WITH_PNR),
        order(C, S, "2024-03-16T10:00:00Z", "placed"),
        order(C, S, "2024-03-16T10:05:00Z", "invoiced"),
        click(C, S, "2024-03-17T10:00:00Z"),
        request(C, S, "2024-04-02T08:00:00Z", "erasure", request_id="R-1"),
    ]
    at, due = "2024-04-02T08:00:00Z", "2024-05-02T08:00:00Z"

    def req(target: str, action: str, purposes: list[str], cats: list[str]) -> dict[str, Any]:
        return _cmd(
            target,
            action,
            purposes,
            cats,
            "erasure_request",
            "rego.rights.erasure",
            at,
            due,
            request_id="R-1",  # every command names the request that caused it
        )

    on_request = [
        req("crm", "erase", ["contract", "credit_assessment"], ["identity", "contact"]),
        req("erp", "erase", ["contract"], ["contact", "order"]),
        req("address-and-print", "erase", ["contract"], ["contact"]),
        req("payment", "erase", ["contract"], ["contact", "order"]),
        req("web-analytics", "erase", ["analytics"], ["technical"]),
        req("market-analysis", "erase", ["analytics"], ["technical"]),
        req("credit-agency", "erase", ["credit_assessment"], ["identity", "contact"]),
        req("erp", "restrict", ["bookkeeping"], ["contact", "order"]),
    ]
    before = run(events, until="2031-12-31T22:59:59Z")
    assert erasure_commands(before) == on_request
    assert not any(
        "bookkeeping" in c["purposes"] and c["action"] == "erase" for c in erasures(before)
    )

    after = run(events, until="2031-12-31T23:00:00Z")
    assert erasure_commands(after) == on_request + [
        _cmd(
            "erp",
            "erase",
            ["bookkeeping"],
            ["contact", "order"],
            "retention_expired",
            "rego.bookkeeping.invoices",
            "2031-12-31T23:00:00Z",
            "2032-01-01T23:00:00Z",
            recorded_before="2024-03-16T10:05:00Z",
        )
    ]


@pytest.mark.parametrize(
    ("invoiced_at", "expires_at"),
    [
        # 2024-12-31 23:30 in Stockholm: calendar year 2024, kept through 2031.
        ("2024-12-31T22:30:00Z", "2031-12-31T23:00:00Z"),
        # 2025-01-01 00:30 in Stockholm: calendar year 2025, kept through 2032.
        ("2024-12-31T23:30:00Z", "2032-12-31T23:00:00Z"),
    ],
)
def test_bookkeeping_kept_through_seventh_year_after_the_calendar_year(
    invoiced_at: str, expires_at: str
) -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": "samt så länge det
    krävs enligt lag" -- the Bookkeeping Act keeps invoices through the seventh year after the
    end of the calendar year (the year as counted in Stockholm). Erased at that instant with
    reason retention_expired, not one second before.
    """
    events = [order(C, S, invoiced_at, "invoiced", event_id="i1")]
    tag = tag_of(run(events), "i1")
    assert (
        tag_purpose("bookkeeping", "legal_obligation", expires_at, "rego.bookkeeping.invoices")
        in tag["purposes"]
    )

    one_second_before = second_before(expires_at)
    assert erasures(run(events, until=one_second_before), rule="rego.bookkeeping.invoices") == []
    fired = erasures(run(events, until=expires_at), rule="rego.bookkeeping.invoices")
    assert [(c["target"], c["action"], c["reason"], c["issued_at"]) for c in fired] == [
        ("erp", "erase", "retention_expired", expires_at)
    ]


def test_contract_data_erased_when_its_period_after_the_latest_activity_ends() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": data is kept "så länge
    det är nödvändigt för att utföra våra avtalsmässiga ... åtaganden gentemot dig". The pack
    reads that as 3 years after the latest purchase, account creation or customer-service
    contact (an assumption); a later purchase moves the end. Erased at that instant at every
    target holding contract data, not a second before.
    """
    events = [
        customer(C, S, "2024-03-15T10:00:00Z", fields=CONTACT, event_id="c1"),
        order(C, S, "2025-06-01T08:00:00Z", "placed", event_id="o1"),
    ]
    decisions = run(events)
    contract = {p["purpose"]: p["expires_at"] for p in tag_of(decisions, "c1")["purposes"]}
    assert contract["contract"] == "2027-03-15T10:00:00Z"
    later = {p["purpose"]: p["expires_at"] for p in tag_of(decisions, "o1")["purposes"]}
    assert later["contract"] == "2028-06-01T08:00:00Z"

    rule = "rego.contract.customers"
    assert erasures(run(events, until="2028-06-01T07:59:59Z"), rule=rule) == []
    at, due = "2028-06-01T08:00:00Z", "2028-06-02T08:00:00Z"
    holders = [
        ("crm", ["contact"]),
        ("erp", ["contact", "order"]),
        ("address-and-print", ["contact"]),
        ("payment", ["contact", "order"]),
    ]
    assert erasure_commands(run(events, until=at), rule=rule) == [
        _cmd(t, "erase", ["contract"], cats, "retention_expired", rule, at, due)
        for t, cats in holders
    ]


def test_pack_flags_every_vague_period_as_an_assumption() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter": the text gives no
    period except for consent-based marketing ("tills du avregistrerar dig"); everything
    else is "så länge det är nödvändigt", "under rimlig tid", "vilket beror på situationen".
    Every rule without a period in the text must carry an assumption naming the period chosen.
    """
    pack = load_pack(POLICIES / "rego.yaml")
    assert pack.seed == SEED
    explicit = {"rego.direct_marketing.consent"}
    chosen_words = {
        "rego.contract.customers": "3 years",
        "rego.bookkeeping.invoices": "seventh year",
        "rego.credit_assessment.orders": "12 months",
        "rego.analytics.web": "24 months",
    }
    vague = [r for r in pack.rules if r.id not in explicit]
    assert sorted(r.id for r in vague) == sorted(chosen_words)
    for rule in vague:
        assert rule.assumption and rule.assumption.strip(), rule.id
        assert chosen_words[rule.id] in rule.assumption, rule.id
    dm = next(r for r in pack.rules if r.id == "rego.direct_marketing.consent")
    assert (dm.purpose, dm.legal_basis, dm.retention.from_) == (
        "direct_marketing",
        "consent",
        "until_withdrawn",
    )
    for rule in pack.rules:
        assert rule.cites, rule.id


def test_register_extract_names_the_controller() -> None:
    """Seed 000, "Vi ansvarar för dina personuppgifter": "Det är RE&GO AB (org.nr.
    559311-6113) som är ansvarig för dina personuppgifter". The register extract names the
    controller and its organisation number, lists what is held and why, and is answered
    within one month (GDPR art. 12(3)).
    """
    decisions = run(
        [
            customer(C, S, "2024-01-10T10:00:00Z", fields=CONTACT),
            request(C, S, "2024-01-31T12:00:00Z", "access", request_id="R-9"),
        ]
    )
    (extract,) = extracts(decisions)
    assert extract["controller_name"] == "RE&GO AB"
    assert extract["org_nr"] == "559311-6113"
    assert extract["text"].splitlines()[0] == "Register extract from RE&GO AB (org.nr 559311-6113)"
    assert extract["issued_at"] == "2024-01-31T12:00:00Z"
    assert extract["deadline"] == "2024-02-29T12:00:00Z"
    assert [(p["purpose"], p["legal_basis"], p["expires_at"]) for p in extract["purposes"]] == [
        ("contract", "contract", "2027-01-10T10:00:00Z")
    ]


def _history() -> list[dict[str, Any]]:
    return [
        consent(C, S, "2024-01-10T09:00:00Z", "direct_marketing", "grant"),
        customer(C, S, "2024-01-10T10:00:00Z", fields=WITH_PNR),
        order(C, S, "2024-01-15T10:00:00Z", "invoiced"),
        click(C, S, "2024-01-20T10:00:00Z"),
    ]


ALL_TARGETS = [
    "crm",
    "erp",
    "address-and-print",
    "payment",
    "web-analytics",
    "market-analysis",
    "email-sms",
    "credit-agency",
]


@pytest.mark.parametrize("right", RIGHTS)
def test_every_right_is_answered_within_one_month(right: str) -> None:
    """Seed 000, "Integritetspolicy" (introduction): "Policyn beskriver även dina
    rättigheter gentemot RE&GO och hur du kan utöva dina rättigheter." Every request is
    answered at once, with a deadline one month after it was issued (GDPR art. 12(3));
    31 January 2024 + 1 month = 29 February 2024. An objection to direct marketing stops it
    at once ("Så här länge behandlar RE&GO dina personuppgifter": "tills du avregistrerar dig
    eller meddelar oss"; GDPR art. 21(3)): the pack's opt-out deadline, one day, so
    1 February 2024, well within the month.
    """
    answers = answers_within_a_month(C, S, _history(), right)
    if right in ("access", "portability"):
        (extract,) = answers
        held = [p["purpose"] for p in extract["purposes"]]
        if right == "access":
            assert held == [
                "contract",
                "bookkeeping",
                "credit_assessment",
                "analytics",
                "direct_marketing",
            ]
        else:  # art. 20: only what rests on consent or contract
            assert held == ["contract", "direct_marketing"]
    elif right == "rectification":
        (rectify,) = answers
        assert rectify["decision"] == "rectify"
        assert rectify["request_id"] == "R-1"
        assert rectify["targets"] == ALL_TARGETS
    elif right == "erasure":
        assert {c["reason"] for c in answers} == {"erasure_request"}
        restricted = [c for c in answers if c["action"] == "restrict"]
        assert [(c["target"], c["purposes"]) for c in restricted] == [("erp", ["bookkeeping"])]
        erased_targets = {c["target"] for c in answers if c["action"] == "erase"}
        assert erased_targets == set(ALL_TARGETS)
    elif right == "objection":
        assert [(c["target"], c["action"], c["purposes"], c["reason"]) for c in answers] == [
            (t, "erase", ["direct_marketing"], "objection") for t in DM_HOLDERS
        ]
    else:
        assert {(c["action"], c["reason"]) for c in answers} == {
            ("restrict", "restriction_request")
        }
        assert {c["target"] for c in answers} == set(ALL_TARGETS)


def test_same_input_gives_identical_output() -> None:
    """Seed 000, "Så här länge behandlar RE&GO dina personuppgifter" ("etablerade
    gallringsrutiner"): the culling must be provable, so the same events give byte-identical
    decisions, command ids included, and each command id is distinct.
    """
    events = [
        *_history(),
        consent(C, S, "2024-02-01T08:00:00Z", "direct_marketing", "withdraw"),
        request(C, S, "2024-03-01T08:00:00Z", "erasure", request_id="R-2"),
    ]
    assert_same_output(events, "2032-06-01T00:00:00Z", at_least=10)
