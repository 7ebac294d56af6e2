"""The enforce step without a broker: micro-batches in, wire records out, changelog back.

`EnforceCore` must decide exactly what `Replay` (the engine behind `evaluate`) decides for
the same events in the same order; ticks stand in for `Replay.advance`. Outputs go to a fake
that collects `(topic, key, value)`; values are decoded with the project's Avro serde.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.replay import Replay
from privacy_pipeline.processors.tracker import Tracking
from privacy_pipeline.streams.enforce import CLOCK_KEY, OFFSET_KEY, EnforceCore, decode_changelog
from privacy_pipeline.streams.metrics import PipelineMetrics
from privacy_pipeline.streams.records import subject_partition, subject_ref
from privacy_pipeline.streams.serde import AvroSerde, event_to_avro
from privacy_pipeline.streams.testing import FakeOutputs
from tests.conformance.scenarios import click, consent, customer, order, packs, request

SERDE = AvroSerde()
WALL = 1_717_000_000.0  # the injected wall clock: 2024-05-29T16:26:40Z
WALL_ISO = "2024-05-29T16:26:40Z"

SOURCE_TOPIC = {
    "customer": "customers",
    "order": "orders",
    "click": "clicks",
    "consent": "consents",
    "privacy_request": "privacy-requests",
}
ANALYTICS_TARGETS = {"web-analytics", "it-service-providers"}

Event = dict[str, Any]
Decision = dict[str, Any]


# -- builders ------------------------------------------------------------------------------


def key_of(event: Mapping[str, Any]) -> str:
    return f"{event['controller']}:{event['subject_id']}"


def item(
    event: Mapping[str, Any],
    source_offset: int,
    *,
    source_partition: int = 0,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A subject-log item for a canonical event (or for an Avro record given as is)."""
    return {
        "key": key_of(event),
        "source_topic": SOURCE_TOPIC[event["type"]],
        "source_partition": source_partition,
        "source_offset": source_offset,
        "produced_at_ms": 1_700_000_000_000 + source_offset,
        "event": event_to_avro(event)[1] if record is None else record,
    }


def tick(partition: int, at: str) -> dict[str, Any]:
    return {
        "key": "",
        "source_topic": "ticker",
        "source_partition": partition,
        "source_offset": -1,
        "produced_at_ms": 1_700_000_000_000,
        "event": {"partition": partition, "at": at, "ticker_id": "t"},
    }


def batch(items: Sequence[dict[str, Any]], batch_id: str = "b") -> bytes:
    return SERDE.encode(
        "SubjectBatch",
        {"batch_id": batch_id, "produced_at_ms": 1_700_000_000_000, "items": list(items)},
    )


def events_batch(events: Iterable[Mapping[str, Any]], first_offset: int = 0) -> bytes:
    return batch([item(e, first_offset + i) for i, e in enumerate(events)])


def new_core(
    outputs: FakeOutputs | None = None,
    partitions: int = 1,
    prefix: str = "",
    states: dict[str, Any] | None = None,
    metrics: PipelineMetrics | None = None,
    tracking: Tracking | None = None,
) -> tuple[EnforceCore, FakeOutputs]:
    out = outputs if outputs is not None else FakeOutputs()
    core = EnforceCore(
        PolicyEnforcer(packs(), tracking),
        SERDE,
        out,
        states={} if states is None else states,
        partitions=partitions,
        prefix=prefix,
        metrics=metrics,
        wall_clock=lambda: WALL,
    )
    return core, out


def replay_decisions(
    steps: Iterable[Mapping[str, Any] | str],
) -> list[Decision]:
    """Replay over events (dicts) and ticks (ISO strings: `advance` to that instant)."""
    replay = Replay(PolicyEnforcer(packs()))
    out: list[Decision] = []
    for number, step in enumerate(steps, start=1):
        if isinstance(step, str):
            out.extend(replay.advance(parse_instant(step)))
        else:
            out.extend(replay.process_line(number, json.dumps(step, ensure_ascii=False)))
    return out


def core_view(sent: Iterable[tuple[str, bytes | None, str, dict[str, Any]]]) -> list[Any]:
    """The decision sequence the outputs carry: tags from tagged-*, the rest from audit."""
    out: list[Any] = []
    for _topic, _key, name, record in sent:
        if name == "TaggedRecord":
            out.append(("tag", record["event_id"], record["purposes"], record["suppressed"]))
        elif name == "AuditRecord":
            out.append(json.loads(record["payload_json"]))
    return out


def replay_view(decisions: Iterable[Decision]) -> list[Any]:
    return [
        ("tag", d["event_id"], d["purposes"], d["suppressed"]) if d["decision"] == "tag" else d
        for d in decisions
    ]


def commands_of(sent: Iterable[tuple[str, bytes | None, str, dict[str, Any]]]) -> list[Decision]:
    return [record for _t, _k, name, record in sent if name == "ErasureCommand"]


def as_command(decision: Decision) -> Decision:
    """The ErasureCommand a Replay erasure decision must become (policy_version aside):
    the first attempt, unsigned (this core has no signer)."""
    out = dict(decision)
    for optional in ("recorded_before", "due_at", "request_id", "signature"):
        out.setdefault(optional, None)
    out.setdefault("attempt", 1)
    return out


def without_version(command: Decision) -> Decision:
    return {k: v for k, v in command.items() if k != "policy_version"}


# -- the scenario: three subjects, two controllers, timers, opt-outs, requests -------------

S1, S2, S3 = "s1", "s2", "s3"
SCENARIO: list[Event] = [
    customer("inrego", S1, "2024-01-10T10:00:00+01:00"),
    order("inrego", S1, "2024-01-11T10:00:00+01:00"),
    order("inrego", S1, "2024-01-12T10:00:00+01:00", "invoiced"),
    click("inrego", S1, "2024-01-13T10:00:00+01:00"),
    click("inrego", S2, "2024-01-15T10:00:00+01:00"),
    consent("rego", S3, "2024-01-20T10:00:00+01:00", action="grant"),
    customer("rego", S3, "2024-01-21T10:00:00+01:00"),
    consent("inrego", S1, "2024-02-01T10:00:00+01:00"),  # objection to direct marketing
    consent("rego", S3, "2024-02-05T10:00:00+01:00", action="withdraw"),
    customer("rego", S3, "2024-02-06T10:00:00+01:00", "updated"),
    request("inrego", S1, "2024-03-01T10:00:00+01:00", "access"),
    customer("inrego", S1, "2024-03-02T10:00:00+01:00", "updated"),
    order("inrego", S1, "2024-01-11T10:00:00+01:00"),  # redelivered (same event_id)
    # Past both analytics expiries: s1's and s2's timers fire before this event.
    click("inrego", S1, "2026-02-01T10:00:00+01:00"),
    order("inrego", S2, "2024-06-01T10:00:00+02:00"),  # late: behind the clock
    request("inrego", S1, "2026-03-01T10:00:00+01:00", "erasure"),
]


def chunks(seq: Sequence[Event], size: int) -> list[list[Event]]:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


def run_batches(core: EnforceCore, groups: Sequence[Sequence[Event]], partition: int = 0) -> None:
    offset = 0
    for n, group in enumerate(groups):
        core.process_batch(partition, events_batch(group, offset), n)
        offset += len(group)


def test_scenario_as_batches_decides_like_replay() -> None:
    expected = replay_decisions(SCENARIO)
    kinds = [d["decision"] for d in expected]
    assert kinds.count("tag") == 10 and kinds.count("extract") == 1  # the scenario is rich
    assert {d["reason"] for d in expected if d["decision"] == "erasure"} == {
        "objection",
        "consent_withdrawn",
        "retention_expired",
        "erasure_request",
    }

    core, out = new_core()
    run_batches(core, chunks(SCENARIO, 4))
    sent = out.take()

    # Same decisions, same order: tags on tagged-*, every other decision on audit.
    assert core_view(sent) == replay_view(expected)
    # Erasure commands: the erasure decisions plus the pack's version, in order.
    commands = commands_of(sent)
    assert [without_version(c) for c in commands] == [
        as_command(d) for d in expected if d["decision"] == "erasure"
    ]
    versions = {(c["controller"], c["policy_version"]) for c in commands}
    assert versions == {("inrego", "inrego@2023-10"), ("rego", "rego@2024-02")}
    # The redelivered order has no second tag.
    tag_ids = [d[1] for d in core_view(sent) if isinstance(d, tuple)]
    assert len(tag_ids) == len(set(tag_ids)) == 10
    assert core.processed == len(SCENARIO)


def test_batch_boundaries_do_not_change_decisions() -> None:
    one, out_one = new_core()
    run_batches(one, [SCENARIO])
    many, out_many = new_core()
    run_batches(many, chunks(SCENARIO, 1))
    assert core_view(out_one.take()) == core_view(out_many.take())


def test_ticks_decide_like_replay_advance() -> None:
    visit = click("inrego", S2, "2024-01-10T10:00:00+01:00")
    steps: list[Any] = [
        customer("inrego", S1, "2024-01-10T10:00:00+01:00"),
        visit,
        "2025-06-01T00:00:00Z",
        order("inrego", S1, "2025-06-02T10:00:00+02:00"),
        "2026-01-10T09:00:00Z",
        "2031-01-01T00:00:00Z",
    ]
    expected = replay_decisions(steps)
    assert any(d.get("reason") == "retention_expired" for d in expected)

    core, out = new_core()
    items = [tick(0, s) if isinstance(s, str) else item(s, i) for i, s in enumerate(steps)]
    core.process_batch(0, batch(items[:3]), 0)
    core.process_batch(0, batch(items[3:]), 1)
    sent = out.take()
    assert core_view(sent) == replay_view(expected)
    assert [without_version(c) for c in commands_of(sent)] == [
        as_command(d) for d in expected if d["decision"] == "erasure"
    ]


# -- routing ---------------------------------------------------------------------------------


def test_tagged_records_are_routed_by_type_with_the_record_embedded() -> None:
    events = [
        customer("inrego", S1, "2024-01-10T10:00:00+01:00"),
        order("inrego", S1, "2024-01-11T10:00:00+01:00"),
        click("inrego", S1, "2024-01-13T10:00:00+01:00", anonymous_id="anon-7"),
    ]
    core, out = new_core(prefix="acme.")
    core.process_batch(0, events_batch(events), 0)
    sent = out.take()
    expected = replay_decisions(events)

    assert [(t, k, name) for t, k, name, _ in sent] == [
        ("acme.tagged-customers", b"inrego:s1", "TaggedRecord"),
        ("acme.tagged-orders", b"inrego:s1", "TaggedRecord"),
        ("acme.tagged-clicks", b"inrego:s1", "TaggedRecord"),
    ]
    for (_t, _k, _n, record), event, decision in zip(sent, events, expected, strict=True):
        assert record == {
            "decision": "tag",
            "event_id": event["event_id"],
            "controller": "inrego",
            "subject_id": S1,
            "type": event["type"],
            "purposes": decision["purposes"],
            "suppressed": decision["suppressed"],
            "policy_version": "inrego@2023-10",
            "record": event_to_avro(event)[1],
        }
    assert sent[2][3]["record"]["anonymous_id"] == "anon-7"
    assert sent[0][3]["record"]["fields"] == event_to_avro(events[0])[1]["fields"]
    assert out.flushes == [3]


def test_erasure_commands_go_to_commands_and_audit_extracts_to_audit() -> None:
    setup = [
        customer("inrego", S1, "2024-01-10T10:00:00+01:00"),
        order("inrego", S1, "2024-01-11T10:00:00+01:00"),
    ]
    access = request("inrego", S1, "2024-02-01T10:00:00+01:00", "access")
    erasure = request("inrego", S1, "2024-03-01T10:00:00+01:00", "erasure")
    expected = replay_decisions([*setup, access, erasure])
    core, out = new_core(prefix="acme.")
    core.process_batch(0, events_batch(setup), 0)
    out.take()

    core.process_batch(0, events_batch([access], 10), 1)
    sent = out.take()
    assert [(t, k, name) for t, k, name, _ in sent] == [("acme.audit", b"inrego:s1", "AuditRecord")]
    audit = sent[0][3]
    extract = json.loads(audit["payload_json"])
    assert extract == expected[2]
    assert extract["decision"] == "extract"
    assert extract["request_id"] == access["request_id"]
    assert extract["right"] == "access"
    assert extract["controller_name"] == "Inrego AB"
    assert audit == {
        "decision": "extract",
        "controller": "inrego",
        "subject_ref": subject_ref("inrego", S1),
        "event_id": None,
        "at": WALL_ISO,
        "payload_json": audit["payload_json"],
    }

    core.process_batch(0, events_batch([erasure], 11), 2)
    sent = out.take()
    want = [d for d in expected[3:] if d["decision"] == "erasure"]
    assert len(want) >= 3 and len(want) == len(expected[3:])
    # Each command: first on erasure-commands, then the same decision on audit.
    assert [(t, name) for t, _k, name, _ in sent] == [
        ("acme.erasure-commands", "ErasureCommand"),
        ("acme.audit", "AuditRecord"),
    ] * len(want)
    assert {k for _t, k, _n, _r in sent} == {b"inrego:s1"}
    for n, decision in enumerate(want):
        command = sent[2 * n][3]
        audit = sent[2 * n + 1][3]
        assert command == {**as_command(decision), "policy_version": "inrego@2023-10"}
        assert command["reason"] == "erasure_request"
        assert json.loads(audit["payload_json"]) == decision
        assert audit["decision"] == "erasure"
        assert audit["subject_ref"] == subject_ref("inrego", S1)
        assert audit["at"] == WALL_ISO
    assert not any(t.startswith(("tagged", "erasure", "audit")) for t, *_ in sent)


def test_consent_and_requests_are_not_tagged() -> None:
    core, out = new_core()
    core.process_batch(
        0,
        events_batch(
            [
                consent("rego", S3, "2024-01-20T10:00:00+01:00", action="grant"),
                request("rego", S3, "2024-01-21T10:00:00+01:00", "access"),
            ]
        ),
        0,
    )
    assert [(t, name) for t, _k, name, _r in out.take()] == [("audit", "AuditRecord")]


# -- time: ticks -------------------------------------------------------------------------------

VISIT = click("inrego", "visitor-1", "2024-01-10T10:00:00+01:00")  # analytics until 2026-01-10T09Z


def test_tick_past_expiry_fires_retention_erasure_at_the_tick_instant() -> None:
    core, out = new_core()
    core.process_batch(0, batch([item(VISIT, 0)]), 0)
    out.take()

    changes = core.process_batch(0, batch([tick(0, "2026-01-10T08:59:59Z")]), 1)
    assert out.take() == []
    assert changes is not None
    assert decode_changelog(changes) == {
        CLOCK_KEY: parse_instant("2026-01-10T08:59:59Z"),
        OFFSET_KEY: 1,
    }

    changes = core.process_batch(0, batch([tick(0, "2026-01-10T09:00:05Z")]), 2)
    sent = out.take()
    commands = commands_of(sent)
    assert {c["target"] for c in commands} == ANALYTICS_TARGETS
    for c in commands:
        assert c["reason"] == "retention_expired"
        assert c["rule"] == "inrego.analytics.web-visits"
        assert c["action"] == "erase"
        assert c["purposes"] == ["analytics"]
        assert c["categories"] == ["technical"]
        assert c["issued_at"] == "2026-01-10T09:00:05Z"  # the tick, not the due instant
        assert c["deadline"] == "2026-01-11T09:00:05Z"
        assert c["recorded_before"] == "2024-01-10T09:00:00Z"
        assert c["subject_id"] == "visitor-1"
        assert c["policy_version"] == "inrego@2023-10"
    assert [t for t, *_ in sent].count("audit") == 2
    assert changes is not None
    state = decode_changelog(changes)
    assert state[CLOCK_KEY] == parse_instant("2026-01-10T09:00:05Z")
    assert state["inrego:visitor-1"].holds == {}
    assert core.timer_count() == 0

    # Nothing fires twice.
    core.process_batch(0, batch([tick(0, "2027-01-01T00:00:00Z")]), 3)
    assert out.take() == []


def test_tick_on_another_partition_does_not_fire_this_partitions_timers() -> None:
    key = key_of(VISIT)
    mine = subject_partition(key, 2)
    other = 1 - mine
    core, out = new_core(partitions=2)
    core.process_batch(mine, batch([item(VISIT, 0)]), 0)
    out.take()

    core.process_batch(other, batch([tick(other, "2026-06-01T00:00:00Z")]), 0)
    assert out.take() == []
    assert core.timer_count() == 1

    core.process_batch(mine, batch([tick(mine, "2026-06-01T00:00:00Z")]), 1)
    commands = commands_of(out.take())
    assert {c["target"] for c in commands} == ANALYTICS_TARGETS
    assert {c["issued_at"] for c in commands} == {"2026-06-01T00:00:00Z"}


def test_a_tick_never_moves_the_clock_back() -> None:
    core, out = new_core()
    core.process_batch(0, batch([item(VISIT, 0)]), 0)
    changes = core.process_batch(0, batch([tick(0, "2020-01-01T00:00:00Z")]), 1)
    assert changes is not None
    assert decode_changelog(changes)[CLOCK_KEY] == parse_instant("2024-01-10T09:00:00Z")


# -- the changelog and recovery --------------------------------------------------------------


def test_changelog_holds_changed_states_clock_and_offset() -> None:
    core, _ = new_core()
    first = core.process_batch(0, events_batch(SCENARIO[:5]), 7)
    assert first is not None
    changes = decode_changelog(first)
    assert set(changes) == {"inrego:s1", "inrego:s2", CLOCK_KEY, OFFSET_KEY}
    assert changes[CLOCK_KEY] == parse_instant("2024-01-15T09:00:00Z")
    assert changes[OFFSET_KEY] == 7
    assert changes["inrego:s1"].to_dict() == core.states["inrego:s1"].to_dict()

    second = core.process_batch(0, events_batch(SCENARIO[5:7], 5), 8)
    assert second is not None
    assert set(decode_changelog(second)) == {"rego:s3", CLOCK_KEY, OFFSET_KEY}


def test_restore_then_later_batch_decides_like_one_core_that_saw_everything() -> None:
    groups = chunks(SCENARIO, 4)
    assert len(groups) == 4
    whole, out_whole = new_core()
    changelog: list[bytes] = []
    offset = 0
    for n, group in enumerate(groups[:3]):
        record = whole.process_batch(0, events_batch(group, offset), n)
        assert record is not None
        changelog.append(record)
        offset += len(group)
    out_whole.take()
    # The last batch: a redelivery, a tick and events past the timers set in earlier batches.
    last = batch(
        [
            item(SCENARIO[1], 99),  # redelivered from the first batch
            tick(0, "2025-06-01T00:00:00Z"),
            *(item(e, 100 + i) for i, e in enumerate(groups[3])),
            tick(0, "2032-01-01T00:00:00Z"),
        ]
    )
    record_whole = whole.process_batch(0, last, 3)
    want = out_whole.take()
    assert any(c["reason"] == "retention_expired" for c in commands_of(want))
    assert SCENARIO[1]["event_id"] not in {r.get("event_id") for *_, r in want}

    fresh, out_fresh = new_core()
    for record in changelog:
        fresh.restore(0, decode_changelog(record))
    assert fresh.applied == {0: 2}
    assert fresh.clocks == whole_clock_before(groups)
    assert fresh.states.keys() == {"inrego:s1", "inrego:s2", "rego:s3"}
    record_fresh = fresh.process_batch(0, last, 3)
    got = out_fresh.take()

    assert got == want
    assert record_fresh == record_whole
    assert fresh.timer_count() == whole.timer_count()


def whole_clock_before(groups: Sequence[Sequence[Event]]) -> dict[int, Any]:
    latest = max(parse_instant(e["occurred_at"]) for g in groups[:3] for e in g)
    return {0: latest}


def test_restore_rebuilds_timers_of_each_partition() -> None:
    partitions = 4
    visits = [click("inrego", f"v{n}", "2024-01-10T10:00:00+01:00") for n in range(12)]
    by_partition: dict[int, list[Event]] = {}
    for v in visits:
        by_partition.setdefault(subject_partition(key_of(v), partitions), []).append(v)
    assert len(by_partition) >= 2

    original, _ = new_core(partitions=partitions)
    changelog = {
        p: original.process_batch(p, events_batch(events), 0) for p, events in by_partition.items()
    }
    fresh, out = new_core(partitions=partitions)
    for p, record in changelog.items():
        assert record is not None
        fresh.restore(p, decode_changelog(record))
    assert fresh.timer_count() == 0  # rebuilt lazily, on first use

    for p, events in sorted(by_partition.items()):
        fresh.process_batch(p, batch([tick(p, "2026-01-10T09:00:00Z")]), 1)
        commands = commands_of(out.take())
        assert {c["subject_id"] for c in commands} == {e["subject_id"] for e in events}
        assert len(commands) == 2 * len(events)
        assert {c["reason"] for c in commands} == {"retention_expired"}
    assert fresh.timer_count() == 0


def test_restore_on_a_core_that_already_ran_the_partition_keeps_later_timers() -> None:
    # faust recovers a partition each time it is assigned, also to a worker that owned it
    # before: `restore` then runs on a core that already has timers for that partition.
    core, out = new_core()
    created = customer("inrego", "z", "2024-01-10T10:00:00+01:00")  # account due 2029-01-10
    erase = request("inrego", "z", "2024-02-01T10:00:00+01:00", "erasure")  # no hold left
    core.process_batch(0, events_batch([created]), 0)
    record = core.process_batch(0, events_batch([erase], 1), 1)
    assert record is not None
    assert core.states["inrego:z"].next_due() is None
    core.restore(0, decode_changelog(record))

    again = customer("inrego", "z", "2024-03-10T10:00:00+01:00", event_id="z-again")
    core.process_batch(0, events_batch([again], 2), 2)
    assert core.states["inrego:z"].next_due() == parse_instant("2029-03-10T09:00:00Z")
    out.take()
    core.process_batch(0, batch([tick(0, "2040-01-01T00:00:00Z")]), 3)
    commands = commands_of(out.take())
    assert commands != []
    assert {(c["subject_id"], c["reason"]) for c in commands} == {("z", "retention_expired")}
    # The same as a core that never restored.
    plain, plain_out = new_core()
    plain.process_batch(0, events_batch([created]), 0)
    plain.process_batch(0, events_batch([erase], 1), 1)
    plain.process_batch(0, events_batch([again], 2), 2)
    plain_out.take()
    plain.process_batch(0, batch([tick(0, "2040-01-01T00:00:00Z")]), 3)
    assert commands == commands_of(plain_out.take())


def test_restored_offset_skips_batches_already_applied() -> None:
    core, _ = new_core()
    record = core.process_batch(0, events_batch(SCENARIO[:3]), 41)
    assert record is not None
    fresh, out = new_core()
    fresh.restore(0, decode_changelog(record))
    assert fresh.process_batch(0, events_batch(SCENARIO[:3]), 41) is None
    assert fresh.process_batch(0, events_batch(SCENARIO[:3]), 40) is None
    assert out.sent == [] and fresh.skipped == 2


# -- at-least-once: offsets and event ids -------------------------------------------------------


def test_same_batch_at_the_same_offset_is_skipped_whole() -> None:
    core, out = new_core()
    value = events_batch(SCENARIO[:4])
    assert core.process_batch(0, value, 7) is not None
    assert len(out.take()) == 4
    assert core.process_batch(0, value, 7) is None
    assert out.sent == []
    assert core.skipped == 1
    assert out.flushes == [4]  # no flush for the skipped batch
    assert core.processed == 4


def test_offsets_are_tracked_per_partition() -> None:
    core, out = new_core(partitions=2)
    visit = click("inrego", "a", "2024-01-10T10:00:00+01:00")
    mine = subject_partition(key_of(visit), 2)
    other = 1 - mine
    assert core.process_batch(other, batch([tick(other, "2024-01-01T00:00:00Z")]), 5) is not None
    # A lower offset on another partition is new there.
    assert core.process_batch(mine, batch([item(visit, 0)]), 3) is not None
    assert core.skipped == 0
    assert core.applied == {other: 5, mine: 3}
    assert [t for t, *_ in out.sent] == ["tagged-clicks"]


def test_redelivered_event_in_a_new_batch_emits_nothing_for_it() -> None:
    core, out = new_core()
    first, second = SCENARIO[0], SCENARIO[1]
    core.process_batch(0, batch([item(first, 0), item(second, 1)]), 0)
    assert len(out.take()) == 2
    later = customer("inrego", S1, "2024-01-20T10:00:00+01:00", "updated")
    core.process_batch(0, batch([item(second, 1), item(first, 0), item(later, 2)]), 1)
    sent = out.take()
    assert [(t, r["event_id"]) for t, _k, _n, r in sent] == [
        ("tagged-customers", later["event_id"])
    ]


def test_no_offset_means_no_skip() -> None:
    core, out = new_core()
    value = events_batch([SCENARIO[0]])
    core.process_batch(0, value)
    core.process_batch(0, events_batch([SCENARIO[1]]))
    assert core.skipped == 0
    assert len(out.take()) == 2
    assert 0 not in core.applied


# -- bad input never stops the stream -----------------------------------------------------------


def _unknown_controller_record() -> dict[str, Any]:
    return {
        "event_id": "x-1",
        "type": "click",
        "controller": "acme",
        "subject_id": "s9",
        "occurred_at": "2030-01-01T00:00:00Z",
        "url": "https://acme.example/",
        "ip": "192.0.2.9",
        "user_agent": "ua",
        "anonymous_id": None,
    }


def test_event_invalid_in_the_worker_goes_to_dead_letters() -> None:
    bad = _unknown_controller_record()
    bad_item = {
        "key": "acme:s9",
        "source_topic": "clicks",
        "source_partition": 3,
        "source_offset": 42,
        "produced_at_ms": 1_700_000_000_000,
        "event": bad,
    }
    before = click("inrego", S1, "2024-01-10T10:00:00+01:00")
    after = click("inrego", S2, "2024-01-11T10:00:00+01:00")
    core, out = new_core(prefix="acme.")
    changes = core.process_batch(0, batch([item(before, 0), bad_item, item(after, 1)]), 0)
    sent = out.take()

    # Dead letters go out at once, decisions in bulk at the end of the batch; the valid
    # events around the bad one are processed all the same.
    assert sorted((t, k or b"") for t, k, _n, _r in sent) == [
        ("acme.dead-letters", b""),
        ("acme.tagged-clicks", b"inrego:s1"),
        ("acme.tagged-clicks", b"inrego:s2"),
    ]
    letters = [(k, name, r) for t, k, name, r in sent if t == "acme.dead-letters"]
    assert len(letters) == 1
    kafka_key, name, letter = letters[0]
    assert kafka_key is None and name == "DeadLetter"
    assert json.loads(letter.pop("original")) == bad
    assert letter == {
        "reason": "invalid_event",
        "error": "field 'controller': unknown controller (no policy pack)",
        "source_topic": "clicks",
        "source_partition": 3,
        "source_offset": 42,
        "at": WALL_ISO,
        "key": b"acme:s9",
    }
    # The bad event neither made a state nor moved the clock to its 2030 instant.
    assert "acme:s9" not in core.states
    assert changes is not None
    assert decode_changelog(changes)[CLOCK_KEY] == parse_instant("2024-01-11T09:00:00Z")
    assert core.processed == 2


def test_malformed_instant_goes_to_dead_letters_naming_the_field() -> None:
    event = click("inrego", S1, "2024-01-10T10:00:00+01:00")
    record = {**event_to_avro(event)[1], "occurred_at": "yesterday"}
    core, out = new_core()
    core.process_batch(0, batch([item(event, 5, source_partition=1, record=record)]), 0)
    sent = out.take()
    assert [(t, name) for t, _k, name, _r in sent] == [("dead-letters", "DeadLetter")]
    letter = sent[0][3]
    assert letter["reason"] == "invalid_event"
    assert letter["error"].startswith("field 'occurred_at'")
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        "clicks",
        1,
        5,
    )


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not avro at all",
        b"\xc3\x01" + b"\x00" * 8 + b"\x02",  # our header, unknown fingerprint
        SERDE.encode("SubjectBatch", {"batch_id": "b", "produced_at_ms": 1, "items": []})[:-1]
        + b"\x07\x07",  # a body that does not parse
        SERDE.encode("ClickEvent", event_to_avro(VISIT)[1]),  # another schema
    ],
    ids=["empty", "garbage", "unknown-fingerprint", "bad-body", "other-schema"],
)
def test_undecodable_batch_is_skipped_without_output(value: bytes) -> None:
    core, out = new_core()
    assert core.process_batch(0, value, 3) is None
    assert out.sent == []
    assert core.applied == {0: 3}  # seen, so not a gap to read again
    assert core.states == {}
    # The stream goes on.
    assert core.process_batch(0, events_batch([VISIT]), 4) is not None
    assert [t for t, *_ in out.sent] == ["tagged-clicks"]


def test_items_without_event_are_ignored() -> None:
    empty = {**item(VISIT, 0), "event": None}
    core, out = new_core()
    # Nothing changes but the applied offset, which is recorded so a restart skips it.
    assert decode_changelog(core.process_batch(0, batch([empty]), 0) or b"") == {OFFSET_KEY: 0}
    assert out.sent == []
    assert core.applied == {0: 0}


def test_malformed_tick_does_not_stop_the_stream() -> None:
    # Bad input never stops the stream (design, Flow): a tick whose instant does not
    # parse must not make the whole batch raise (redelivered, it would raise forever).
    core, out = new_core()
    changes = core.process_batch(0, batch([item(VISIT, 0), tick(0, "not-a-time")]), 0)
    assert [t for t, *_ in out.sent] == ["tagged-clicks"]
    assert changes is not None
    assert decode_changelog(changes)[CLOCK_KEY] == parse_instant("2024-01-10T09:00:00Z")
    assert core.applied == {0: 0}


# -- timers and metrics -----------------------------------------------------------------------


def test_timer_count_counts_subjects_with_a_timer_set() -> None:
    core, _ = new_core()
    events = [
        customer("inrego", "z", "2024-01-10T10:00:00+01:00"),
        click("inrego", "y", "2024-01-10T10:00:00+01:00"),
    ]
    core.process_batch(0, events_batch(events), 0)
    assert core.timer_count() == 2
    # An erasure request drops every hold of z (none is under a legal obligation).
    core.process_batch(
        0, events_batch([request("inrego", "z", "2024-02-01T10:00:00+01:00", "erasure")], 2), 1
    )
    assert core.states["inrego:z"].next_due() is None
    assert core.timer_count() == 1


def test_metrics_count_decisions_dead_letters_and_optout_latency() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    core, _ = new_core(metrics=metrics)
    objection = consent("inrego", S1, "2024-02-01T10:00:00+01:00")
    items = [
        item(SCENARIO[0], 0),
        {**item(objection, 1), "produced_at_ms": int(WALL * 1000) - 2500},
        {**item(VISIT, 2), "event": _unknown_controller_record()},
        tick(0, "2024-02-02T00:00:00Z"),
    ]
    core.process_batch(0, batch(items), 0)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value("privacy_pipeline_" + name, labels)

    assert sample("dead_letters_total", topic="clicks", reason="invalid_event") == 1.0
    assert sample("decisions_total", decision="tag", controller="inrego") == 1.0
    assert sample("decisions_total", decision="erasure", controller="inrego") == 3.0
    assert sample("optout_latency_seconds_count") == 1.0
    assert sample("optout_latency_seconds_sum") == pytest.approx(2.5)
    assert sample("processing_seconds_count") == 2.0
    assert sample("batch_size_events_count") == 1.0


def test_a_big_batch_is_split_over_changelog_records_that_restore_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kafka refuses records over its request size (1 MB by default): a batch that changes
    # many subjects must write several changelog records, the clock and offset on the last.
    import privacy_pipeline.streams.enforce as enforce_module

    monkeypatch.setattr(enforce_module, "CHANGELOG_RECORD_BYTES", 2_000)
    subjects = [f"s{i}" for i in range(40)]
    visits = [click("inrego", s, "2024-01-10T10:00:00+01:00") for s in subjects]
    core, _ = new_core()
    records = core.process(0, events_batch(visits), 7)
    assert len(records) > 1
    assert all(len(r) <= 2_000 + 1_000 for r in records)
    decoded = [decode_changelog(r) for r in records]
    assert all(OFFSET_KEY not in d for d in decoded[:-1])
    assert decoded[-1][OFFSET_KEY] == 7
    assert sorted(k for d in decoded for k in d if not k.startswith("__")) == sorted(
        f"inrego:{s}" for s in subjects
    )
    fresh, _ = new_core()
    for d in decoded:
        fresh.restore(0, d)
    assert {k: v.to_dict() for k, v in fresh.states.items()} == {
        k: v.to_dict() for k, v in core.states.items()
    }
    assert fresh.applied == {0: 7}


def test_a_group_of_batches_flushes_once_and_refetches_skipped_offsets_in_order() -> None:
    # Inrego §2.4: each visit is tagged for analytics. The consumer hands over offsets 0
    # and 4; offsets 1-3 it passed over are read again and run, in order, before 4.
    visits = [click("inrego", f"visitor-{i}", f"2024-01-10T10:0{i}:00+01:00") for i in range(5)]
    log = {offset: events_batch([visit], offset) for offset, visit in enumerate(visits)}
    asked: list[tuple[int, int, int]] = []

    def refetch(partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        asked.append((partition, start, end))
        return [(offset, log[offset]) for offset in range(start, end)]

    core, out = new_core()
    core.refetch = refetch
    done = core.process_many([(0, log[0], 0), (0, log[4], 4), (0, log[4], 4)])
    assert asked == [(0, 1, 4)]
    assert [offset for _, offset, _ in done] == [0, 1, 2, 3, 4, 4]
    assert [bool(records) for _, _, records in done] == [True] * 5 + [False]  # 4 twice: once
    assert out.flushes == [5]  # one flush, after all five tag records
    tagged = [record["event_id"] for _, _, _, record in out.take()]
    assert tagged == [visit["event_id"] for visit in visits]
    assert core.applied == {0: 4}


def test_changelog_records_of_the_json_format_before_still_restore() -> None:
    # Records written before the packed format: JSON, instants as ISO text.
    core, _ = new_core()
    core.process_batch(0, events_batch(SCENARIO[:5]), 7)
    legacy = json.dumps(
        {
            **{key: state.to_dict() for key, state in core.states.items()},
            CLOCK_KEY: "2024-01-15T09:00:00Z",
            OFFSET_KEY: 7,
        }
    ).encode()
    fresh, _ = new_core()
    fresh.restore(0, decode_changelog(legacy))
    assert fresh.applied == {0: 7}
    assert fresh.clocks == {0: parse_instant("2024-01-15T09:00:00Z")}
    assert {k: s.pack() for k, s in fresh.states.items()} == {
        k: s.pack() for k, s in core.states.items()
    }


def test_a_changelog_record_of_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a packed changelog record"):
        decode_changelog(b"\x07garbage")


def test_an_undecodable_micro_batch_counts_as_seen_not_as_a_gap() -> None:
    asked: list[tuple[int, int, int]] = []
    core, out = new_core()
    core.refetch = lambda p, start, end: asked.append((p, start, end)) or []
    core.process_many([(0, events_batch([VISIT], 0), 0), (0, b"not avro", 1)])
    core.process_many([(0, events_batch([VISIT], 2), 2)])
    assert asked == []
    assert core.applied == {0: 2}


# -- the command tracker: acks through the subject log ------------------------------------

TRACKING = Tracking(ack_timeout=timedelta(minutes=10), max_attempts=3)
ASKED = "2026-03-03T09:00:00Z"


def ack_item(command: Mapping[str, Any], status: str, offset: int, **kw: Any) -> dict[str, Any]:
    """A subject-log item for a target's ack, as ingest writes it (no subject key)."""
    return {
        "key": "",
        "source_topic": "erasure-acks",
        "source_partition": 0,
        "source_offset": offset,
        "produced_at_ms": 1_700_000_000_000,
        "event": {
            "command_id": command["command_id"],
            "target": command["target"],
            "status": status,
            "completed_at": ASKED,
            "detail": None,
            "attempt": kw.get("attempt", 1),
            "retryable": kw.get("retryable", False),
            "rows": {"customers": 1},
        },
    }


def test_acks_close_commands_and_the_unanswered_one_is_reissued_then_escalated() -> None:
    """Inrego, an erasure request (GDPR art. 17): three targets get a command; two answer,
    the third is asked again after 10 and 20 minutes, then handed to a person."""
    core, out = new_core(tracking=TRACKING)
    events = [
        customer("inrego", "s1", "2026-03-02T09:00:00Z"),
        request("inrego", "s1", ASKED, "erasure", request_id="R-1"),
    ]
    core.process_batch(0, events_batch(events), 0)
    sent = out.take()
    commands = commands_of(sent)
    assert len(commands) == 3 and {c["attempt"] for c in commands} == {1}
    [received] = [r for t, _k, _n, r in sent if t == "privacy-request-status"]
    assert (received["status"], received["extract"]) == ("in_progress", None)
    done, gone, silent = commands
    core.process_batch(
        0,
        batch(
            [
                ack_item(done, "done", 0),
                ack_item(gone, "not_found", 1),
                ack_item({**silent, "command_id": "someone-elses"}, "done", 2),
            ]
        ),
        1,
    )
    assert out.take() == []  # answers decide nothing visible
    assert core.unmatched_acks == 1
    assert set(core.states["inrego:s1"].commands or {}) == {silent["command_id"]}

    core.process_batch(0, batch([tick(0, "2026-03-03T09:10:00Z")]), 2)
    sent = out.take()
    [again] = commands_of(sent)
    assert again == {**silent, "attempt": 2}  # the same command, the next attempt
    assert [t for t, *_ in sent] == ["erasure-commands", "audit"]

    core.process_batch(0, batch([tick(0, "2026-03-03T09:30:00Z")]), 3)
    assert [c["attempt"] for c in commands_of(out.take())] == [3]
    core.process_batch(0, batch([tick(0, "2026-03-03T10:10:00Z")]), 4)
    sent = out.take()
    assert [(t, name) for t, _k, name, _r in sent] == [
        ("erasure-escalations", "ErasureEscalation"),
        ("audit", "AuditRecord"),
        ("privacy-request-status", "PrivacyRequestStatus"),
        ("audit", "AuditRecord"),
    ]
    # Two targets answered, one never did: the request is partially completed.
    status = sent[2][3]
    assert (status["request_id"], status["status"]) == ("R-1", "partially_completed")
    assert {(t["target"], t["outcome"]) for t in status["targets"]} == {
        (done["target"], "done"),
        (gone["target"], "not_found"),
        (silent["target"], "escalated"),
    }
    assert status["due_at"] == "2026-04-03T08:00:00Z"  # one month, GDPR art. 12(3)
    escalation = sent[0][3]
    assert escalation["command_id"] == silent["command_id"]
    assert (escalation["reason"], escalation["attempt"]) == ("attempts_exhausted", 3)
    assert (escalation["target"], escalation["request_id"]) == (silent["target"], "R-1")
    assert escalation["escalated_at"] == "2026-03-03T10:10:00Z"


def test_a_restored_core_routes_acks_to_the_right_subject() -> None:
    core, out = new_core(tracking=TRACKING)
    events = [
        customer("inrego", "s1", "2026-03-02T09:00:00Z"),
        request("inrego", "s1", ASKED, "erasure", request_id="R-1"),
    ]
    record = core.process_batch(0, events_batch(events), 0)
    assert record is not None
    commands = commands_of(out.take())
    fresh, _ = new_core(tracking=TRACKING)
    fresh.restore(0, decode_changelog(record))
    assert fresh.states["inrego:s1"].commands is not None
    fresh.process_batch(0, batch([ack_item(c, "done", i) for i, c in enumerate(commands)]), 1)
    assert fresh.unmatched_acks == 0
    assert fresh.states["inrego:s1"].commands is None
