"""Offline replay: a simulated clock that only moves forward, timers, rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import format_instant, parse_instant
from privacy_pipeline.processors.policy import load_packs
from privacy_pipeline.processors.replay import Replay, encode_decision

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PACKS = load_packs(POLICIES)


def line(
    event_id: str, etype: str, at: str, subject: str = "s1", controller: str = "inrego", **kw: Any
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
        obj.update(url="https://x/", ip="192.0.2.1", user_agent="ua")
    if etype == "order":
        obj.setdefault("order_id", "o1")
    return json.dumps(obj)


def new() -> Replay:
    return Replay(PolicyEnforcer(PACKS))


def run(lines: list[str], until: str | None = None) -> list[dict[str, Any]]:
    return list(new().run(lines, None if until is None else parse_instant(until)))


def kinds(decisions: list[dict[str, Any]]) -> list[str]:
    return [d["decision"] for d in decisions]


# -- the clock -----------------------------------------------------------------------------


def test_clock_starts_at_the_first_event_and_moves_forward() -> None:
    replay = new()
    assert replay.clock is None
    replay.process_line(1, line("1", "click", "2024-01-10T09:00:00+01:00"))
    assert format_instant(replay.clock) == "2024-01-10T08:00:00Z"  # type: ignore[arg-type]
    replay.process_line(2, line("2", "click", "2024-02-10T09:00:00Z"))
    assert format_instant(replay.clock) == "2024-02-10T09:00:00Z"  # type: ignore[arg-type]


def test_out_of_order_event_does_not_move_the_clock_back() -> None:
    replay = new()
    replay.process_line(1, line("1", "click", "2024-02-10T09:00:00Z"))
    decisions = replay.process_line(2, line("2", "click", "2024-01-01T09:00:00Z", subject="s2"))
    assert format_instant(replay.clock) == "2024-02-10T09:00:00Z"  # type: ignore[arg-type]
    # The late record is still tagged from its own time.
    assert decisions[0]["purposes"][0]["expires_at"] == "2026-01-01T09:00:00Z"
    replay.advance(parse_instant("2020-01-01T00:00:00Z"))
    assert format_instant(replay.clock) == "2024-02-10T09:00:00Z"  # type: ignore[arg-type]


def test_a_late_record_already_past_its_retention_is_erased_at_once() -> None:
    replay = new()
    replay.process_line(1, line("1", "click", "2027-01-01T00:00:00Z"))
    decisions = replay.process_line(2, line("2", "click", "2024-01-01T09:00:00Z", subject="s2"))
    assert kinds(decisions) == ["tag", "erasure", "erasure"]
    assert {d["issued_at"] for d in decisions[1:]} == {"2027-01-01T00:00:00Z"}
    assert {d["subject_id"] for d in decisions} == {"s2"}


def test_timers_fire_before_the_event_at_their_time() -> None:
    decisions = run(
        [
            line("1", "click", "2024-01-10T09:00:00Z", subject="a"),
            line(
                "2", "click", "2026-01-10T09:00:00Z", subject="b"
            ),  # exactly when a's click expires
        ]
    )
    assert [(d["decision"], d["subject_id"]) for d in decisions] == [
        ("tag", "a"),
        ("erasure", "a"),
        ("erasure", "a"),
        ("tag", "b"),
    ]
    assert {d["issued_at"] for d in decisions[1:3]} == {"2026-01-10T09:00:00Z"}


def test_timers_of_several_subjects_fire_in_due_order() -> None:
    decisions = run(
        [
            line("1", "click", "2024-01-12T09:00:00Z", subject="late"),
            line("2", "click", "2024-01-10T09:00:00Z", subject="early"),
            line("3", "click", "2024-01-11T09:00:00Z", subject="middle"),
        ],
        until="2030-01-01T00:00:00Z",
    )
    erasures = [d for d in decisions if d["decision"] == "erasure"]
    assert [d["subject_id"] for d in erasures[::2]] == ["early", "middle", "late"]
    assert {d["issued_at"] for d in erasures} == {"2030-01-01T00:00:00Z"}


def test_until_defaults_to_the_last_event_time() -> None:
    lines = [line("1", "click", "2024-01-10T09:00:00Z"), line("2", "click", "2024-06-01T09:00:00Z")]
    replay = new()
    assert kinds(list(replay.run(lines))) == ["tag", "tag"]
    assert format_instant(replay.clock) == "2024-06-01T09:00:00Z"  # type: ignore[arg-type]
    assert replay.pending_timers() == 1


def test_until_fires_timers_due_by_then() -> None:
    lines = [line("1", "click", "2024-01-10T09:00:00Z"), line("2", "click", "2024-06-01T09:00:00Z")]
    decisions = run(lines, until="2026-01-10T09:00:00Z")
    assert kinds(decisions) == ["tag", "tag", "erasure", "erasure"]
    assert decisions[2]["recorded_before"] == "2024-01-10T09:00:00Z"
    replay = new()
    decisions = list(replay.run(lines, parse_instant("2026-06-01T09:00:00Z")))
    assert kinds(decisions) == ["tag", "tag", "erasure", "erasure", "erasure", "erasure"]
    assert replay.pending_timers() == 0
    assert replay.states["inrego:s1"].holds == {}


def test_until_earlier_than_the_last_event_does_not_move_the_clock_back() -> None:
    replay = new()
    list(
        replay.run(
            [line("1", "click", "2024-06-01T09:00:00Z")], parse_instant("2020-01-01T00:00:00Z")
        )
    )
    assert format_instant(replay.clock) == "2024-06-01T09:00:00Z"  # type: ignore[arg-type]


def test_superseded_timer_does_not_fire_early() -> None:
    # Rejoin's contract data slides with activity: the first schedule is superseded.
    lines = [
        line("1", "customer", "2024-01-10T09:00:00Z", controller="rejoin", action="created"),
        line("2", "order", "2025-01-10T09:00:00Z", controller="rejoin", action="placed"),
    ]
    assert kinds(run(lines, until="2027-06-01T00:00:00Z")) == ["tag", "tag"]
    fired = [d for d in run(lines, until="2028-01-10T09:00:00Z") if d["decision"] == "erasure"]
    assert {d["rule"] for d in fired} == {
        "rejoin.contract.customers",
        "rejoin.personalization.behaviour",
        "rejoin.direct_marketing.customers",
    }


def test_redelivered_line_gives_no_decisions() -> None:
    event = line("1", "click", "2024-01-10T09:00:00Z")
    assert kinds(run([event, event])) == ["tag"]


# -- rejects -------------------------------------------------------------------------------


def reject(number: int, event_id: str | None, error: str) -> dict[str, Any]:
    return {"decision": "reject", "line": number, "event_id": event_id, "error": error}


def test_bad_json_is_rejected_with_its_line_number() -> None:
    decisions = run(
        [
            line("1", "click", "2024-01-10T09:00:00Z"),
            "{not json",
            line("3", "click", "2024-01-10T10:00:00Z"),
        ]
    )
    assert decisions[1] == reject(
        2, None, "not valid JSON: Expecting property name enclosed in double quotes"
    )
    assert kinds(decisions) == ["tag", "reject", "tag"]


def test_unknown_type_is_rejected() -> None:
    bad = json.dumps(
        {
            "event_id": "x1",
            "type": "visit",
            "controller": "inrego",
            "subject_id": "s1",
            "occurred_at": "2024-01-10T09:00:00Z",
        }
    )
    assert run([bad]) == [
        reject(
            1,
            "x1",
            "field 'type': unknown type; expected one of click, "
            "consent, customer, order, privacy_request",
        )
    ]


def test_missing_field_is_rejected() -> None:
    obj = json.loads(line("x2", "click", "2024-01-10T09:00:00Z"))
    del obj["ip"]
    assert run([json.dumps(obj)]) == [reject(1, "x2", "field 'ip': is required")]


def test_unknown_controller_is_rejected() -> None:
    bad = line("x3", "click", "2024-01-10T09:00:00Z", controller="acme")
    assert run([bad]) == [
        reject(1, "x3", "field 'controller': unknown controller (no policy pack)")
    ]


def test_non_object_and_non_string_event_id() -> None:
    assert run(["[1, 2]"]) == [reject(1, None, "an event must be a JSON object")]
    obj = json.loads(line("x", "click", "2024-01-10T09:00:00Z"))
    obj["event_id"] = 7
    assert run([json.dumps(obj)]) == [
        reject(1, None, "field 'event_id': must be a non-empty string")
    ]


def test_rejects_do_not_move_the_clock() -> None:
    replay = new()
    bad = line("x", "click", "2030-01-10T09:00:00Z", controller="acme")
    list(replay.run([bad]))
    assert replay.clock is None
    assert replay.pending_timers() == 0


def test_processing_continues_after_every_kind_of_bad_line() -> None:
    good = [line(f"g{i}", "click", f"2024-01-1{i}T09:00:00Z") for i in range(5)]
    missing = json.loads(line("m", "order", "2024-01-10T09:00:00Z", action="placed"))
    del missing["order_id"]
    lines = [
        good[0],
        "{oops",
        good[1],
        json.dumps({"event_id": "t", "type": "visit"}),
        good[2],
        json.dumps(missing),
        good[3],
        line("c", "click", "2024-01-13T09:00:00Z", controller="acme"),
        "",
        good[4],
    ]
    decisions = run(lines)
    assert [(d["decision"], d.get("line")) for d in decisions] == [
        ("tag", None),
        ("reject", 2),
        ("tag", None),
        ("reject", 4),
        ("tag", None),
        ("reject", 6),
        ("tag", None),
        ("reject", 8),
        ("tag", None),  # the blank line 9 is skipped, but still counted
    ]
    assert [d["error"] for d in decisions if d["decision"] == "reject"] == [
        "not valid JSON: Expecting property name enclosed in double quotes",
        "field 'type': unknown type; expected one of click, consent, customer, order, "
        "privacy_request",
        "field 'order_id': is required",
        "field 'controller': unknown controller (no policy pack)",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        # A JSON list where a string is expected: TypeError (unhashable) today.
        '{"event_id":"u1","type":"consent","controller":"rego","subject_id":"s",'
        '"occurred_at":"2024-01-01T00:00:00Z","purpose":"direct_marketing",'
        '"channel":"email","action":["grant"]}',
        '{"event_id":"u2","type":["click"],"controller":"rego","subject_id":"s",'
        '"occurred_at":"2024-01-01T00:00:00Z"}',
        # An instant whose UTC form is out of range: OverflowError today.
        '{"event_id":"u3","type":"click","controller":"rego","subject_id":"s",'
        '"occurred_at":"9999-12-31T23:59:59-01:00","url":"u","ip":"i","user_agent":"a"}',
    ],
)
def test_malformed_values_are_rejected_and_the_run_goes_on(bad: str) -> None:
    decisions = run([bad, line("g", "click", "2024-01-10T09:00:00Z")])
    assert kinds(decisions) == ["reject", "tag"]
    assert decisions[0]["line"] == 1


def test_an_event_whose_retention_ends_beyond_year_9999_does_not_stop_the_run() -> None:
    # An invoice dated 9998 is valid ISO 8601, but 7 years after its calendar year do not
    # fit in a datetime: ValueError escapes the enforcer today. Bad input never stops the
    # stream: the line must become a decision (a reject) and the next line be processed.
    far = line("f", "order", "9998-06-01T00:00:00Z", action="invoiced")
    decisions = run(
        [
            line("g", "click", "2024-01-10T09:00:00Z"),
            far,
            line("h", "click", "2024-01-11T09:00:00Z", subject="s2"),
        ]
    )
    assert decisions[0]["decision"] == "tag"
    assert decisions[-1]["decision"] == "tag"
    assert decisions[-1]["event_id"] == "h"


# -- output --------------------------------------------------------------------------------


def test_encode_decision_is_compact_utf8_in_build_order() -> None:
    decision = {"decision": "reject", "line": 3, "event_id": "å", "error": "x"}
    assert encode_decision(decision) == '{"decision":"reject","line":3,"event_id":"å","error":"x"}'


def test_same_input_gives_the_same_output() -> None:
    lines = [
        line("1", "customer", "2024-01-10T09:00:00Z", action="created", fields={"email": "a@b.se"}),
        line("2", "order", "2024-01-11T09:00:00Z", action="invoiced"),
        line("3", "privacy_request", "2024-02-01T09:00:00Z", request_id="r", right="erasure"),
    ]
    first = [encode_decision(d) for d in run(lines, until="2035-01-01T00:00:00Z")]
    second = [encode_decision(d) for d in run(lines, until="2035-01-01T00:00:00Z")]
    assert first == second
    assert len(first) > 5
