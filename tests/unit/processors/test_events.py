"""Input events: parsing each type, and errors that name the field but never its value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from privacy_pipeline.processors.events import Event, EventError, parse_event

EMAIL = "anna.andersson@example.se"
IP = "192.0.2.173"
PNR = "19900101-1234"

COMMON = {
    "event_id": "e-1",
    "controller": "inrego",
    "subject_id": "s-1",
    "occurred_at": "2024-03-01T10:00:00+01:00",
}

VALID: dict[str, dict[str, Any]] = {
    "customer": {
        **COMMON,
        "type": "customer",
        "action": "created",
        "role": "contact_person",
        "fields": {"name": "Anna", "email": EMAIL, "personnummer": PNR, "phone": "", "x": None},
    },
    "order": {
        **COMMON,
        "type": "order",
        "action": "invoiced",
        "order_id": "o-1",
        "amount": 199.5,
        "currency": "SEK",
    },
    "click": {
        **COMMON,
        "type": "click",
        "url": "https://example.se/",
        "ip": IP,
        "user_agent": "Mozilla/5.0",
        "anonymous_id": "anon-1",
    },
    "consent": {
        **COMMON,
        "type": "consent",
        "purpose": "direct_marketing",
        "action": "withdraw",
        "channel": "email",
    },
    "privacy_request": {
        **COMMON,
        "type": "privacy_request",
        "request_id": "r-1",
        "right": "erasure",
        "purposes": ["direct_marketing", "analytics"],
    },
}

REQUIRED: dict[str, list[str]] = {
    "customer": ["action"],
    "order": ["action", "order_id"],
    "click": ["url", "ip", "user_agent"],
    "consent": ["purpose", "action", "channel"],
    "privacy_request": ["request_id", "right"],
}
COMMON_REQUIRED = ["event_id", "type", "controller", "subject_id", "occurred_at"]


def with_(etype: str, **changes: Any) -> dict[str, Any]:
    obj = dict(VALID[etype])
    obj.update(changes)
    return obj


def without(etype: str, name: str) -> dict[str, Any]:
    obj = dict(VALID[etype])
    del obj[name]
    return obj


def error_of(obj: object) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(obj)
    return info.value


# -- each type parses ----------------------------------------------------------------------

AT = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def expected(etype: str, **parsed: Any) -> Event:
    """The Event a VALID[etype] object parses to: the COMMON part (in UTC) and `parsed`."""
    return Event(
        event_id="e-1", type=etype, controller="inrego", subject_id="s-1", occurred_at=AT, **parsed
    )


def test_customer_parses() -> None:
    event = parse_event(VALID["customer"])
    assert event == expected(
        "customer",
        action="created",
        role="contact_person",
        fields=frozenset({"name", "email", "personnummer"}),  # empty and null values dropped
    )
    assert event.key == "inrego:s-1"
    assert event.occurred_at.tzinfo is UTC


def test_customer_role_is_optional() -> None:
    # Omitted or null: the event names no role (the enforcer then keeps the person's role,
    # `customer` for a new person; see test_enforcer).
    assert parse_event(without("customer", "role")).role in (None, "customer")
    assert parse_event(with_("customer", role=None)).role in (None, "customer")


def test_customer_fields_are_optional() -> None:
    assert parse_event(without("customer", "fields")).fields == frozenset()


def test_order_parses() -> None:
    event = parse_event(VALID["order"])
    assert event == expected(
        "order",
        action="invoiced",
        order_id="o-1",
        fields=frozenset({"order_id", "amount", "currency"}),
    )


def test_order_amount_and_currency_are_optional() -> None:
    obj = without("order", "amount")
    del obj["currency"]
    assert parse_event(obj).fields == frozenset({"order_id"})


def test_click_parses() -> None:
    event = parse_event(VALID["click"])
    assert event == expected("click", fields=frozenset({"url", "ip", "user_agent", "anonymous_id"}))
    assert parse_event(without("click", "anonymous_id")).fields == frozenset(
        {"url", "ip", "user_agent"}
    )


def test_consent_parses() -> None:
    event = parse_event(VALID["consent"])
    assert event == expected(
        "consent", purpose="direct_marketing", action="withdraw", channel="email"
    )


def test_privacy_request_parses() -> None:
    event = parse_event(VALID["privacy_request"])
    assert event == expected(
        "privacy_request",
        request_id="r-1",
        right="erasure",
        purposes=("direct_marketing", "analytics"),
    )
    assert parse_event(without("privacy_request", "purposes")).purposes is None


@pytest.mark.parametrize(
    ("etype", "name", "value"),
    [
        ("customer", "action", "created"),
        ("customer", "action", "updated"),
        ("customer", "action", "contacted"),
        ("customer", "action", "closed"),
        ("customer", "action", "relationship_ended"),
        ("customer", "role", "customer"),
        ("customer", "role", "prospect"),
        ("customer", "role", "supplier"),
        ("order", "action", "placed"),
        ("order", "action", "delivered"),
        ("order", "action", "returned"),
        ("order", "action", "complaint"),
        ("consent", "action", "grant"),
        ("consent", "action", "object"),
        ("consent", "channel", "sms"),
        ("consent", "channel", "post"),
        ("consent", "channel", "phone"),
        ("consent", "channel", "web"),
        ("privacy_request", "right", "access"),
        ("privacy_request", "right", "rectification"),
        ("privacy_request", "right", "restriction"),
        ("privacy_request", "right", "portability"),
        ("privacy_request", "right", "objection"),
    ],
)
def test_every_enum_value_of_the_contract_is_accepted(etype: str, name: str, value: str) -> None:
    assert getattr(parse_event(with_(etype, **{name: value})), name) == value


# -- missing and malformed fields ----------------------------------------------------------


@pytest.mark.parametrize(
    ("etype", "name"),
    [(t, n) for t in VALID for n in COMMON_REQUIRED + REQUIRED[t]],
)
def test_missing_required_field_is_named(etype: str, name: str) -> None:
    err = error_of(without(etype, name))
    assert err.field == name
    assert str(err) == f"field '{name}': is required"


@pytest.mark.parametrize(
    ("etype", "name"),
    [(t, n) for t in VALID for n in COMMON_REQUIRED + REQUIRED[t]],
)
def test_null_required_field_counts_as_missing(etype: str, name: str) -> None:
    err = error_of(with_(etype, **{name: None}))
    assert err.field == name


@pytest.mark.parametrize("name", ["event_id", "controller", "subject_id"])
def test_empty_or_non_string_identifiers_are_rejected(name: str) -> None:
    assert error_of(with_("click", **{name: ""})).field == name
    assert error_of(with_("click", **{name: 42})).field == name


@pytest.mark.parametrize(
    ("etype", "name"),
    [
        ("customer", "type"),
        ("customer", "action"),
        ("customer", "role"),
        ("order", "action"),
        ("consent", "action"),
        ("consent", "channel"),
        ("privacy_request", "right"),
    ],
)
def test_bad_enum_value_is_rejected_naming_the_field(etype: str, name: str) -> None:
    err = error_of(with_(etype, **{name: "exploded"}))
    assert err.field == name
    assert "exploded" not in str(err)


def test_bad_enum_error_lists_the_allowed_values() -> None:
    assert str(error_of(with_("consent", channel="fax"))) == (
        "field 'channel': must be one of email, phone, post, sms, web"
    )
    assert str(error_of(with_("customer", type="visit"))) == (
        "field 'type': unknown type; expected one of click, consent, customer, "
        "order, privacy_request"
    )


def test_order_action_is_not_a_customer_action() -> None:
    assert error_of(with_("order", action="created")).field == "action"
    assert error_of(with_("customer", action="placed")).field == "action"


@pytest.mark.parametrize(
    ("etype", "name", "value"),
    [
        ("order", "amount", "12"),
        ("order", "amount", True),
        ("order", "currency", "KRONOR"),
        ("order", "currency", 752),
        ("customer", "fields", ["name"]),
        ("privacy_request", "purposes", "direct_marketing"),
        ("privacy_request", "purposes", ["direct_marketing", ""]),
        ("privacy_request", "purposes", [1]),
        ("customer", "occurred_at", 1709283600),
        ("customer", "occurred_at", "2024-03-01T10:00:00"),
        ("customer", "occurred_at", "last tuesday"),
    ],
)
def test_malformed_values_are_rejected(etype: str, name: str, value: Any) -> None:
    assert error_of(with_(etype, **{name: value})).field == name


def test_nested_personal_data_field_is_rejected_by_its_key() -> None:
    err = error_of(with_("customer", fields={"email": {"work": EMAIL}}))
    assert err.field == "fields.email"


@pytest.mark.parametrize("obj", [[], "event", 42, None])
def test_non_object_is_rejected(obj: object) -> None:
    err = error_of(obj)
    assert err.field is None
    assert str(err) == "an event must be a JSON object"


def test_unhashable_enum_values_are_an_event_error_not_a_crash() -> None:
    # A JSON list or object where a string is expected must be rejected like any bad value
    # (EventError), never raise TypeError: that would stop the stream.
    assert error_of(with_("consent", action=["grant"])).field == "action"
    assert error_of(with_("consent", type={"t": 1})).field == "type"
    assert error_of(with_("customer", role=["customer"])).field == "role"
    assert error_of(with_("privacy_request", right=["erasure"])).field == "right"


def test_out_of_range_instant_is_an_event_error_not_a_crash() -> None:
    # A syntactically valid ISO instant whose UTC form is out of datetime's range.
    assert error_of(with_("click", occurred_at="9999-12-31T23:59:59-01:00")).field == (
        "occurred_at"
    )
    assert error_of(with_("click", occurred_at="0001-01-01T00:00:00+01:00")).field == (
        "occurred_at"
    )


# -- no personal data in error messages ----------------------------------------------------

PERSONAL = [EMAIL, IP, PNR, "Anna Andersson"]


@pytest.mark.parametrize(
    ("etype", "name"),
    [
        ("customer", "type"),
        ("customer", "action"),
        ("customer", "role"),
        ("customer", "occurred_at"),
        ("order", "action"),
        ("order", "currency"),
        ("order", "amount"),
        ("consent", "action"),
        ("consent", "channel"),
        ("privacy_request", "right"),
    ],
)
@pytest.mark.parametrize("value", PERSONAL)
def test_error_message_never_contains_the_value(etype: str, name: str, value: str) -> None:
    err = error_of(with_(etype, **{name: value}))
    assert err.field == name
    assert value not in str(err)
    assert value not in err.message
    assert value not in repr(err)


@pytest.mark.parametrize("value", PERSONAL)
def test_nested_field_error_never_contains_the_value(value: str) -> None:
    err = error_of(with_("customer", fields={"email": [value]}))
    assert value not in str(err)


@pytest.mark.parametrize("value", PERSONAL)
def test_purposes_error_never_contains_the_value(value: str) -> None:
    err = error_of(with_("privacy_request", purposes=[value, 3]))
    assert err.field == "purposes"
    assert value not in str(err)


def test_valid_event_keeps_only_field_names_never_values() -> None:
    event = parse_event(VALID["customer"])
    text = repr(event)
    for value in (EMAIL, PNR, "Anna"):
        assert value not in text
