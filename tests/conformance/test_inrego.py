"""Seed conformance: Inrego AB, seed 001_c8a0bee4ecd78900.txt (Integritetspolicy 2023-10).

Each test takes one rule of the seed text, runs canonical events through the offline engine
(the same processors as `privacy-pipeline evaluate`) and asserts the exact purposes, legal
bases, instants, targets and reasons the text implies. Instants are computed on the wall
clock of Europe/Stockholm (the pack's zone) and asserted in UTC.
"""

from __future__ import annotations

import json

from .scenarios import (
    by_target,
    click,
    consent,
    customer,
    erasures,
    extracts,
    order,
    purpose_map,
    rejects,
    request,
    run,
    run_lines,
    tag_of,
)

C = "inrego"
SEED = "001_c8a0bee4ecd78900.txt"

R_ANALYTICS = "inrego.analytics.web-visits"
R_ACCOUNT = "inrego.account.user-accounts"
R_ORDERS = "inrego.contract.orders"
R_COMPLAINTS = "inrego.contract.complaints"
R_BOOKKEEPING = "inrego.bookkeeping.invoices"
R_CONTACTS = "inrego.business_relationship.contact-persons"
R_MARKETING = "inrego.direct_marketing.customers-and-contacts"

# Who holds what (pack recipients, from seed §2.2/2.3 "verksamhetssystem, backup-system",
# §2.4 analyses, §4 a) IT and marketing service providers, §4 b) logistics and auditors).
ANALYTICS_TARGETS = {"web-analytics", "it-service-providers"}
ACCOUNT_TARGETS = {"business-systems", "it-service-providers"}
MARKETING_TARGETS = {"business-systems", "it-service-providers", "marketing-services"}

CUSTOMER_FIELDS = {"name": "Anna Andersson", "email": "anna@example.se", "customer_type": "privat"}
CONTACT_FIELDS = {
    "name": "Bo Berg",
    "email": "bo.berg@kund.se",
    "phone": "+46701234567",
    "title": "IT-chef",
    "employer": "Kund AB",
}


def _no_erasure(decisions: list[dict]) -> None:
    found = erasures(decisions)
    assert found == [], f"expected no erasure, got {found}"


# -- §2.4 / §2.1: technical data from website visits ---------------------------------------


def test_visit_is_analytics_on_legitimate_interest_for_24_months():
    """Inrego §2.4 (and §2.1): "Den tekniska informationen om hur besökare interagerar på vår
    webbplats lagras som längst i tjugofyra (24) månader från besöket"; legal basis
    "Intresseavvägning". A visit at 2024-01-10T10:00+01:00 is analytics on legitimate interest
    until 2026-01-10T09:00:00Z, and nothing else."""
    visit = click(C, "visitor-1", "2024-01-10T10:00:00+01:00")
    decisions = run([visit])
    tag = tag_of(decisions, visit["event_id"])
    assert tag["controller"] == C and tag["subject_id"] == "visitor-1"
    assert tag["purposes"] == [
        {
            "purpose": "analytics",
            "legal_basis": "legitimate_interest",
            "expires_at": "2026-01-10T09:00:00Z",
            "rule": R_ANALYTICS,
        }
    ]
    assert tag["suppressed"] == []
    _no_erasure(decisions)


def test_visit_data_erased_at_24_months_not_before():
    """Inrego §2.4: technical data kept "som längst i tjugofyra (24) månader från besöket";
    §2.1: "lagras i tjugofyra (24) månader efter ditt besök". Not erased one second before
    2026-01-10T09:00:00Z; erased at that instant from every target holding technical data for
    analytics, covering the records up to the visit."""
    visit = click(C, "visitor-1", "2024-01-10T10:00:00+01:00")

    _no_erasure(run([visit], until="2026-01-10T08:59:59Z"))

    decisions = run([visit], until="2026-01-10T09:00:00Z")
    commands = by_target(erasures(decisions))
    assert set(commands) == ANALYTICS_TARGETS
    for target, cmd in commands.items():
        assert cmd == {
            "decision": "erasure",
            "command_id": cmd["command_id"],
            "controller": C,
            "subject_id": "visitor-1",
            "target": target,
            "action": "erase",
            "purposes": ["analytics"],
            "categories": ["technical"],
            "reason": "retention_expired",
            "rule": R_ANALYTICS,
            "issued_at": "2026-01-10T09:00:00Z",
            "deadline": "2026-01-11T09:00:00Z",
            "due_at": "2026-01-10T09:00:00Z",  # the expiry: 24 months after the visit
            "recorded_before": "2024-01-10T09:00:00Z",
        }


def test_each_visit_has_its_own_24_months_across_dst():
    """Inrego §2.4: "24 månader från besöket", counted per visit. A summer visit
    (2024-07-01T10:00+02:00) expires 2026-07-01T08:00:00Z; it is not erased with the winter
    visit of 2024-01-10, whose erasure covers only records up to that visit."""
    winter = click(C, "visitor-2", "2024-01-10T10:00:00+01:00")
    summer = click(C, "visitor-2", "2024-07-01T10:00:00+02:00")
    decisions = run([winter, summer], until="2026-01-10T09:00:00Z")
    assert purpose_map(tag_of(decisions, summer["event_id"]))["analytics"] == (
        "legitimate_interest",
        "2026-07-01T08:00:00Z",
        R_ANALYTICS,
    )
    first = erasures(decisions)
    assert {c["target"] for c in first} == ANALYTICS_TARGETS
    assert {c["recorded_before"] for c in first} == {"2024-01-10T09:00:00Z"}
    assert {c["issued_at"] for c in first} == {"2026-01-10T09:00:00Z"}

    # One second before the summer visit's expiry, still only the winter visit is erased.
    before = erasures(run([winter, summer], until="2026-07-01T07:59:59Z"))
    assert {c["recorded_before"] for c in before} == {"2024-01-10T09:00:00Z"}

    later = erasures(run([winter, summer], until="2026-07-01T08:00:00Z"))
    second = [c for c in later if c["recorded_before"] == "2024-07-01T08:00:00Z"]
    assert {c["target"] for c in second} == ANALYTICS_TARGETS
    assert {(c["reason"], c["issued_at"]) for c in second} == {
        ("retention_expired", "2026-07-01T08:00:00Z")
    }
    assert len({c["command_id"] for c in later}) == 4


def test_two_visits_same_day_first_erased_at_its_own_expiry():
    """Inrego §2.4: technical data "lagras som längst i tjugofyra (24) månader från besöket"
    (at most 24 months). Of two visits on 2024-01-10 (10:00 and 15:00 local), the first must be
    erased at 2026-01-10T09:00:00Z, not held until the second one's expiry five hours later."""
    early = click(C, "visitor-3", "2024-01-10T10:00:00+01:00")
    late = click(C, "visitor-3", "2024-01-10T15:00:00+01:00")
    decisions = run([early, late], until="2026-01-10T09:00:00Z")
    commands = erasures(decisions, reason="retention_expired", rule=R_ANALYTICS)
    assert {c["target"] for c in commands} == ANALYTICS_TARGETS
    assert {c["issued_at"] for c in commands} == {"2026-01-10T09:00:00Z"}
    assert {c["recorded_before"] for c in commands} == {"2024-01-10T09:00:00Z"}


# -- §2.2: user accounts -------------------------------------------------------------------


def test_account_created_is_contract_while_active_and_legitimate_interest_when_inactive():
    """Inrego §2.2: "För aktiva kunder: Behandlingen är nödvändig för fullgörande av avtal ...
    För icke aktiva kunder: Intresseavvägning." Retention "Fem (5) år från skapandet av
    användarkontot". An account created 2024-01-10T10:00+01:00 is account/contract until
    2029-01-10T09:00:00Z; an update four years later without any purchase (inactive) rests on
    legitimate interest, with the expiry unchanged (an update is not a purchase)."""
    created = customer(C, "acc-1", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS)
    updated = customer(
        C, "acc-1", "2028-02-01T10:00:00+01:00", "updated", fields={"customer_type": "foretag"}
    )
    decisions = run([created, updated])
    assert purpose_map(tag_of(decisions, created["event_id"]))["account"] == (
        "contract",
        "2029-01-10T09:00:00Z",
        R_ACCOUNT,
    )
    assert purpose_map(tag_of(decisions, updated["event_id"]))["account"] == (
        "legitimate_interest",
        "2029-01-10T09:00:00Z",
        R_ACCOUNT,
    )


def test_account_of_customer_who_just_purchased_rests_on_contract():
    """Inrego §2.2: "För aktiva kunder: Behandlingen är nödvändig för fullgörande av avtal om
    köp av varor från oss." A customer whose account is from 2024-01-10 and who purchased on
    2027-03-01 is active when the account is updated a month later: basis contract, and the
    account runs 5 years from that purchase (2032-03-01T11:00:00Z)."""
    events = [
        customer(C, "acc-2", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS),
        order(C, "acc-2", "2027-03-01T12:00:00+01:00", order_id="A-1"),
        customer(C, "acc-2", "2027-04-01T10:00:00+02:00", "updated", fields={"email": "n@x.se"}),
    ]
    decisions = run(events)
    assert purpose_map(tag_of(decisions, events[2]["event_id"]))["account"] == (
        "contract",
        "2032-03-01T11:00:00Z",
        R_ACCOUNT,
    )


def test_account_anonymized_5_years_after_creation_when_no_later_purchase():
    """Inrego §2.2: "Fem (5) år från skapandet av användarkontot eller ditt senaste inköp
    varefter ditt användarkonto kommer att avslutas och dina uppgifter avidentifieras eller
    raderas." A guest purchase before the account (2023-12-01) does not count against the later
    creation (2024-01-10): anonymised at 2029-01-10T09:00:00Z, not a second earlier."""
    events = [
        order(C, "acc-3", "2023-12-01T12:00:00+01:00", order_id="G-1"),
        customer(C, "acc-3", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS),
    ]
    before = run(events, until="2029-01-10T08:59:59Z")
    assert erasures(before, rule=R_ACCOUNT) == []

    at = run(events, until="2029-01-10T09:00:00Z")
    commands = by_target(erasures(at, rule=R_ACCOUNT))
    assert set(commands) == ACCOUNT_TARGETS
    for cmd in commands.values():
        assert cmd["action"] == "anonymize"
        assert cmd["purposes"] == ["account"]
        assert cmd["categories"] == ["contact", "account"]
        assert cmd["reason"] == "retention_expired"
        assert cmd["issued_at"] == "2029-01-10T09:00:00Z"
        assert cmd["deadline"] == "2029-01-11T09:00:00Z"
        assert "recorded_before" not in cmd  # the whole account goes


def test_purchase_after_creation_moves_account_expiry():
    """Inrego §2.2: "Fem (5) år från skapandet av användarkontot eller ditt senaste inköp",
    whichever is later. Account created 2024-01-10T10:00+01:00, purchase 2026-05-20T14:00+02:00:
    the account is not anonymised at 2029-01-10 but at 2031-05-20T12:00:00Z."""
    events = [
        customer(C, "acc-4", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS),
        order(C, "acc-4", "2026-05-20T14:00:00+02:00", order_id="A-9"),
    ]
    assert erasures(run(events, until="2031-05-20T11:59:59Z"), rule=R_ACCOUNT) == []

    commands = erasures(run(events, until="2031-05-20T12:00:00Z"), rule=R_ACCOUNT)
    assert {c["target"] for c in commands} == ACCOUNT_TARGETS
    assert {(c["action"], c["reason"], c["issued_at"]) for c in commands} == {
        ("anonymize", "retention_expired", "2031-05-20T12:00:00Z")
    }


def test_account_closed_by_person_anonymized_within_one_month():
    """Inrego §2.2: "Om ditt användarkonto avslutas på initiativ av dig själv kommer dina
    uppgifter att avidentifieras eller raderas inom en (1) månad från begäran." Closing on
    2024-06-01T10:00+02:00 anonymises the account data at every target holding it, reason
    account_closed, deadline 2024-07-01T08:00:00Z; no retention expiry follows later."""
    events = [
        customer(C, "acc-5", "2024-03-15T09:30:00+01:00", fields=CUSTOMER_FIELDS),
        customer(C, "acc-5", "2024-06-01T10:00:00+02:00", "closed", fields={}),
    ]
    decisions = run(events, until="2030-01-01T00:00:00Z")
    closing = tag_of(decisions, events[1]["event_id"])
    assert "account" not in purpose_map(closing)

    commands = by_target(erasures(decisions, reason="account_closed"))
    assert set(commands) == ACCOUNT_TARGETS
    for cmd in commands.values():
        assert cmd["action"] == "anonymize"
        assert cmd["purposes"] == ["account"]
        assert cmd["categories"] == ["contact", "account"]
        assert cmd["rule"] == "inrego.account.closed-by-person"
        assert cmd["issued_at"] == "2024-06-01T08:00:00Z"
        assert cmd["deadline"] == "2024-07-01T08:00:00Z"
    # The account is gone: its 5-year timer (2029-03-15) must not fire again.
    assert erasures(decisions, rule=R_ACCOUNT) == []


# -- §2.3: orders, service, warranty, complaints -------------------------------------------


def test_order_data_kept_5_years_from_latest_purchase():
    """Inrego §2.3: "Vi lagrar dina personuppgifter så länge som de behövs för att vi ska kunna
    fullgöra vårt avtal med dig, dock längst fem (5) år från ditt senaste inköp." Purchase
    2024-05-01, delivery 2024-05-03 (not a purchase), second purchase 2026-02-01T09:00+01:00:
    order data expires 2031-02-01T08:00:00Z, not at 2029-05-01, and is then erased from the
    business systems, IT providers and logistics."""
    first = order(C, "buyer-1", "2024-05-01T12:00:00+02:00", order_id="O-1")
    delivered = order(C, "buyer-1", "2024-05-03T12:00:00+02:00", "delivered", order_id="O-1")
    second = order(C, "buyer-1", "2026-02-01T09:00:00+01:00", order_id="O-2")
    events = [first, delivered, second]

    decisions = run(events, until="2031-02-01T07:59:59Z")
    assert purpose_map(tag_of(decisions, first["event_id"]))["contract"] == (
        "contract",
        "2029-05-01T10:00:00Z",
        R_ORDERS,
    )
    assert purpose_map(tag_of(decisions, delivered["event_id"]))["contract"] == (
        "contract",
        "2029-05-01T10:00:00Z",
        R_ORDERS,
    )
    assert purpose_map(tag_of(decisions, second["event_id"]))["contract"] == (
        "contract",
        "2031-02-01T08:00:00Z",
        R_ORDERS,
    )
    _no_erasure(decisions)

    commands = by_target(erasures(run(events, until="2031-02-01T08:00:00Z")))
    assert set(commands) == {"business-systems", "it-service-providers", "logistics"}
    for cmd in commands.values():
        assert cmd["action"] == "erase"
        assert cmd["purposes"] == ["contract"]
        assert cmd["categories"] == ["order"]
        assert cmd["reason"] == "retention_expired"
        assert cmd["rule"] == R_ORDERS
        assert cmd["issued_at"] == "2031-02-01T08:00:00Z"


def test_complaint_rests_on_legitimate_interest():
    """Inrego §2.3: "Behandlingen av uppgifter hänförliga till reklamation och klagomål stödjer
    sig på vårt berättigade intresse av att hjälpa dig". A complaint is tagged contract on
    legitimate_interest (rule inrego.contract.complaints), not on the contract basis."""
    placed = order(C, "buyer-2", "2024-05-01T12:00:00+02:00", order_id="O-7")
    complaint = order(C, "buyer-2", "2024-06-10T12:00:00+02:00", "complaint", order_id="O-7")
    tag = tag_of(run([placed, complaint]), complaint["event_id"])
    assert [(p["purpose"], p["legal_basis"], p["rule"]) for p in tag["purposes"]] == [
        ("contract", "legitimate_interest", R_COMPLAINTS)
    ]
    assert tag["suppressed"] == []


def test_complaint_data_kept_at_most_5_years_from_latest_purchase():
    """Inrego §2.3: the retention of the whole section is "dock längst fem (5) år från ditt
    senaste inköp", complaints included. A complaint on 2024-06-10 about a purchase of
    2024-05-01T12:00+02:00 (the latest) expires 2029-05-01T10:00:00Z and is erased then."""
    placed = order(C, "buyer-3", "2024-05-01T12:00:00+02:00", order_id="O-8")
    complaint = order(C, "buyer-3", "2024-06-10T12:00:00+02:00", "complaint", order_id="O-8")
    decisions = run([placed, complaint], until="2029-05-01T10:00:00Z")
    assert purpose_map(tag_of(decisions, complaint["event_id"]))["contract"] == (
        "legitimate_interest",
        "2029-05-01T10:00:00Z",
        R_COMPLAINTS,
    )
    commands = erasures(decisions, rule=R_COMPLAINTS)
    assert {c["issued_at"] for c in commands} == {"2029-05-01T10:00:00Z"}
    assert {c["reason"] for c in commands} == {"retention_expired"}


# -- §2.1 Bookkeeping Act ------------------------------------------------------------------


def test_bookkeeping_restricted_on_erasure_request_and_erased_after_7th_year():
    """Inrego §2.1: "För fakturering och bokföring: Rättslig förpliktelse ... enligt
    bokföringslagen"; "lagras i sju (7) år" (through the 7th year after the invoice's calendar
    year); §6.6: "Skulle det vara så att våra legala skyldigheter hindrar oss från att radera
    dina uppgifter kommer vi i stället att markera dem så att de inte längre aktivt används".
    Invoice 2024-06-15 -> kept until 2031-12-31T23:00:00Z (2032-01-01 local). An erasure
    request on 2025-03-01 erases the order data at once and only restricts the accounts;
    those are erased at 2031-12-31T23:00:00Z, not before."""
    placed = order(C, "inv-1", "2024-06-14T12:00:00+02:00", order_id="F-1")
    invoice = order(C, "inv-1", "2024-06-15T12:00:00+02:00", "invoiced", order_id="F-1")
    erase = request(C, "inv-1", "2025-03-01T12:00:00+01:00", "erasure", request_id="R-1")
    events = [placed, invoice, erase]

    decisions = run(events, until="2031-12-31T22:59:59Z")
    assert purpose_map(tag_of(decisions, invoice["event_id"]))["bookkeeping"] == (
        "legal_obligation",
        "2031-12-31T23:00:00Z",
        R_BOOKKEEPING,
    )
    now = erasures(decisions, reason="erasure_request")
    restrict = by_target(c for c in now if c["action"] == "restrict")
    assert set(restrict) == {"business-systems", "it-service-providers", "auditors"}
    for cmd in restrict.values():
        assert cmd["purposes"] == ["bookkeeping"]
        assert cmd["categories"] == ["order"]
        assert cmd["issued_at"] == "2025-03-01T11:00:00Z"
        assert cmd["deadline"] == "2025-04-01T10:00:00Z"  # one month, across DST
    erased_now = [c for c in now if c["action"] == "erase"]
    assert {c["target"] for c in erased_now} == {
        "business-systems",
        "it-service-providers",
        "logistics",
        "marketing-services",
    }
    assert all("bookkeeping" not in c["purposes"] for c in erased_now)
    assert erasures(decisions, reason="retention_expired") == []

    final = erasures(run(events, until="2031-12-31T23:00:00Z"), reason="retention_expired")
    commands = by_target(final)
    assert set(commands) == {"business-systems", "it-service-providers", "auditors"}
    for cmd in commands.values():
        assert cmd["action"] == "erase"
        assert cmd["purposes"] == ["bookkeeping"]
        assert cmd["rule"] == R_BOOKKEEPING
        assert cmd["issued_at"] == "2031-12-31T23:00:00Z"
        assert cmd["recorded_before"] == "2024-06-15T10:00:00Z"


# -- §2.1 contact persons ------------------------------------------------------------------


def test_contact_person_data_kept_while_relationship_lasts_and_erased_when_it_ends():
    """Inrego §2.1: contact persons on "Intresseavvägning"; "Gallring sker så snart vi fått
    kännedom om ... t.ex. om kund- eller samarbetsförhållandet upphör, du som kontaktperson har
    bytt tjänst". Open-ended while the relationship lasts (no expiry, nothing erased years
    later); when it ends on 2025-02-01T10:00+01:00 the contact data is erased at once, reason
    relationship_ended."""
    created = customer(
        C, "cp-1", "2024-03-15T09:30:00+01:00", role="contact_person", fields=CONTACT_FIELDS
    )
    ended = customer(
        C,
        "cp-1",
        "2025-02-01T10:00:00+01:00",
        "relationship_ended",
        role="contact_person",
        fields={},
    )

    lasting = run([created], until="2030-01-01T00:00:00Z")
    assert purpose_map(tag_of(lasting, created["event_id"]))["business_relationship"] == (
        "legitimate_interest",
        None,
        R_CONTACTS,
    )
    _no_erasure(lasting)

    decisions = run([created, ended])
    commands = by_target(erasures(decisions, reason="relationship_ended"))
    assert set(commands) == {"business-systems", "it-service-providers"}
    for cmd in commands.values():
        assert cmd["action"] == "erase"
        assert cmd["purposes"] == ["business_relationship"]
        assert cmd["categories"] == ["contact", "employment"]
        assert cmd["rule"] == R_CONTACTS
        assert cmd["issued_at"] == "2025-02-01T09:00:00Z"
        assert cmd["deadline"] == "2025-02-02T09:00:00Z"


# -- §2.7 direct marketing -----------------------------------------------------------------


def test_direct_marketing_objection_stops_marketing_and_erases_only_marketing_data():
    """Inrego §2.7: "Du har även rätt att invända mot att dina personuppgifter behandlas för
    direktmarknadsföring. Om du väljer att avregistrera dig ... upphöra med att rikta
    marknadsföring till dig." Before: direct_marketing on legitimate interest, open-ended.
    The opt-out on 2025-04-01T12:00+02:00 erases the marketing data only where it is held for
    marketing (business systems, IT providers, marketing services), nothing else, and at once:
    an objection to direct marketing is absolute (GDPR art. 21(3)), so the targets get the
    pack's opt-out deadline of one day, not the month of art. 12(3); every later record is
    suppressed for direct_marketing with reason objection."""
    created = customer(C, "dm-1", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS)
    placed = order(C, "dm-1", "2025-03-01T12:00:00+01:00", order_id="D-1")
    optout = consent(C, "dm-1", "2025-04-01T12:00:00+02:00", "direct_marketing", "object")
    later_order = order(C, "dm-1", "2025-05-01T12:00:00+02:00", order_id="D-2")
    later_update = customer(
        C,
        "dm-1",
        "2025-06-01T12:00:00+02:00",
        "updated",
        fields={"email": "ny@example.se", "phone": "+4670111"},
    )
    events = [created, placed, optout, later_order, later_update]
    decisions = run(events)

    assert purpose_map(tag_of(decisions, created["event_id"]))["direct_marketing"] == (
        "legitimate_interest",
        None,
        R_MARKETING,
    )
    commands = erasures(decisions)
    assert by_target(commands).keys() == MARKETING_TARGETS
    for cmd in commands:
        assert cmd["action"] == "erase"
        assert cmd["purposes"] == ["direct_marketing"]
        assert cmd["categories"] == ["contact"]
        assert cmd["reason"] == "objection"
        assert cmd["issued_at"] == "2025-04-01T10:00:00Z"
        assert cmd["deadline"] == "2025-04-02T10:00:00Z"  # opt-out: one day, art. 21(3)
    for later in (later_order, later_update):
        tag = tag_of(decisions, later["event_id"])
        assert "direct_marketing" not in purpose_map(tag)
        assert tag["suppressed"] == [{"purpose": "direct_marketing", "reason": "objection"}]
    # Other purposes go on: the order is still contract data.
    assert purpose_map(tag_of(decisions, later_order["event_id"]))["contract"] == (
        "contract",
        "2030-05-01T10:00:00Z",
        R_ORDERS,
    )


# -- §6.1 access ---------------------------------------------------------------------------


def test_access_request_gives_register_extract():
    """Inrego §6.1: "ett registerutdrag som anger vilka personuppgifter vi behandlar, för vilka
    ändamål vi behandlar dem, var uppgifterna har inhämtats från, vilka tredje parter som
    uppgifterna har överförts till samt hur länge uppgifterna kommer att lagras." The extract
    lists categories, purposes with legal basis and retention, sources and recipients, answered
    within one month, with a readable text, and holds no personal-data values."""
    events = [
        order(C, "ax-1", "2023-12-01T12:00:00+01:00", order_id="X-1"),
        order(C, "ax-1", "2023-12-02T12:00:00+01:00", "invoiced", order_id="X-1"),
        customer(C, "ax-1", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS),
        click(C, "ax-1", "2024-02-01T10:00:00+01:00"),
        request(C, "ax-1", "2024-04-02T12:00:00+02:00", "access", request_id="ACC-1"),
    ]
    decisions = run(events)
    assert rejects(decisions) == []
    (extract,) = extracts(decisions)
    assert extract["request_id"] == "ACC-1"
    assert extract["controller"] == C and extract["subject_id"] == "ax-1"
    assert extract["issued_at"] == "2024-04-02T10:00:00Z"
    assert extract["deadline"] == "2024-05-02T10:00:00Z"
    assert extract["controller_name"] == "Inrego AB"
    assert extract["org_nr"] == "556531-6352"
    assert [c["category"] for c in extract["categories"]] == [
        "contact",
        "account",
        "order",
        "technical",
    ]
    assert [
        (p["purpose"], p["legal_basis"], p["rule"], p["expires_at"]) for p in extract["purposes"]
    ] == [
        ("analytics", "legitimate_interest", R_ANALYTICS, "2026-02-01T09:00:00Z"),
        ("account", "contract", R_ACCOUNT, "2029-01-10T09:00:00Z"),
        ("contract", "contract", R_ORDERS, "2028-12-01T11:00:00Z"),
        ("bookkeeping", "legal_obligation", R_BOOKKEEPING, "2030-12-31T23:00:00Z"),
        ("direct_marketing", "legitimate_interest", R_MARKETING, None),
    ]
    retention = {p["purpose"]: p["retention"] for p in extract["purposes"]}
    assert "24 months" in retention["analytics"]
    assert "5 years" in retention["account"]
    assert "5 years" in retention["contract"]
    assert "7 years" in retention["bookkeeping"]
    assert "object" in retention["direct_marketing"]
    assert {s["type"] for s in extract["sources"]} >= {"click", "customer", "order"}
    recipients = {r["target"]: set(r["purposes"]) for r in extract["recipients"]}
    assert recipients == {
        "business-systems": {"account", "contract", "bookkeeping", "direct_marketing"},
        "web-analytics": {"analytics"},
        "it-service-providers": {
            "account",
            "contract",
            "bookkeeping",
            "direct_marketing",
            "analytics",
        },
        "marketing-services": {"direct_marketing"},
        "logistics": {"contract"},
        "auditors": {"bookkeeping"},
    }
    text = extract["text"]
    assert "Inrego AB" in text and "556531-6352" in text
    for line in (
        "analytics (legitimate_interest)",
        "account (contract)",
        "bookkeeping (legal_obligation)",
        "2026-02-01T09:00:00Z",
        "2030-12-31T23:00:00Z",
        "forwarders and transport companies delivering orders",
    ):
        assert line in text
    # The extract names categories, never the values (no e-mail, name or IP).
    dumped = json.dumps(extract, ensure_ascii=False)
    assert "anna@example.se" not in dumped and "Anna Andersson" not in dumped
    assert "192.0.2.10" not in dumped
    assert erasures(decisions) == []


# -- determinism ---------------------------------------------------------------------------


def _lifecycle() -> list[dict]:
    return [
        customer(C, "det-1", "2024-01-10T10:00:00+01:00", fields=CUSTOMER_FIELDS),
        click(C, "det-1", "2024-01-11T10:00:00+01:00"),
        order(C, "det-1", "2024-02-01T12:00:00+01:00", order_id="Z-1"),
        order(C, "det-1", "2024-02-02T12:00:00+01:00", "invoiced", order_id="Z-1"),
        consent(C, "det-1", "2024-03-01T12:00:00+01:00"),
        customer(
            C, "det-2", "2024-03-02T09:00:00+01:00", role="contact_person", fields=CONTACT_FIELDS
        ),
        customer(
            C,
            "det-2",
            "2024-09-02T09:00:00+02:00",
            "relationship_ended",
            role="contact_person",
            fields={},
        ),
        request(C, "det-1", "2025-01-31T12:00:00+01:00", "erasure", request_id="E-1"),
    ]


def test_same_input_gives_identical_decisions_and_command_ids():
    """Design (`evaluate` contract) applied to Inrego: the same input gives byte-identical
    output and deterministic command_ids (redelivery is idempotent); ids are unique per
    command. Covers §2.4 expiry, §2.7 objection, §2.1 relationship end, §6.3 erasure and the
    Bookkeeping Act expiry."""
    events = _lifecycle()
    first = run_lines(events, until="2032-06-01T00:00:00Z")
    second = run_lines(events, until="2032-06-01T00:00:00Z")
    assert first == second
    ids = [d["command_id"] for d in map(json.loads, first) if d["decision"] == "erasure"]
    assert len(ids) == len(set(ids)) > 0
    assert {d["reason"] for d in map(json.loads, first) if d["decision"] == "erasure"} == {
        "objection",
        "relationship_ended",
        "erasure_request",
        "retention_expired",
    }
    # A redelivered event (same event_id) decides nothing new.
    replayed = run([*events, events[2]], until="2032-06-01T00:00:00Z")
    assert [json.dumps(d, ensure_ascii=False) for d in replayed] == [
        json.dumps(json.loads(line), ensure_ascii=False) for line in first
    ]
