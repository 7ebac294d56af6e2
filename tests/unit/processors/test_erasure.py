"""Erasure planning: one command per target holding the purpose and the category."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.erasure import (
    COMMAND_NAMESPACE,
    Affected,
    Cause,
    command_id,
    plan_commands,
)
from privacy_pipeline.processors.instants import CalendarDuration
from privacy_pipeline.processors.policy import load_packs

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)
REGO = CompiledPolicy(PACKS["rego"])
INREGO = CompiledPolicy(PACKS["inrego"])

AT = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
MONTH = CalendarDuration(months=1)


def cause(**kw: object) -> Cause:
    base: dict[str, object] = {
        "reason": "erasure_request",
        "rule": "rego.rights.erasure",
        "issued_at": AT,
        "deadline": MONTH,
        "key": "e-1",
    }
    base.update(kw)
    return Cause(**base)  # type: ignore[arg-type]


def plan(policy: CompiledPolicy, action: str, *affected: Affected, c: Cause | None = None):  # type: ignore[no-untyped-def]
    return plan_commands(policy, "s-1", action, list(affected), c or cause())


def aff(policy: CompiledPolicy, purpose: str, *cats: str) -> Affected:
    return Affected(purpose, policy.bits(cats))


def test_one_command_per_target_holding_purpose_and_category() -> None:
    commands = plan(REGO, "erase", aff(REGO, "analytics", "technical"))
    assert [(c["target"], c["purposes"], c["categories"]) for c in commands] == [
        ("web-analytics", ["analytics"], ["technical"]),
        ("market-analysis", ["analytics"], ["technical"]),
    ]


def test_a_target_holding_the_purpose_but_not_the_category_gets_nothing() -> None:
    # crm and email-sms hold direct_marketing, but neither holds technical data.
    assert plan(REGO, "erase", aff(REGO, "direct_marketing", "technical")) == []


def test_a_target_holding_the_category_but_not_the_purpose_gets_nothing() -> None:
    # web-analytics holds technical data, but only for analytics.
    commands = plan(REGO, "erase", aff(REGO, "contract", "technical"))
    assert commands == []


def test_categories_are_narrowed_to_what_each_target_holds() -> None:
    commands = plan(REGO, "erase", aff(REGO, "direct_marketing", "contact", "identity"))
    assert [(c["target"], c["categories"]) for c in commands] == [
        ("crm", ["identity", "contact"]),
        ("address-and-print", ["contact"]),
        ("email-sms", ["contact"]),
    ]


def test_several_purposes_merge_per_target_in_affected_order() -> None:
    commands = plan(
        REGO,
        "erase",
        aff(REGO, "contract", "contact", "order"),
        aff(REGO, "direct_marketing", "contact"),
        aff(REGO, "contract", "account"),
    )
    assert [(c["target"], c["purposes"], c["categories"]) for c in commands] == [
        ("crm", ["contract", "direct_marketing"], ["contact", "account"]),
        ("erp", ["contract"], ["contact", "account", "order"]),
        ("address-and-print", ["contract", "direct_marketing"], ["contact"]),
        ("payment", ["contract"], ["contact", "account", "order"]),
        ("email-sms", ["direct_marketing"], ["contact"]),
    ]


def test_command_names_its_request_and_when_the_obligation_arose() -> None:
    expiry = datetime(2023, 12, 31, 23, 0, tzinfo=UTC)
    by_request = plan(
        INREGO, "erase", aff(INREGO, "analytics", "technical"), c=cause(request_id="R-7")
    )
    by_expiry = plan(
        INREGO,
        "erase",
        aff(INREGO, "analytics", "technical"),
        c=cause(reason="retention_expired", due_at=expiry),
    )
    assert {c["request_id"] for c in by_request} == {"R-7"}
    assert {c["due_at"] for c in by_request} == {"2024-01-31T12:00:00Z"}  # the receipt
    assert {c["due_at"] for c in by_expiry} == {"2023-12-31T23:00:00Z"}  # the expiry
    assert not any("request_id" in c for c in by_expiry)


def test_nothing_affected_plans_nothing() -> None:
    assert plan(REGO, "erase") == []


def test_command_has_every_contract_field() -> None:
    [command] = plan(INREGO, "anonymize", aff(INREGO, "analytics", "technical"))[:1]
    assert command == {
        "decision": "erasure",
        "command_id": command_id("inrego", "s-1", "web-analytics", "anonymize", cause()),
        "controller": "inrego",
        "subject_id": "s-1",
        "target": "web-analytics",
        "action": "anonymize",
        "purposes": ["analytics"],
        "categories": ["technical"],
        "reason": "erasure_request",
        "rule": "rego.rights.erasure",
        "issued_at": "2024-01-31T12:00:00Z",
        "deadline": "2024-02-29T12:00:00Z",
        "due_at": "2024-01-31T12:00:00Z",
    }
    assert "recorded_before" not in command


def test_recorded_before_is_carried_when_known() -> None:
    c = cause(recorded_before=datetime(2022, 5, 1, 8, 30, tzinfo=UTC))
    [first, *_] = plan(INREGO, "erase", aff(INREGO, "analytics", "technical"), c=c)
    assert first["recorded_before"] == "2022-05-01T08:30:00Z"


# -- command ids ---------------------------------------------------------------------------


def test_command_id_is_deterministic_uuid5() -> None:
    cid = command_id("rego", "s-1", "crm", "erase", cause())
    assert cid == command_id("rego", "s-1", "crm", "erase", cause())
    parsed = uuid.UUID(cid)
    assert parsed.version == 5
    assert str(parsed) == cid
    assert cid == str(
        uuid.uuid5(COMMAND_NAMESPACE, "rego|s-1|crm|erase|erasure_request|rego.rights.erasure|e-1")
    )


def test_command_id_is_stable_across_releases() -> None:
    # Redelivery across a deploy must keep ids: this value is pinned on purpose.
    assert command_id("rego", "s-1", "crm", "erase", cause()) == (
        "a700efe4-2356-5043-84b5-73e5b04692b4"
    )


@pytest.mark.parametrize(
    ("args", "c"),
    [
        (("rego", "s-2", "crm", "erase"), cause()),
        (("rego", "s-1", "erp", "erase"), cause()),
        (("rego", "s-1", "crm", "restrict"), cause()),
        (("inrego", "s-1", "crm", "erase"), cause()),
        (("rego", "s-1", "crm", "erase"), cause(reason="objection")),
        (("rego", "s-1", "crm", "erase"), cause(rule="rego.rights.objection")),
        (("rego", "s-1", "crm", "erase"), cause(key="e-2")),
        (("rego", "s-1", "crm", "erase"), cause(key="expiry:2030-01-01T00:00:00Z")),
    ],
)
def test_command_id_differs_for_every_different_cause(
    args: tuple[str, str, str, str], c: Cause
) -> None:
    assert command_id(*args, c) != command_id("rego", "s-1", "crm", "erase", cause())


def test_command_id_does_not_depend_on_the_instant_of_issue() -> None:
    # Redelivered after a restart with a later clock: same cause, same id.
    later = cause(issued_at=datetime(2024, 2, 1, tzinfo=UTC))
    assert command_id("rego", "s-1", "crm", "erase", later) == command_id(
        "rego", "s-1", "crm", "erase", cause()
    )


def test_ids_in_one_plan_are_all_different() -> None:
    commands = plan(REGO, "erase", aff(REGO, "contract", "contact", "order", "account"))
    assert [c["target"] for c in commands] == ["crm", "erp", "address-and-print", "payment"]
    ids = [c["command_id"] for c in commands]
    assert len(set(ids)) == 4


# -- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued", "deadline", "expected"),
    [
        # GDPR art. 12(3): one calendar month, on the Stockholm wall clock.
        (datetime(2024, 1, 31, 12, 0, tzinfo=UTC), MONTH, "2024-02-29T12:00:00Z"),
        (datetime(2024, 3, 15, 12, 0, tzinfo=UTC), MONTH, "2024-04-15T11:00:00Z"),  # into DST
        (datetime(2024, 10, 15, 12, 0, tzinfo=UTC), MONTH, "2024-11-15T13:00:00Z"),  # out of DST
        # Culling: one day (23 h of elapsed time across spring-forward).
        (
            datetime(2024, 3, 30, 12, 0, tzinfo=UTC),
            CalendarDuration(days=1),
            "2024-03-31T11:00:00Z",
        ),
        (datetime(2024, 5, 1, 0, 0, tzinfo=UTC), CalendarDuration(), "2024-05-01T00:00:00Z"),
    ],
)
def test_deadline_is_calendar_arithmetic_from_issue(
    issued: datetime, deadline: CalendarDuration, expected: str
) -> None:
    [first, *_] = plan(
        REGO,
        "erase",
        aff(REGO, "analytics", "technical"),
        c=cause(issued_at=issued, deadline=deadline),
    )
    assert first["deadline"] == expected
    assert first["deadline"] >= first["issued_at"]
