"""Seed conformance: Rejoin Telematics AB, seed 002_f22e2230b23ae8e3.txt (Integritetspolicy).

The seed has no numbered sections; tests cite its headings. Its central rule is a sliding
retention: "36 månader efter att du senast varit aktiv hos Rejoin, till exempel genom att
handla hos oss eller kontakta vår kundtjänst", for the contract data (incl. personal offers)
and for direct marketing. Instants are computed in Europe/Stockholm and asserted in UTC.
"""

from __future__ import annotations

import json

from .scenarios import (
    by_target,
    click,
    consent,
    customer,
    erasures,
    order,
    purpose_map,
    rejects,
    request,
    run,
    run_lines,
    tag_of,
)

C = "rejoin"
SEED = "002_f22e2230b23ae8e3.txt"
LEGAL = "Rättslig grund för hanteringen av dina personuppgifter"  # seed heading

R_CONTRACT = "rejoin.contract.customers"
R_PERSONAL = "rejoin.personalization.behaviour"
R_MARKETING = "rejoin.direct_marketing.customers"
R_BOOKKEEPING = "rejoin.bookkeeping.invoices"

FIELDS = {
    "name": "Anna Andersson",
    "email": "anna@example.se",
    "phone": "+46701234567",
    "address": "Storgatan 1, 702 10 Örebro",
    "customer_number": "K-1001",
}
CONTACT = {"email": "anna@example.se"}  # a customer-service contact by e-mail

CREATED = "2024-02-10T10:00:00+01:00"
PURCHASE = "2024-05-01T10:00:00+02:00"  # 2024-05-01T08:00:00Z
PURCHASE_EXPIRY = "2027-05-01T08:00:00Z"


def _by_rule_and_target(commands: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for c in commands:
        key = (c["rule"], c["target"])
        assert key not in out, f"two commands for {key}"
        out[key] = c
    return out


def _customer_and_purchase(subject: str) -> list[dict]:
    return [
        customer(C, subject, CREATED, fields=FIELDS),
        order(C, subject, PURCHASE, order_id="W-1"),
    ]


# -- tagging ------------------------------------------------------------------------------


def test_new_customer_is_contract_and_direct_marketing_for_36_months():
    """Rejoin, "Rättslig grund ...": contract data "med stöd i fullgörande av avtal om köp";
    marketing "med stöd av intresseavvägning"; both "Lagringstid: 36 månader efter att du
    senast varit aktiv hos Rejoin". A customer created 2024-02-10T10:00+01:00 is contract on
    contract and direct_marketing on legitimate interest, both until 2027-02-10T09:00:00Z."""
    created = customer(C, "c-1", CREATED, fields=FIELDS)
    decisions = run([created])
    tag = tag_of(decisions, created["event_id"])
    assert tag["purposes"] == [
        {
            "purpose": "contract",
            "legal_basis": "contract",
            "expires_at": "2027-02-10T09:00:00Z",
            "rule": R_CONTRACT,
        },
        {
            "purpose": "direct_marketing",
            "legal_basis": "legitimate_interest",
            "expires_at": "2027-02-10T09:00:00Z",
            "rule": R_MARKETING,
        },
    ]
    assert tag["suppressed"] == []
    assert erasures(decisions) == []


def test_purchase_moves_every_purpose_to_36_months_after_it():
    """Rejoin, "Rättslig grund ...": "36 månader efter att du senast varit aktiv hos Rejoin,
    till exempel genom att handla hos oss". A purchase on 2024-05-01T10:00+02:00 is activity:
    contract, personalization ("dina inköp ... personliga erbjudanden", on contract, no
    profiling on legitimate interest) and direct marketing all expire 2027-05-01T08:00:00Z."""
    events = _customer_and_purchase("c-2")
    tag = tag_of(run(events), events[1]["event_id"])
    assert purpose_map(tag) == {
        "contract": ("contract", PURCHASE_EXPIRY, R_CONTRACT),
        "personalization": ("contract", PURCHASE_EXPIRY, R_PERSONAL),
        "direct_marketing": ("legitimate_interest", PURCHASE_EXPIRY, R_MARKETING),
    }


def test_website_visit_does_not_move_expiry_and_expiry_erases_at_that_instant():
    """Rejoin, "Rättslig grund ...": "36 månader efter att du senast varit aktiv hos Rejoin,
    till exempel genom att handla hos oss eller kontakta vår kundtjänst"; a visit ("ditt
    beteende på vår hemsida") is personalization data, not activity. After a purchase on
    2024-05-01 and a visit on 2025-01-01 everything expires 2027-05-01T08:00:00Z: nothing is
    erased at 07:59:59Z; at 08:00:00Z each target gets an erase command per purpose, reason
    retention_expired."""
    visit = click(C, "c-3", "2025-01-01T10:00:00+01:00")
    events = [*_customer_and_purchase("c-3"), visit]
    decisions = run(events, until="2027-05-01T07:59:59Z")
    assert tag_of(decisions, visit["event_id"])["purposes"] == [
        {
            "purpose": "personalization",
            "legal_basis": "contract",
            "expires_at": PURCHASE_EXPIRY,
            "rule": R_PERSONAL,
        }
    ]
    assert erasures(decisions) == []

    commands = _by_rule_and_target(erasures(run(events, until=PURCHASE_EXPIRY)))
    expected = {
        (R_CONTRACT, "customer-systems"): ["contact", "account", "order"],
        (R_CONTRACT, "subcontractors"): ["contact", "order"],
        (R_CONTRACT, "credit-agency"): ["contact"],
        (R_PERSONAL, "customer-systems"): ["order", "technical"],
        (R_MARKETING, "customer-systems"): ["contact"],
    }
    assert {k: c["categories"] for k, c in commands.items()} == expected
    purpose_of = {
        R_CONTRACT: "contract",
        R_PERSONAL: "personalization",
        R_MARKETING: "direct_marketing",
    }
    for (rule, _), cmd in commands.items():
        assert cmd["action"] == "erase"
        assert cmd["purposes"] == [purpose_of[rule]]
        assert cmd["reason"] == "retention_expired"
        assert cmd["issued_at"] == PURCHASE_EXPIRY
        assert cmd["deadline"] == "2027-05-02T08:00:00Z"
    assert "accounting-archive" not in {t for _, t in commands}


def test_customer_service_contact_moves_contract_and_marketing_expiry():
    """Rejoin, "Rättslig grund ...": "36 månader efter att du senast varit aktiv hos Rejoin,
    till exempel genom att ... kontakta vår kundtjänst" (contract data and marketing alike).
    A contact on 2025-06-01T10:00+02:00 after a purchase of 2024-05-01 moves contract and
    direct marketing to 2028-06-01T08:00:00Z: neither is erased at the purchase's expiry
    (2027-05-01T08:00:00Z) nor one second before 2028-06-01T08:00:00Z; both are at it."""
    contacted = customer(C, "c-4", "2025-06-01T10:00:00+02:00", "contacted", fields=CONTACT)
    events = [*_customer_and_purchase("c-4"), contacted]
    decisions = run(events, until="2028-06-01T07:59:59Z")
    tag = purpose_map(tag_of(decisions, contacted["event_id"]))
    assert tag["contract"] == ("contract", "2028-06-01T08:00:00Z", R_CONTRACT)
    assert tag["direct_marketing"] == (
        "legitimate_interest",
        "2028-06-01T08:00:00Z",
        R_MARKETING,
    )
    assert erasures(decisions, rule=R_CONTRACT) == []
    assert erasures(decisions, rule=R_MARKETING) == []

    at = run(events, until="2028-06-01T08:00:00Z")
    contract = erasures(at, rule=R_CONTRACT)
    assert {c["target"] for c in contract} == {
        "customer-systems",
        "subcontractors",
        "credit-agency",
    }
    marketing = erasures(at, rule=R_MARKETING)
    assert {c["target"] for c in marketing} == {"customer-systems"}
    for cmd in contract + marketing:
        assert (cmd["action"], cmd["reason"], cmd["issued_at"]) == (
            "erase",
            "retention_expired",
            "2028-06-01T08:00:00Z",
        )


def test_customer_service_contact_moves_personalization_expiry():
    """Rejoin, "Rättslig grund ...": the data used for personal offers ("dina inköp, ditt
    beteende på vår hemsida, din interaktion med Rejoin") falls under the same "Lagringstid:
    36 månader efter att du senast varit aktiv hos Rejoin, till exempel genom att ...
    kontakta vår kundtjänst". After a contact on 2025-06-01T10:00+02:00 the person's
    personalization data is not erased at 2027-05-01 (36 months after the earlier purchase);
    a visit after the contact expires with the contact, 2028-06-01T08:00:00Z."""
    contacted = customer(C, "c-5", "2025-06-01T10:00:00+02:00", "contacted", fields=CONTACT)
    visit = click(C, "c-5", "2026-01-01T10:00:00+01:00")
    events = [*_customer_and_purchase("c-5"), contacted, visit]
    decisions = run(events, until="2028-06-01T07:59:59Z")
    assert purpose_map(tag_of(decisions, visit["event_id"]))["personalization"] == (
        "contract",
        "2028-06-01T08:00:00Z",
        R_PERSONAL,
    )
    assert erasures(decisions) == []
    at = erasures(run(events, until="2028-06-01T08:00:00Z"), rule=R_PERSONAL)
    assert {(c["target"], c["issued_at"]) for c in at} == {
        ("customer-systems", "2028-06-01T08:00:00Z")
    }


def test_customer_service_contact_without_new_details_moves_marketing_expiry():
    """Rejoin, "Rättslig grund ..." (marketing): "Lagringstid: 36 månader efter att du senast
    varit aktiv hos Rejoin, till exempel genom att handla hos oss eller kontakta vår
    kundtjänst". A customer-service contact is activity whether or not the record of it
    carries new contact details: after a contact on 2025-06-01T10:00+02:00 (no fields) the
    marketing data is not erased at 2027-05-01T08:00:00Z but at 2028-06-01T08:00:00Z."""
    contacted = customer(C, "c-10", "2025-06-01T10:00:00+02:00", "contacted", fields={})
    events = [*_customer_and_purchase("c-10"), contacted]
    assert erasures(run(events, until="2028-06-01T07:59:59Z"), rule=R_MARKETING) == []
    at = erasures(run(events, until="2028-06-01T08:00:00Z"), rule=R_MARKETING)
    assert {(c["target"], c["reason"], c["issued_at"]) for c in at} == {
        ("customer-systems", "retention_expired", "2028-06-01T08:00:00Z")
    }


# -- objection to direct marketing ---------------------------------------------------------


def test_unsubscribe_link_removes_marketing_data_only_where_held_for_marketing():
    """Rejoin, "Hur du motsätter dig elektronisk direktmarknadsföring?": "så kommer dina
    uppgifter för direktmarknadsföring tas bort"; "Det går också att följa den länk som finns
    längst ned i reklamutskick från Rejoin så tas uppgifterna bort för direktmarknadsföring."
    The unsubscribe on 2025-01-15T12:00+01:00 erases the marketing data at the one target that
    holds it for direct marketing (customer-systems), nothing else, and at once (the objection
    to direct marketing is absolute, GDPR art. 21(3): the pack's opt-out deadline, one day);
    later records are not used for direct marketing (suppressed: objection) while contract
    and personalization go on."""
    optout = consent(C, "c-6", "2025-01-15T12:00:00+01:00", "direct_marketing", "object")
    later = order(C, "c-6", "2025-03-01T12:00:00+01:00", order_id="W-2")
    events = [*_customer_and_purchase("c-6"), optout, later]
    decisions = run(events)

    commands = erasures(decisions)
    assert len(commands) == 1
    (cmd,) = commands
    assert cmd == {
        "decision": "erasure",
        "command_id": cmd["command_id"],
        "controller": C,
        "subject_id": "c-6",
        "target": "customer-systems",
        "action": "erase",
        "purposes": ["direct_marketing"],
        "categories": ["contact"],
        "reason": "objection",
        "rule": "rejoin.rights.objection",
        "issued_at": "2025-01-15T11:00:00Z",
        "deadline": "2025-01-16T11:00:00Z",
        "due_at": "2025-01-15T11:00:00Z",
    }
    tag = tag_of(decisions, later["event_id"])
    assert purpose_map(tag) == {
        "contract": ("contract", "2028-03-01T11:00:00Z", R_CONTRACT),
        "personalization": ("contract", "2028-03-01T11:00:00Z", R_PERSONAL),
    }
    assert tag["suppressed"] == [{"purpose": "direct_marketing", "reason": "objection"}]

    # At the 36-month expiry only contract and personalization remain to be erased.
    expired = erasures(run(events, until="2028-03-01T11:00:00Z"), reason="retention_expired")
    assert {c["rule"] for c in expired} == {R_CONTRACT, R_PERSONAL}


def test_objection_request_by_letter_removes_marketing_data():
    """Rejoin, "Dina rättigheter": "Invända mot ... behandling för direktmarknadsföring";
    "Anmälan om borttagande av direktmarknadsföring görs till webbshop@smart-telematik.se".
    A verified objection request (no purposes given: direct marketing) removes the marketing
    data from customer-systems only, at once: an objection to direct marketing is absolute
    (GDPR art. 21(3)), so the pack's opt-out deadline of one day applies, not the month of
    art. 12(3)."""
    objection = request(C, "c-7", "2025-01-31T12:00:00+01:00", "objection", request_id="OB-1")
    decisions = run([*_customer_and_purchase("c-7"), objection])
    commands = by_target(erasures(decisions))
    assert set(commands) == {"customer-systems"}
    cmd = commands["customer-systems"]
    assert (cmd["action"], cmd["purposes"], cmd["reason"]) == (
        "erase",
        ["direct_marketing"],
        "objection",
    )
    assert (cmd["issued_at"], cmd["deadline"]) == ("2025-01-31T11:00:00Z", "2025-02-01T11:00:00Z")


# -- erasure requests and bookkeeping ------------------------------------------------------


def test_erasure_request_erases_contract_personalization_marketing_at_once():
    """Rejoin, "Dina rättigheter": "Begära att raderas – du har rätt att under vissa
    omständigheter få dina uppgifter borttagna"; answered within one month (GDPR art. 12(3)).
    A request on 2025-01-31T12:00+01:00 erases contract, personalization and marketing data
    at once at every target holding them, deadline 2025-02-28T11:00:00Z (calendar month);
    no retention expiry for them follows later."""
    events = [
        *_customer_and_purchase("c-8"),
        click(C, "c-8", "2024-06-01T10:00:00+02:00"),
        request(C, "c-8", "2025-01-31T12:00:00+01:00", "erasure", request_id="ER-1"),
    ]
    decisions = run(events, until="2030-01-01T00:00:00Z")
    assert rejects(decisions) == []
    commands = by_target(erasures(decisions, reason="erasure_request"))
    assert {t: (c["action"], c["purposes"], c["categories"]) for t, c in commands.items()} == {
        "customer-systems": (
            "erase",
            ["contract", "personalization", "direct_marketing"],
            ["contact", "account", "order", "technical"],
        ),
        "subcontractors": ("erase", ["contract"], ["contact", "order"]),
        "credit-agency": ("erase", ["contract"], ["contact"]),
    }
    for cmd in commands.values():
        assert cmd["rule"] == "rejoin.rights.erasure"
        assert cmd["issued_at"] == "2025-01-31T11:00:00Z"
        assert cmd["deadline"] == "2025-02-28T11:00:00Z"
    assert erasures(decisions, reason="retention_expired") == []


def test_bookkeeping_archived_without_search_on_erasure_and_erased_after_7th_year():
    """Rejoin, "Rättslig grund ..." (legal obligation): "Lagringstid: Så länge vi är skyldiga
    att lagra uppgifterna enligt tillämplig lag"; "Hur skyddar vi dina personuppgifter?":
    "arkiverar data utan sökbarhet när dina personuppgifter måste lagras en längre period (t ex
    enligt bokföringslagen)". Invoice 2024-05-02T10:00+02:00 -> kept through 2031 (until
    2031-12-31T23:00:00Z). An erasure request restricts (does not erase) it in the accounting
    archive; it is erased at 2031-12-31T23:00:00Z, not a second before. The invoice holds who
    was invoiced (the contact data the customer gave at creation) as well as the order."""
    invoice = order(C, "c-9", "2024-05-02T10:00:00+02:00", "invoiced", order_id="W-1")
    erase = request(C, "c-9", "2025-01-31T12:00:00+01:00", "erasure", request_id="ER-2")
    events = [*_customer_and_purchase("c-9"), invoice, erase]

    decisions = run(events, until="2031-12-31T22:59:59Z")
    assert purpose_map(tag_of(decisions, invoice["event_id"]))["bookkeeping"] == (
        "legal_obligation",
        "2031-12-31T23:00:00Z",
        R_BOOKKEEPING,
    )
    archive = erasures(decisions, target="accounting-archive")
    assert len(archive) == 1
    (cmd,) = archive
    assert (cmd["action"], cmd["purposes"], cmd["categories"], cmd["reason"]) == (
        "restrict",
        ["bookkeeping"],
        ["contact", "order"],
        "erasure_request",
    )
    assert (cmd["issued_at"], cmd["deadline"]) == ("2025-01-31T11:00:00Z", "2025-02-28T11:00:00Z")
    assert all("bookkeeping" not in c["purposes"] for c in erasures(decisions, action="erase"))

    final = erasures(run(events, until="2031-12-31T23:00:00Z"), target="accounting-archive")
    erased = [c for c in final if c["action"] == "erase"]
    assert len(erased) == 1
    (cmd,) = erased
    assert (cmd["purposes"], cmd["reason"], cmd["rule"]) == (
        ["bookkeeping"],
        "retention_expired",
        R_BOOKKEEPING,
    )
    assert cmd["issued_at"] == "2031-12-31T23:00:00Z"
    assert cmd["recorded_before"] == "2024-05-02T08:00:00Z"


# -- determinism ---------------------------------------------------------------------------


def test_same_input_gives_identical_decisions_and_command_ids():
    """Design (`evaluate` contract) applied to Rejoin: the same input gives byte-identical
    output and the same command_ids, unique per command; a redelivered event decides nothing
    new. Covers the sliding 36 months, the objection, erasure and the Bookkeeping Act."""
    events = [
        *_customer_and_purchase("d-1"),
        order(C, "d-1", "2024-05-02T10:00:00+02:00", "invoiced", order_id="W-1"),
        click(C, "d-1", "2024-06-01T10:00:00+02:00"),
        customer(C, "d-2", "2024-03-01T10:00:00+01:00", fields=FIELDS),
        consent(C, "d-2", "2024-04-01T10:00:00+02:00", "direct_marketing", "object"),
        customer(C, "d-1", "2025-06-01T10:00:00+02:00", "contacted", fields=CONTACT),
        request(C, "d-1", "2026-01-31T12:00:00+01:00", "erasure", request_id="ER-3"),
    ]
    first = run_lines(events, until="2032-06-01T00:00:00Z")
    assert first == run_lines(events, until="2032-06-01T00:00:00Z")
    decided = [json.loads(line) for line in first]
    ids = [d["command_id"] for d in decided if d["decision"] == "erasure"]
    assert len(ids) == len(set(ids)) > 0
    assert {d["reason"] for d in decided if d["decision"] == "erasure"} == {
        "objection",
        "erasure_request",
        "retention_expired",
    }
    replayed = run([*events, events[1]], until="2032-06-01T00:00:00Z")
    assert replayed == decided
