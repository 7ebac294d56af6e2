"""Unit tests of privacy_pipeline.demo.traffic: the seeded traffic generator."""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from privacy_pipeline.demo.traffic import CONTROLLERS, EVENT_TYPES, TrafficModel, lines, main
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import EventError, parse_event
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.processors.replay import Replay

STOCKHOLM = ZoneInfo("Europe/Stockholm")
START = datetime(2024, 1, 1, tzinfo=STOCKHOLM)
SPAN = timedelta(days=730)
DOC_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def _model(seed: int = 7, subjects: int = 500, **kw: Any) -> TrafficModel:
    return TrafficModel(seed, subjects, START, SPAN, **kw)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(_model().events(5000))


@pytest.fixture(scope="module")
def replay_factory() -> Any:
    enforcer = PolicyEnforcer(load_packs(packaged_policies()))
    return lambda: Replay(enforcer)


def test_same_seed_same_events() -> None:
    a = list(_model(seed=3).events(2000))
    b = list(_model(seed=3).events(2000))
    assert a == b
    assert list(_model(seed=3).lines(2000)) == list(_model(seed=3).lines(2000))
    assert [json.loads(x) for x in _model(seed=3).lines(2000)] == a


def test_a_model_replays_its_stream_on_every_call() -> None:
    model = _model(seed=5, bad_ratio=0.1)
    assert list(model.events(1000)) == list(model.events(1000))


def test_other_seed_other_events() -> None:
    assert list(_model(seed=1).events(200)) != list(_model(seed=2).events(200))


def test_every_event_is_valid(events: list[dict[str, Any]]) -> None:
    assert len(events) == 5000
    for obj in events:
        event = parse_event(obj)
        assert event.controller in CONTROLLERS
    assert len({e["event_id"] for e in events}) == len(events)


def test_lines_are_compact_json_of_valid_events() -> None:
    out = list(_model().lines(1000))
    assert len(out) == 1000
    for line in out:
        assert "\n" not in line
        parse_event(json.loads(line))


def test_all_controllers_and_types_present(events: list[dict[str, Any]]) -> None:
    assert set(Counter(e["controller"] for e in events)) == set(CONTROLLERS)
    assert set(Counter(e["type"] for e in events)) == set(EVENT_TYPES)


def test_life_cycle_actions_present(events: list[dict[str, Any]]) -> None:
    seen = Counter((e["type"], e.get("action") or e.get("right")) for e in events)
    for key in [
        ("customer", "created"),
        ("customer", "updated"),
        ("customer", "contacted"),
        ("customer", "relationship_ended"),
        ("order", "placed"),
        ("order", "invoiced"),
        ("order", "delivered"),
        ("consent", "grant"),
        ("consent", "withdraw"),
        ("consent", "object"),
    ]:
        assert seen[key] > 0, key
    rights = {e["right"] for e in events if e["type"] == "privacy_request"}
    assert {"access", "erasure"} <= rights


def test_roles_where_the_packs_have_rules_for_them(events: list[dict[str, Any]]) -> None:
    roles: dict[str, set[str]] = {}
    for e in events:
        if e["type"] == "customer":
            roles.setdefault(e["controller"], set()).add(e.get("role", "customer"))
    assert "prospect" in roles["iret"]
    assert "contact_person" in roles["inrego"]
    assert "supplier" in roles["unnamed004"]
    assert all(r == {"customer"} for c, r in roles.items() if c in ("rego", "rejoin"))


def test_subjects_created_before_their_other_records(events: list[dict[str, Any]]) -> None:
    created: set[tuple[str, str]] = set()
    for e in events:
        key = (e["controller"], e["subject_id"])
        if e["type"] == "customer" and e["action"] == "created":
            created.add(key)
        elif e["type"] in ("order", "customer") and not e["subject_id"].startswith("visitor-"):
            assert key in created, e


def test_order_is_non_decreasing(events: list[dict[str, Any]]) -> None:
    instants = [parse_instant(e["occurred_at"]) for e in events]
    assert instants == sorted(instants)
    assert instants[0] >= START.astimezone(UTC)
    assert instants[-1] <= (START + SPAN).astimezone(UTC) + timedelta(seconds=1)


def test_order_is_non_decreasing_when_events_are_dense() -> None:
    # Many events a second, some producers writing milliseconds and some not.
    model = TrafficModel(11, 200, START, timedelta(minutes=2))
    instants = [parse_instant(e["occurred_at"]) for e in model.events(3000)]
    assert instants == sorted(instants)


def test_timestamps_stockholm_offsets_or_z(events: list[dict[str, Any]]) -> None:
    zones = Counter(re.sub(r"^.*?(Z|[+-]\d\d:\d\d)$", r"\1", e["occurred_at"]) for e in events)
    assert set(zones) == {"Z", "+01:00", "+02:00"}
    for e in events:
        text = e["occurred_at"]
        if not text.endswith("Z"):
            local = datetime.fromisoformat(text)
            assert local.utcoffset() == local.astimezone(STOCKHOLM).utcoffset()


def test_personal_data_is_fake(events: list[dict[str, Any]]) -> None:
    for e in events:
        fields = e.get("fields") or {}
        if "email" in fields:
            assert re.fullmatch(r"[a-z.]+\d*@([a-z]+\.)?example\.(com|se)", fields["email"])
        if "personnummer" in fields:
            assert re.fullmatch(r"19\d{6}-\d{4}", fields["personnummer"])
            assert not _luhn_ok(fields["personnummer"])  # never a real person's number
        if "phone" in fields:
            assert fields["phone"].startswith("+46 70-174 06 ")
        if e["type"] == "click":
            assert any(ipaddress.ip_address(e["ip"]) in net for net in DOC_NETS)
            assert ".example/" in e["url"]


def _luhn_ok(pnr: str) -> bool:
    digits = pnr.replace("-", "")[2:]
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return total % 10 == 0


def test_created_records_carry_the_person(events: list[dict[str, Any]]) -> None:
    created = [e for e in events if e["type"] == "customer" and e["action"] == "created"]
    assert created
    for e in created:
        assert {"name", "email"} <= set(e["fields"])
    customers = [e for e in created if e["role"] == "customer"]
    assert any("personnummer" in e["fields"] for e in customers)
    assert all(e["fields"]["customer_type"] in ("private", "business") for e in customers)


def test_clean_traffic_evaluates_without_rejects(replay_factory: Any) -> None:
    counts = Counter(d["decision"] for d in replay_factory().run(_model().lines(5000)))
    assert counts["reject"] == 0
    assert counts["tag"] > 0 and counts["erasure"] > 0 and counts["extract"] > 0


def test_bad_ratio_produces_rejects_in_evaluate(replay_factory: Any) -> None:
    model = _model(bad_ratio=0.1)
    text = list(model.lines(3000))
    expected = sum(1 for line in text if not _valid(line))
    assert 150 < expected < 450  # about 10 %
    rejects = [d for d in replay_factory().run(text) if d["decision"] == "reject"]
    assert len(rejects) == expected
    errors = " | ".join(d["error"] for d in rejects)
    for part in ("not valid JSON", "unknown type", "unknown controller", "occurred_at"):
        assert part in errors, part
    assert "is required" in errors


def test_bad_events_as_dicts_are_dicts_and_some_invalid() -> None:
    bad = 0
    for obj in _model(bad_ratio=0.2).events(1000):
        assert isinstance(obj, dict)
        try:
            parse_event(obj)
        except EventError:
            bad += 1
        else:
            bad += obj["controller"] not in CONTROLLERS
    assert 100 < bad < 300


def _valid(line: str) -> bool:
    try:
        obj = json.loads(line)
        return parse_event(obj).controller in CONTROLLERS
    except (ValueError, EventError):
        return False


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="timezone"):
        TrafficModel(1, 10, datetime(2024, 1, 1), SPAN)  # noqa: DTZ001
    with pytest.raises(ValueError, match="span"):
        TrafficModel(1, 10, START, timedelta(0))
    with pytest.raises(ValueError, match="subjects"):
        TrafficModel(1, 0, START, SPAN)
    with pytest.raises(ValueError, match="bad_ratio"):
        TrafficModel(1, 10, START, SPAN, bad_ratio=1.5)


def test_module_lines_and_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(list(lines(10, seed=1, subjects=5))) == 10
    assert main(["--events", "25", "--subjects", "5", "--seed", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 25
    for line in out:
        parse_event(json.loads(line))
