"""Seed conformance: the unnamed controller of seed 004_341820bca543b2fe.txt (`unnamed004`).

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

C = "unnamed004"
SEED = "004_341820bca543b2fe.txt"
S = "kund-1"

CONTACT = {"name": "Eva Ek", "email": "eva@foretag.se"}
CONTRACT_RULE = "unnamed004.contract.customers-and-suppliers"
CONTRACT_OPEN = tag_purpose("contract", "contract", None, CONTRACT_RULE)

_cmd = partial(erasure_command, C, subject=S)


def test_customer_data_kept_while_the_relationship_lasts() -> None:
    """Seed 004, "Hur länge behåller vi data": "Kund- och leverantörsdata sparas så länge du
    är kund eller leverantör hos oss". While the person is a customer the data has no end
    date (expires_at null) and nothing is erased, however long that lasts. Marketing rests on
    consent in the pack ("Dina rättigheter": "Viss behandling av data baseras på ...
    samtycke"), so without one it is suppressed with reason no_consent.
    """
    decisions = run(
        [
            customer(C, S, "2024-02-10T09:00:00Z", role="customer", fields=CONTACT, event_id="c1"),
            order(C, S, "2024-03-01T10:00:00Z", "placed", event_id="o1"),
            customer(
                C, S, "2026-08-01T09:00:00Z", "updated", fields={"phone": "08-1"}, event_id="u1"
            ),
        ],
        until="2045-01-01T00:00:00Z",
    )
    created = tag_of(decisions, "c1")
    assert created["purposes"] == [CONTRACT_OPEN]
    assert created["suppressed"] == [{"purpose": "direct_marketing", "reason": "no_consent"}]
    assert tag_of(decisions, "o1")["purposes"] == [CONTRACT_OPEN]
    assert tag_of(decisions, "u1")["purposes"] == [CONTRACT_OPEN]
    assert erasures(decisions) == []


def test_customer_data_erased_36_months_after_the_relationship_ends() -> None:
    """Seed 004, "Hur länge behåller vi data": "... och därefter som längst 36 månader."
    The relationship ends 2024-05-20 10:00 CEST; the data is erased (reason
    retention_expired) at 2027-05-20 10:00 CEST at the registers and the subcontractors
    ("Vem lämnar vi ut data till": "underleverantörer"), not a second before.
    """
    ended, expiry = "2024-05-20T08:00:00Z", "2027-05-20T08:00:00Z"
    events = [
        customer(C, S, "2024-02-10T09:00:00Z", role="customer", fields=CONTACT),
        order(C, S, "2024-03-01T10:00:00Z", "placed"),
        customer(C, S, ended, "relationship_ended", role="customer", fields={}, event_id="e1"),
        request(C, S, "2024-06-01T08:00:00Z", "access", request_id="R-acc"),
    ]
    decisions = run(events)
    assert tag_of(decisions, "e1")["purposes"] == []
    (extract,) = extracts(decisions)
    assert [(p["rule"], p["expires_at"]) for p in extract["purposes"]] == [(CONTRACT_RULE, expiry)]
    assert erasures(run(events, until=second_before(expiry))) == []
    assert erasure_commands(run(events, until=expiry)) == [
        _cmd(
            t,
            "erase",
            ["contract"],
            ["contact", "order"],
            "retention_expired",
            CONTRACT_RULE,
            expiry,
            "2027-05-21T08:00:00Z",
        )
        for t in ("registers", "subcontractors")
    ]


def test_supplier_data_kept_while_supplying_then_at_most_36_months() -> None:
    """Seed 004, "Hur länge behåller vi data": "Kund- och leverantörsdata sparas så länge du
    är ... leverantör hos oss och därefter som längst 36 månader" ("Hur samlar vi in data":
    "data om dig som blir kund eller leverantör"). A supplier relationship ending
    2024-02-29 ends its data at 2027-02-28 (no 29 February in 2027: at most 36 months).
    """
    s = "leverantor-1"
    ended, expiry = "2024-02-29T10:00:00Z", "2027-02-28T10:00:00Z"
    events = [
        customer(
            C,
            s,
            "2023-11-01T09:00:00Z",
            role="supplier",
            fields={"name": "Lars Lev", "company": "Lev AB", "phone": "08-2"},
            event_id="l1",
        ),
        customer(C, s, ended, "relationship_ended", role="supplier", fields={}),
    ]
    decisions = run(events, until=second_before(expiry))
    supplier = tag_of(decisions, "l1")
    assert supplier["purposes"] == [CONTRACT_OPEN]
    assert "direct_marketing" not in [p["purpose"] for p in supplier["purposes"]]
    assert erasures(decisions) == []
    assert erasure_commands(run(events, until=expiry)) == [
        _cmd(
            t,
            "erase",
            ["contract"],
            ["contact"],
            "retention_expired",
            CONTRACT_RULE,
            expiry,
            "2027-03-01T10:00:00Z",
            subject=s,
        )
        for t in ("registers", "subcontractors")
    ]


def test_a_returning_customer_is_kept_again_while_the_relationship_lasts() -> None:
    """Seed 004, "Hur länge behåller vi data": data is kept "så länge du är kund". A
    customer who orders again after an earlier end is a customer again: no expiry while
    that lasts, and the 36 months run from the new end (2026-01-01 -> 2029-01-01).
    """
    events = [
        customer(C, S, "2024-02-10T09:00:00Z", role="customer", fields=CONTACT),
        customer(C, S, "2024-05-20T08:00:00Z", "relationship_ended", role="customer", fields={}),
        order(C, S, "2025-01-10T10:00:00Z", "placed", event_id="o2"),
        customer(C, S, "2025-12-31T23:00:00Z", "relationship_ended", role="customer", fields={}),
    ]
    decisions = run(events, until="2028-12-31T22:59:59Z")
    assert tag_of(decisions, "o2")["purposes"] == [CONTRACT_OPEN]
    assert erasures(decisions) == []
    fired = erasures(run(events, until="2028-12-31T23:00:00Z"))
    assert [(c["target"], c["reason"], c["issued_at"]) for c in fired] == [
        ("registers", "retention_expired", "2028-12-31T23:00:00Z"),
        ("subcontractors", "retention_expired", "2028-12-31T23:00:00Z"),
    ]


def test_invoice_data_kept_per_bookkeeping_act_and_restricted_on_erasure_request() -> None:
    """Seed 004, "Hur länge behåller vi data" and "Dina rättigheter": "Du har alltid rätt
    att ... få den rättad eller raderad. Fakturauppgifter och fakturaunderlag sparas så
    länge det är nödvändigt enligt lag, t.ex. bokföringslagen." An invoice of 2024 is kept
    through 2031 (the seventh year after the calendar year). An erasure request erases the
    customer data at once and restricts the invoice at the registers; the invoice is erased
    when the Bookkeeping Act period ends, 2032-01-01 00:00 Stockholm, not a second before.
    The invoice holds who was invoiced (the contact data the customer gave) as well as the
    order: the bookkeeping rule keeps contact and order.
    """
    invoiced, asked = "2024-03-15T10:00:00Z", "2024-09-01T10:00:00Z"
    expiry = "2031-12-31T23:00:00Z"
    events = [
        customer(C, S, "2024-02-10T09:00:00Z", role="customer", fields=CONTACT),
        order(C, S, invoiced, "invoiced", event_id="i1"),
        request(C, S, asked, "erasure", request_id="R-er"),
    ]
    invoice = tag_of(run(events), "i1")
    assert invoice["purposes"] == [
        CONTRACT_OPEN,
        tag_purpose("bookkeeping", "legal_obligation", expiry, "unnamed004.bookkeeping.invoices"),
    ]

    before = run(events, until=second_before(expiry))
    on_request = erasures(before)
    assert {c["reason"] for c in on_request} == {"erasure_request"}
    assert {c["rule"] for c in on_request} == {"unnamed004.rights.erasure"}
    assert {(c["issued_at"], c["deadline"]) for c in on_request} == {
        (asked, "2024-10-01T10:00:00Z")
    }
    erased = [(c["target"], c["purposes"]) for c in on_request if c["action"] == "erase"]
    assert erased == [("registers", ["contract"]), ("subcontractors", ["contract"])]
    restricted = [c for c in on_request if c["action"] == "restrict"]
    assert [(c["target"], c["purposes"]) for c in restricted] == [("registers", ["bookkeeping"])]
    assert restricted[0]["categories"] == ["contact", "order"]
    assert len(on_request) == 3

    fired = erasure_commands(run(events, until=expiry), rule="unnamed004.bookkeeping.invoices")
    assert fired == [
        _cmd(
            "registers",
            "erase",
            ["bookkeeping"],
            ["contact", "order"],
            "retention_expired",
            "unnamed004.bookkeeping.invoices",
            expiry,
            "2032-01-01T23:00:00Z",
            recorded_before=invoiced,
        )
    ]


def test_erasure_request_keeps_the_name_and_address_the_invoice_needs() -> None:
    """Seed 004, "Dina rättigheter": "Fakturauppgifter och fakturaunderlag sparas så länge
    det är nödvändigt enligt lag, t.ex. bokföringslagen." The invoice data kept under the law
    includes who was invoiced (the pack's bookkeeping rule holds categories contact and
    order): on an erasure request the registers restrict, not erase, the contact data of an
    invoiced customer, and still hold it (restricted) for bookkeeping afterwards.
    """
    events = [
        customer(C, S, "2024-02-10T09:00:00Z", role="customer", fields=CONTACT),
        order(C, S, "2024-03-15T10:00:00Z", "invoiced"),
        request(C, S, "2024-09-01T10:00:00Z", "erasure", request_id="R-er"),
    ]
    commands = erasures(run(events))
    restricted = [c for c in commands if c["target"] == "registers" and c["action"] == "restrict"]
    assert len(restricted) == 1
    assert restricted[0]["categories"] == ["contact", "order"]
    assert restricted[0]["purposes"] == ["bookkeeping"]
    # The contact data stays in the extract as held (restricted) for bookkeeping.
    decisions = run([*events, request(C, S, "2024-09-02T10:00:00Z", "access")])
    (extract,) = extracts(decisions)
    assert [(p["purpose"], p["categories"], p["restricted"]) for p in extract["purposes"]] == [
        ("bookkeeping", ["contact", "order"], True)
    ]


def test_register_extract_without_a_controller_name_reads_sensibly() -> None:
    """Seed 004, "Dina rättigheter": "Du har alltid rätt att begära ut den information vi
    har lagrad om dig". The seed never names the controller (the pack's name is null): the
    extract says so plainly (no "None" or "null"), names what is held, why and how long, and
    is answered within one month (GDPR art. 12(3)).
    """
    decisions = run(
        [
            customer(C, S, "2024-01-10T09:00:00Z", role="customer", fields=CONTACT),
            order(C, S, "2024-01-15T10:00:00Z", "invoiced"),
            request(C, S, "2024-02-01T10:00:00Z", "access", request_id="R-acc"),
        ]
    )
    (extract,) = extracts(decisions)
    assert (extract["controller_name"], extract["org_nr"]) == (None, None)
    assert (extract["issued_at"], extract["deadline"]) == (
        "2024-02-01T10:00:00Z",
        "2024-03-01T10:00:00Z",
    )
    text = extract["text"]
    lines = text.splitlines()
    assert lines[0] == "Register extract from the controller 'unnamed004'"
    assert lines[1] == "Request R-acc, answered 2024-02-01T10:00:00Z."
    for word in ("None", "null", "org.nr"):
        assert word not in text
    assert (
        "  - contract (contract): kept while the relationship lasts, then 36 months; "
        "currently until no fixed date yet"
    ) in lines
    assert (
        "  - bookkeeping (legal_obligation): kept 7 years after the end of the calendar year "
        "of the record; currently until 2031-12-31T23:00:00Z"
    ) in lines
    assert [(p["purpose"], p["legal_basis"]) for p in extract["purposes"]] == [
        ("contract", "contract"),
        ("bookkeeping", "legal_obligation"),
    ]
    assert [r["target"] for r in extract["recipients"]] == ["registers", "subcontractors"]


def test_withdrawn_marketing_consent_stops_marketing_and_profiling() -> None:
    """Seed 004, "Dina rättigheter": "Viss behandling av data baseras på att vi har ditt
    godkännande, så kallade samtycke. Du bestämmer alltid vilken behandling som du godkänner
    och om du vill återkalla ditt samtycke." Marketing and profiling ("Hur använder vi
    data": "så kallad profilering") rest on consent: tagged with no end date while it
    stands, erased at once at the registers when it is withdrawn (reason consent_withdrawn,
    the pack's opt-out deadline of one day to act: 3 June -> 4 June), suppressed on every
    later record; the customer relationship goes on.
    """
    withdrawn = "2024-06-03T08:00:00Z"
    decisions = run(
        [
            consent(C, S, "2024-02-10T08:00:00Z", "direct_marketing", "grant", channel="web"),
            customer(
                C,
                S,
                "2024-02-10T09:00:00Z",
                role="customer",
                fields={**CONTACT, "segment": "storstad"},
                event_id="c1",
            ),
            consent(C, S, withdrawn, "direct_marketing", "withdraw", channel="email"),
            customer(
                C,
                S,
                "2024-06-10T08:00:00Z",
                "updated",
                fields={"email": "eva@ny.se"},
                event_id="u1",
            ),
            customer(
                C, S, "2025-03-01T09:00:00Z", "updated", fields={"phone": "08-3"}, event_id="u2"
            ),
        ]
    )
    assert tag_of(decisions, "c1")["purposes"] == [
        CONTRACT_OPEN,
        tag_purpose("direct_marketing", "consent", None, "unnamed004.direct_marketing.consent"),
    ]
    assert erasure_commands(decisions) == [
        _cmd(
            "registers",
            "erase",
            ["direct_marketing"],
            ["contact", "profile"],
            "consent_withdrawn",
            "unnamed004.consent.withdrawal",
            withdrawn,
            "2024-06-04T08:00:00Z",
        )
    ]
    for event_id in ("u1", "u2"):
        tag = tag_of(decisions, event_id)
        assert tag["purposes"] == [CONTRACT_OPEN], event_id
        assert tag["suppressed"] == [
            {"purpose": "direct_marketing", "reason": "consent_withdrawn"}
        ], event_id


def test_pack_states_the_seed_periods_and_flags_the_rest() -> None:
    """Seed 004, "Hur länge behåller vi data": the only periods in the text are "så länge du
    är kund eller leverantör ... därefter som längst 36 månader" and "så länge det är
    nödvändigt enligt lag, t.ex. bokföringslagen"; usage data and consent-based processing
    have none, so those rules must carry an assumption. The seed names no controller.
    """
    pack = load_pack(POLICIES / "unnamed004.yaml")
    assert (pack.seed, pack.name, pack.org_nr) == (SEED, None, None)
    rules = {r.id: r for r in pack.rules}
    contract = rules[CONTRACT_RULE]
    assert contract.retention.from_ == "relationship_end"
    assert contract.retention.duration.months == 36
    assert contract.legal_basis == "contract"
    bookkeeping = rules["unnamed004.bookkeeping.invoices"]
    assert (bookkeeping.legal_basis, bookkeeping.retention.from_) == (
        "legal_obligation",
        "calendar_year_end",
    )
    assert bookkeeping.erasure_action == "restrict"
    for rule_id in ("unnamed004.analytics.digital-services", "unnamed004.direct_marketing.consent"):
        assumption = rules[rule_id].assumption
        assert assumption and assumption.strip(), rule_id


def _history() -> list[dict[str, Any]]:
    return [
        consent(C, S, "2024-01-10T08:00:00Z", "direct_marketing", "grant"),
        customer(C, S, "2024-01-10T09:00:00Z", role="customer", fields=CONTACT),
        order(C, S, "2024-01-15T10:00:00Z", "invoiced"),
    ]


@pytest.mark.parametrize("right", RIGHTS)
def test_every_right_is_answered_within_one_month(right: str) -> None:
    """Seed 004, "Dina rättigheter": "Du har alltid rätt att begära ut den information vi
    har lagrad om dig, få den rättad eller raderad", and consent can be withdrawn. Each
    request is answered at once, with a deadline one month after it was issued (GDPR art.
    12(3)); 31 January 2024 + 1 month = 29 February 2024. An objection to direct marketing
    ("Du bestämmer alltid vilken behandling som du godkänner") is absolute (art. 21(3)): its
    commands carry the pack's opt-out deadline, one day, so 1 February 2024, well within
    the month.
    """
    answers = answers_within_a_month(C, S, _history(), right)
    if right in ("access", "portability"):
        (extract,) = answers
        held = [p["purpose"] for p in extract["purposes"]]
        if right == "access":
            assert held == ["contract", "bookkeeping", "direct_marketing"]
        else:
            assert held == ["contract", "direct_marketing"]
    elif right == "rectification":
        (rectify,) = answers
        assert rectify["decision"] == "rectify"
        assert rectify["targets"] == ["registers", "subcontractors"]
    elif right == "erasure":
        assert {c["reason"] for c in answers} == {"erasure_request"}
        assert [(c["target"], c["action"], c["purposes"]) for c in answers] == [
            ("registers", "erase", ["contract", "direct_marketing"]),
            ("subcontractors", "erase", ["contract"]),
            ("registers", "restrict", ["bookkeeping"]),
        ]
    elif right == "objection":
        assert [(c["target"], c["action"], c["purposes"], c["reason"]) for c in answers] == [
            ("registers", "erase", ["direct_marketing"], "objection")
        ]
    else:
        assert {(c["action"], c["reason"]) for c in answers} == {
            ("restrict", "restriction_request")
        }
        assert {c["target"] for c in answers} == {"registers", "subcontractors"}


def test_same_input_gives_identical_output() -> None:
    """Seed 004, "Hur skyddar vi data": "Behandling av data loggas och kontrolleras
    systematiskt." The same events give byte-identical decisions, command ids included,
    and each command id is distinct.
    """
    events = [
        customer(C, "leverantor-1", "2023-11-01T09:00:00Z", role="supplier", fields=CONTACT),
        *_history(),
        consent(C, S, "2024-02-01T08:00:00Z", "direct_marketing", "withdraw"),
        customer(
            C,
            "leverantor-1",
            "2024-02-29T10:00:00Z",
            "relationship_ended",
            role="supplier",
            fields={},
        ),
        customer(C, S, "2024-05-20T08:00:00Z", "relationship_ended", role="customer", fields={}),
        request(C, S, "2024-06-01T08:00:00Z", "erasure", request_id="R-2"),
    ]
    assert_same_output(events, "2032-06-01T00:00:00Z", at_least=6)
