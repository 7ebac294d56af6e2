"""The consent ledger: append-only; the latest entry per purpose wins."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from privacy_pipeline.processors.consent import EMPTY_LEDGER, ConsentEntry, ConsentLedger

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def entry(purpose: str, action: str, minutes: int, event_id: str = "") -> ConsentEntry:
    return ConsentEntry(
        purpose, action, "email", T0 + timedelta(minutes=minutes), event_id or f"e{minutes}"
    )


def test_empty_ledger_knows_nothing() -> None:
    assert len(EMPTY_LEDGER) == 0
    assert EMPTY_LEDGER.status("direct_marketing") is None
    assert not EMPTY_LEDGER.objected("direct_marketing")


def test_append_returns_a_new_ledger_and_never_rewrites_the_old() -> None:
    first = EMPTY_LEDGER.append(entry("direct_marketing", "grant", 0))
    second = first.append(entry("direct_marketing", "withdraw", 1))
    assert len(EMPTY_LEDGER) == 0
    assert len(first) == 1
    assert len(second) == 2
    assert first.status("direct_marketing") == "granted"
    assert second.status("direct_marketing") == "withdrawn"
    assert second.entries[0] == first.entries[0]
    assert [e.action for e in second.entries] == ["grant", "withdraw"]


def test_ledger_and_entries_are_immutable() -> None:
    ledger = EMPTY_LEDGER.append(entry("direct_marketing", "grant", 0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ledger.entries = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ledger.entries[0].action = "withdraw"  # type: ignore[misc]
    assert isinstance(ledger.entries, tuple)


@pytest.mark.parametrize(
    ("actions", "status"),
    [
        (["grant"], "granted"),
        (["withdraw"], "withdrawn"),
        (["object"], "objected"),
        (["grant", "withdraw"], "withdrawn"),
        (["withdraw", "grant"], "granted"),
        (["grant", "object", "grant"], "granted"),
        (["object", "withdraw"], "withdrawn"),
        (["grant", "withdraw", "grant", "object"], "objected"),
    ],
)
def test_latest_entry_per_purpose_wins(actions: list[str], status: str) -> None:
    ledger = ConsentLedger()
    for i, action in enumerate(actions):
        ledger = ledger.append(entry("direct_marketing", action, i))
    assert ledger.status("direct_marketing") == status


def test_purposes_are_independent() -> None:
    ledger = (
        EMPTY_LEDGER.append(entry("direct_marketing", "grant", 0))
        .append(entry("analytics", "object", 1))
        .append(entry("surveys", "withdraw", 2))
    )
    assert ledger.status("direct_marketing") == "granted"
    assert ledger.status("analytics") == "objected"
    assert ledger.status("surveys") == "withdrawn"
    assert ledger.status("personalization") is None


def test_objection_stays_in_force_until_a_later_grant() -> None:
    ledger = EMPTY_LEDGER.append(entry("direct_marketing", "object", 0))
    assert ledger.objected("direct_marketing")
    ledger = ledger.append(entry("analytics", "grant", 1))  # another purpose: no effect
    assert ledger.objected("direct_marketing")
    ledger = ledger.append(entry("direct_marketing", "withdraw", 2))
    assert not ledger.objected("direct_marketing")  # now withdrawn, not objected
    ledger = ledger.append(entry("direct_marketing", "object", 3))
    assert ledger.objected("direct_marketing")
    ledger = ledger.append(entry("direct_marketing", "grant", 4))
    assert not ledger.objected("direct_marketing")
    assert ledger.status("direct_marketing") == "granted"


def test_order_is_the_order_of_appending_not_of_timestamps() -> None:
    # Entries take effect in the order they were applied; an older timestamp appended later
    # still wins (the subject log is ordered per person).
    ledger = EMPTY_LEDGER.append(entry("direct_marketing", "grant", 10)).append(
        entry("direct_marketing", "withdraw", 5)
    )
    assert ledger.status("direct_marketing") == "withdrawn"


def test_entry_keeps_channel_and_event_id() -> None:
    e = ConsentEntry("direct_marketing", "object", "request", T0, "r-1")
    ledger = EMPTY_LEDGER.append(e)
    assert ledger.entries == (e,)
    assert (e.channel, e.event_id, e.at) == ("request", "r-1", T0)
