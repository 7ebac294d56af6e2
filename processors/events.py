"""Input events: the canonical JSON form of the design, parsed and checked field by field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from sys import intern
from typing import Any, Final

from .instants import InstantError, parse_instant
from .vocabulary import (
    CHANNELS,
    CONSENT_ACTIONS,
    CUSTOMER_ACTIONS,
    EVENT_TYPES,
    ORDER_ACTIONS,
    RIGHTS,
    ROLES,
)

RESERVED_SUBJECT_PREFIX: Final = "canary-"
"""Subject ids that start with this belong to deletion canaries, never to a person.

The live pipeline plants synthetic people under such ids and erases them again, to prove
that erasure reaches every target. Ingest accepts an event with such an id only when it
carries the worker's canary signature, and dead-letters any other (`reserved_subject_id`):
so nobody can make a canary of their own, and a real person's id that happens to start
with the prefix is refused loudly, never mistaken for a canary. The rule lives here, not
in `parse_event`, because the enforce step, `evaluate` and replay must still read the
canaries that ingest let through.
"""


def reserved_subject_id(subject_id: str) -> bool:
    """True when *subject_id* is in the namespace reserved for deletion canaries."""
    return subject_id.startswith(RESERVED_SUBJECT_PREFIX)


class EventError(ValueError):
    """An input that is not a valid event; names the field, never its value."""

    def __init__(self, field_name: str | None, message: str) -> None:
        self.field = field_name
        self.message = message
        super().__init__(f"field '{field_name}': {message}" if field_name else message)


@dataclass(slots=True)
class Event:
    """One input event; fields not used by its type stay at their defaults.

    Not frozen: a frozen dataclass pays a setattr call per field, on every event.
    """

    event_id: str
    type: str
    controller: str
    subject_id: str
    occurred_at: datetime
    action: str | None = None
    role: str | None = None
    fields: frozenset[str] = field(default_factory=frozenset)
    order_id: str | None = None
    purpose: str | None = None
    channel: str | None = None
    request_id: str | None = None
    right: str | None = None
    purposes: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        """The subject-log key, `controller:subject_id`."""
        return f"{self.controller}:{self.subject_id}"


_CLICK_FIELDS = ("url", "ip", "user_agent")
# Retention arithmetic adds up to decades; keep every result inside datetime's range.
_EARLIEST, _LATEST = 1900, 2999
_ORDER_OPTIONAL = ("amount", "currency")


def _text(obj: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise EventError(name, "is required")
        return None
    if not isinstance(value, str) or not value:
        raise EventError(name, "must be a non-empty string")
    return value


def _choice(obj: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = obj.get(name)
    if value is None:
        raise EventError(name, "is required")
    if not isinstance(value, str) or value not in allowed:
        raise EventError(name, f"must be one of {', '.join(sorted(allowed))}")
    return intern(value)


def parse_event(obj: object) -> Event:
    """Check a decoded JSON value against the input-event contract and build an Event."""
    if not isinstance(obj, dict):
        raise EventError(None, "an event must be a JSON object")
    get = obj.get
    event_id = get("event_id")
    if not isinstance(event_id, str) or not event_id:
        event_id = _text(obj, "event_id")  # raises, naming the problem
    etype = get("type")
    if etype is None:
        raise EventError("type", "is required")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        raise EventError("type", f"unknown type; expected one of {', '.join(sorted(EVENT_TYPES))}")
    controller = get("controller")
    if not isinstance(controller, str) or not controller:
        controller = _text(obj, "controller")
    subject_id = get("subject_id")
    if not isinstance(subject_id, str) or not subject_id:
        subject_id = _text(obj, "subject_id")
    occurred_raw = obj.get("occurred_at")
    if occurred_raw is None:
        raise EventError("occurred_at", "is required")
    if not isinstance(occurred_raw, str):
        raise EventError("occurred_at", "must be an ISO 8601 string")
    try:
        occurred_at = parse_instant(occurred_raw)
    except InstantError as exc:
        raise EventError("occurred_at", str(exc)) from None
    if not _EARLIEST <= occurred_at.year <= _LATEST:
        raise EventError("occurred_at", f"year must be between {_EARLIEST} and {_LATEST}")
    # Shared copies of the few distinct names: states keep them for every subject.
    base: dict[str, Any] = {
        "event_id": event_id,
        "type": intern(etype),
        "controller": intern(controller) if controller else controller,
        "subject_id": subject_id,
        "occurred_at": occurred_at,
    }
    if etype == "customer":
        return _customer(obj, base)
    if etype == "order":
        return _order(obj, base)
    if etype == "click":
        return _click(obj, base)
    if etype == "consent":
        return Event(
            **base,
            purpose=intern(_text(obj, "purpose") or ""),
            action=_choice(obj, "action", CONSENT_ACTIONS),
            channel=_choice(obj, "channel", CHANNELS),
        )
    return _privacy_request(obj, base)


def _customer(obj: Mapping[str, Any], base: dict[str, Any]) -> Event:
    action = _choice(obj, "action", CUSTOMER_ACTIONS)
    role = obj.get("role")
    if role is not None and (not isinstance(role, str) or role not in ROLES):
        raise EventError("role", f"must be one of {', '.join(sorted(ROLES))}")
    data = obj.get("fields")
    names: frozenset[str] = frozenset()
    if data is not None:
        if not isinstance(data, dict):
            raise EventError("fields", "must be an object of personal-data fields")
        for key, value in data.items():
            if value is not None and not isinstance(value, str | int | float | bool):
                raise EventError(f"fields.{key}", "must be a string, number or boolean")
        names = frozenset(k for k, v in data.items() if v is not None and v != "")
    return Event(**base, action=action, role=intern(role) if role else None, fields=names)


def _order(obj: Mapping[str, Any], base: dict[str, Any]) -> Event:
    action = _choice(obj, "action", ORDER_ACTIONS)
    order_id = _text(obj, "order_id")
    amount = obj.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float)):
        raise EventError("amount", "must be a number")
    currency = obj.get("currency")
    if currency is not None and (not isinstance(currency, str) or len(currency) != 3):
        raise EventError("currency", "must be a three-letter ISO 4217 code")
    names = frozenset(["order_id", *(n for n in _ORDER_OPTIONAL if obj.get(n) is not None)])
    return Event(**base, action=action, order_id=order_id, fields=names)


def _click(obj: Mapping[str, Any], base: dict[str, Any]) -> Event:
    for name in _CLICK_FIELDS:
        _text(obj, name)
    anonymous_id = _text(obj, "anonymous_id", required=False)
    names = frozenset(_CLICK_FIELDS + (("anonymous_id",) if anonymous_id else ()))
    return Event(**base, fields=names)


def _privacy_request(obj: Mapping[str, Any], base: dict[str, Any]) -> Event:
    request_id = _text(obj, "request_id")
    right = _choice(obj, "right", RIGHTS)
    raw = obj.get("purposes")
    purposes: tuple[str, ...] | None = None
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
            raise EventError("purposes", "must be a list of purpose names")
        purposes = tuple(raw)
    return Event(**base, request_id=request_id, right=right, purposes=purposes)


EXAMPLE_EVENTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "customer": {
        "event_id": "c-1001",
        "type": "customer",
        "controller": "inrego",
        "subject_id": "cust-4711",
        "occurred_at": "2026-03-02T09:00:00+01:00",
        "action": "created",
        "role": "customer",
        "fields": {"name": "Anna Andersson", "email": "anna@example.com", "phone": "+4670000000"},
    },
    "order": {
        "event_id": "o-2001",
        "type": "order",
        "controller": "inrego",
        "subject_id": "cust-4711",
        "occurred_at": "2026-03-05T14:30:00+01:00",
        "action": "placed",
        "order_id": "ORD-77",
        "amount": 4990.0,
        "currency": "SEK",
    },
    "click": {
        "event_id": "k-3001",
        "type": "click",
        "controller": "inrego",
        "subject_id": "cust-4711",
        "occurred_at": "2026-03-05T14:25:00+01:00",
        "url": "https://example.com/laptops",
        "ip": "192.0.2.1",
        "user_agent": "Mozilla/5.0",
    },
    "consent": {
        "event_id": "n-4001",
        "type": "consent",
        "controller": "inrego",
        "subject_id": "cust-4711",
        "occurred_at": "2026-03-06T08:00:00+01:00",
        "purpose": "direct_marketing",
        "action": "withdraw",
        "channel": "email",
    },
    "privacy_request": {
        "event_id": "r-5001",
        "type": "privacy_request",
        "controller": "inrego",
        "subject_id": "cust-4711",
        "occurred_at": "2026-03-10T10:00:00+01:00",
        "request_id": "REQ-42",
        "right": "erasure",
    },
}
"""One valid event of each type (`privacy-pipeline schema TYPE` prints it). Made-up
values: example.com (RFC 2606) and 192.0.2.1 (RFC 5737) are reserved for documentation."""
