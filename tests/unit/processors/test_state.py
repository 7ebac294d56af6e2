"""Subject state: JSON round trip for tables and snapshots, size, no personal data."""

from __future__ import annotations

import copy
import json
import marshal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.replay import Replay, encode_decision
from privacy_pipeline.processors.state import SubjectState

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)

PERSONAL = ["Anna Andersson", "anna@example.se", "19900101-1234", "192.0.2.44", "+46701234567"]
FIELDS = {
    "name": "Anna Andersson",
    "email": "anna@example.se",
    "personnummer": "19900101-1234",
    "phone": "+46701234567",
}


def line(
    event_id: str, etype: str, at: str, controller: str, subject: str = "s1", **kw: Any
) -> str:
    obj: dict[str, Any] = {
        "event_id": event_id,
        "type": etype,
        "controller": controller,
        "subject_id": subject,
        "occurred_at": at,
        **kw,
    }
    if etype == "click":
        obj.update(url="https://x/", ip="192.0.2.44", user_agent="ua")
    if etype == "order":
        obj.setdefault("order_id", f"o-{event_id}")
    return json.dumps(obj)


def rich_history() -> list[str]:
    """Every kind of fact a state keeps, over the five controllers."""
    out = []
    for c in ("rego", "inrego", "rejoin", "iret", "unnamed004"):
        out += [
            line(
                f"{c}1",
                "consent",
                "2024-01-09T09:00:00Z",
                c,
                purpose="direct_marketing",
                action="grant",
                channel="web",
            ),
            line(f"{c}2", "customer", "2024-01-10T09:00:00Z", c, action="created", fields=FIELDS),
            line(
                f"{c}3",
                "order",
                "2024-01-11T09:00:00Z",
                c,
                action="placed",
                amount=10,
                currency="SEK",
            ),
            line(f"{c}4", "order", "2024-01-12T09:00:00Z", c, action="invoiced"),
            line(f"{c}5", "click", "2024-01-13T09:00:00+01:00", c),
            line(f"{c}6", "click", "2024-01-14T09:00:00.250Z", c),
            line(f"{c}7", "customer", "2024-02-01T09:00:00Z", c, action="contacted"),
            line(
                f"{c}8",
                "consent",
                "2024-02-02T09:00:00Z",
                c,
                purpose="analytics",
                action="object",
                channel="email",
            ),
            line(
                f"{c}9",
                "privacy_request",
                "2024-02-03T09:00:00Z",
                c,
                request_id="r1",
                right="restriction",
                purposes=["personalization"],
            ),
            line(f"{c}10", "customer", "2024-02-04T09:00:00Z", c, action="relationship_ended"),
            line(
                f"{c}11",
                "privacy_request",
                "2024-02-05T09:00:00Z",
                c,
                request_id="r2",
                right="erasure",
                purposes=["contract"],
            ),
            line(
                f"{c}12",
                "customer",
                "2024-02-06T09:00:00Z",
                c,
                subject="s2",
                action="created",
                role="contact_person",
                fields=FIELDS,
            ),
            line(
                f"{c}13",
                "customer",
                "2024-02-07T09:00:00Z",
                c,
                subject="s3",
                action="created",
                role="prospect",
                fields=FIELDS,
            ),
        ]
    return out


def tail() -> list[str]:
    out = []
    for c in ("rego", "inrego", "rejoin", "iret", "unnamed004"):
        out += [
            line(f"{c}t1", "click", "2024-03-01T09:00:00Z", c),
            line(
                f"{c}t2",
                "consent",
                "2024-03-02T09:00:00Z",
                c,
                purpose="direct_marketing",
                action="withdraw",
                channel="email",
            ),
            line(f"{c}t3", "customer", "2024-03-03T09:00:00Z", c, action="updated", fields=FIELDS),
            line(
                f"{c}2", "customer", "2024-03-04T09:00:00Z", c, action="created", fields=FIELDS
            ),  # a redelivery: same event id as before
            line(
                f"{c}t5",
                "privacy_request",
                "2024-03-05T09:00:00Z",
                c,
                request_id="r3",
                right="access",
            ),
        ]
    return out


def build() -> Replay:
    replay = Replay(PolicyEnforcer(PACKS))
    list(replay.run(rich_history()))
    return replay


def round_trip(state: SubjectState) -> SubjectState:
    return SubjectState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_round_trip_after_a_rich_scenario_is_exact() -> None:
    replay = build()
    assert len(replay.states) == 15
    for key, state in replay.states.items():
        data = state.to_dict()
        restored = round_trip(state)
        assert restored.to_dict() == data, key
        assert restored.next_due() == state.next_due(), key
        assert restored.role == state.role
        assert restored.ledger == state.ledger
        assert restored.restricted == state.restricted
        assert restored.sources == state.sources
        assert restored.recent == state.recent


def test_the_scenario_exercises_every_part_of_the_state() -> None:
    replay = build()
    states = list(replay.states.values())
    assert any(len(s.ledger) >= 2 for s in states)
    assert any(s.restricted for s in states)
    assert any(h.restricted for s in states for h in s.holds.values())
    assert any(h.ended for s in states for h in s.holds.values())
    assert any(h.pending for s in states for h in s.holds.values())
    assert any(h.anchor is not None and not h.ended for s in states for h in s.holds.values())
    assert {s.role for s in states} == {"customer", "contact_person", "prospect"}


@pytest.mark.parametrize("form", ["json", "packed"])
def test_restored_state_decides_exactly_like_the_original(form: str) -> None:
    again = round_trip if form == "json" else packed_round_trip
    original = build()
    restored = build()
    restored.restore({k: again(v) for k, v in restored.states.items()})
    until = parse_instant("2040-01-01T00:00:00Z")
    first = [encode_decision(d) for d in original.run(tail(), until)]
    second = [encode_decision(d) for d in restored.run(tail(), until)]
    assert first == second
    assert any('"decision":"erasure"' in d for d in first)
    assert not any('"event_id":"rego2"' in d for d in first)  # the redelivery was caught


def test_round_trip_of_an_empty_state() -> None:
    state = SubjectState()
    assert round_trip(state).to_dict() == state.to_dict()


def test_from_dict_does_not_share_mutable_parts_with_its_input() -> None:
    data = build().states["inrego:s1"].to_dict()
    frozen = copy.deepcopy(data)
    restored = SubjectState.from_dict(data)
    restored.seen("another-event")
    for hold in restored.holds.values():
        hold.restricted = not hold.restricted
    assert data == frozen


def test_round_trip_keeps_sub_millisecond_instants() -> None:
    # Event instants may carry microseconds; a snapshot must restore the same timers, or a
    # restored worker would fire them (erase) up to a millisecond early.
    replay = Replay(PolicyEnforcer(PACKS))
    list(replay.run([line("c1", "click", "2024-03-02T08:00:00.123456Z", "inrego")]))
    state = replay.states["inrego:s1"]
    restored = round_trip(state)
    assert restored.next_due() == state.next_due()
    for rid, hold in state.holds.items():
        again = restored.holds[rid]
        assert (again.last, again.anchor, again.due) == (hold.last, hold.anchor, hold.due)


# -- size and content ----------------------------------------------------------------------


def size(state: SubjectState) -> int:
    return len(json.dumps(state.to_dict(), separators=(",", ":")).encode())


def test_a_typical_customer_serialises_small() -> None:
    replay = build()
    sizes = {key: size(state) for key, state in replay.states.items()}
    assert max(sizes.values()) <= 2048, sizes
    assert sizes["inrego:s2"] <= 1024, sizes


def test_a_daily_visitor_grows_by_a_bounded_amount_per_record() -> None:
    replay = Replay(PolicyEnforcer(PACKS))
    start = datetime(2024, 1, 1, 9, tzinfo=UTC)
    lines = [
        line(f"c{i}", "click", (start + timedelta(days=i)).isoformat(), "inrego")
        for i in range(365)
    ]
    list(replay.run(lines))
    state = replay.states["inrego:s1"]
    # 365 visits, all still within 24 months: each is kept and costs a few dozen bytes.
    assert size(state) <= 365 * 64 + 2048


def test_serialised_state_holds_no_personal_data() -> None:
    replay = build()
    for state in replay.states.values():
        text = json.dumps(state.to_dict(), ensure_ascii=False)
        for value in PERSONAL:
            assert value not in text


def packed_round_trip(state: SubjectState) -> SubjectState:
    # As the live changelog carries it: marshal of the packed form.
    return SubjectState.unpack(marshal.loads(marshal.dumps(state.pack(), 2)))  # noqa: S302


def test_packed_round_trip_after_a_rich_scenario_is_exact() -> None:
    for key, state in build().states.items():
        restored = packed_round_trip(state)
        assert restored.to_dict() == state.to_dict(), key
        assert restored.pack() == state.pack(), key
        assert restored.next_due() == state.next_due(), key


def test_packed_form_is_smaller_than_json() -> None:
    for state in build().states.values():
        packed = marshal.dumps(state.pack(), 2)
        assert len(packed) < len(json.dumps(state.to_dict(), separators=(",", ":")))
