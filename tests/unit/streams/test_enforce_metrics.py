"""The metrics of the erasure loop, read from the registry while `EnforceCore` runs.

A command is followed from issue to answer through the subject log (as in
`test_enforce.py`), on an injected wall clock: the open and overdue gauges are read from
the states at most every 5 s of that clock, the counters move with each decision or ack.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import privacy_pipeline.streams.enforce as enforce_module
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.tracker import Tracking
from privacy_pipeline.streams.enforce import STATE_GAUGES_EVERY_S, EnforceCore, decode_changelog
from privacy_pipeline.streams.metrics import PipelineMetrics
from privacy_pipeline.streams.testing import FakeOutputs
from tests.conformance.scenarios import click, customer, packs, request
from tests.unit.streams.test_enforce import (
    ASKED,
    SERDE,
    TRACKING,
    ack_item,
    batch,
    commands_of,
    events_batch,
    tick,
)

P = "privacy_pipeline_"
ASKED_AT = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
# Inrego answers an erasure request within one month (GDPR art. 12(3)): the commands'
# deadline, 2026-04-03T08:00:00Z (09:00 Stockholm time).
DEADLINE = datetime(2026, 4, 3, 8, 0, tzinfo=UTC)


class Wall:
    """The wall clock the core reads, moved by the test."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


def new_core(
    wall: Wall, tracking: Tracking | None = TRACKING, states: dict[str, Any] | None = None
) -> tuple[EnforceCore, FakeOutputs, CollectorRegistry]:
    registry = CollectorRegistry()
    out = FakeOutputs()
    core = EnforceCore(
        PolicyEnforcer(packs(), tracking),
        SERDE,
        out,
        states={} if states is None else states,
        partitions=1,
        metrics=PipelineMetrics(registry),
        wall_clock=wall,
    )
    return core, out, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, labels)


def open_commands(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """`(target, state) -> open commands` of every inrego series, zeros included."""
    out: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        if metric.name == P + "erasure_commands_open":
            for s in metric.samples:
                assert s.labels["controller"] == "inrego"
                out[(s.labels["target"], s.labels["state"])] = s.value
    return out


def answered(command: Mapping[str, Any], status: str, offset: int, at: datetime, **kw: Any) -> Any:
    """A target's ack, completed at `at`."""
    ack = ack_item(command, status, offset, **kw)
    ack["event"]["completed_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ack


def commands_of_core(core: EnforceCore) -> list[dict[str, Any]]:
    """The open commands of inrego:s1, as issued."""
    commands = core.states["inrego:s1"].commands or {}
    return [tracked.decision for tracked in commands.values()]


def erasure_request(
    core: EnforceCore, out: FakeOutputs, changelog: list[bytes] | None = None
) -> list[dict[str, Any]]:
    """Inrego: a customer asks for erasure (GDPR art. 17); three targets get a command."""
    events = [
        customer("inrego", "s1", "2026-03-02T09:00:00Z"),
        request("inrego", "s1", ASKED, "erasure", request_id="R-1"),
    ]
    records = core.process(0, events_batch(events), 0)
    if changelog is not None:
        changelog += records
    return commands_of(out.take())


def test_a_command_followed_from_issue_through_acks_retries_and_escalation() -> None:
    wall = Wall(ASKED_AT + timedelta(seconds=5))
    core, out, registry = new_core(wall)
    done, gone, silent = erasure_request(core, out)
    targets = [c["target"] for c in (done, gone, silent)]
    assert targets == ["business-systems", "it-service-providers", "marketing-services"]
    assert open_commands(registry) == {(t, "waiting"): 1 for t in targets}
    assert value(registry, "erasure_commands_overdue", target=targets[0], controller="inrego") == 0
    for target in targets:
        issued = {"reason": "erasure_request", "action": "erase", "target": target}
        assert value(registry, "erasure_commands_total", **issued, controller="inrego") == 1
    in_progress = {"right": "erasure", "status": "in_progress", "controller": "inrego"}
    assert value(registry, "request_statuses_total", **in_progress) == 1

    # Two targets answer, 90 s and 4 min after the request; one ack is someone else's.
    wall.advance(1)
    acks = [
        answered(done, "done", 0, ASKED_AT + timedelta(seconds=90)),
        answered(gone, "not_found", 1, ASKED_AT + timedelta(minutes=4)),
        answered({**silent, "command_id": "someone-elses"}, "done", 2, ASKED_AT),
    ]
    core.process_batch(0, batch(acks), 1)
    acked = {"target": targets[0], "status": "done", "controller": "inrego"}
    assert value(registry, "erasure_acks_total", **acked) == 1
    not_found = {"target": targets[1], "status": "not_found", "controller": "inrego"}
    assert value(registry, "erasure_acks_total", **not_found) == 1
    assert value(registry, "erasure_acks_total", **{**acked, "target": targets[2]}) is None
    assert value(registry, "erasure_ack_latency_seconds_count", target=targets[0]) == 1
    assert value(registry, "erasure_ack_latency_seconds_sum", target=targets[0]) == 90
    assert value(registry, "erasure_ack_latency_seconds_sum", target=targets[1]) == 240
    # 1 s after the last reading the gauges have not been read again: 5 s must pass.
    assert open_commands(registry) == {(t, "waiting"): 1 for t in targets}

    wall.advance(STATE_GAUGES_EVERY_S)
    core.process_batch(0, batch([tick(0, "2026-03-03T09:05:00Z")]), 2)
    assert open_commands(registry) == {
        (targets[0], "waiting"): 0,
        (targets[1], "waiting"): 0,
        (targets[2], "waiting"): 1,
    }

    # No answer from marketing-services: asked again after 10 and 20 more minutes.
    core.process_batch(0, batch([tick(0, "2026-03-03T09:10:00Z")]), 3)
    core.process_batch(0, batch([tick(0, "2026-03-03T09:30:00Z")]), 4)
    assert [c["attempt"] for c in commands_of(out.take())] == [2, 3]
    assert value(registry, "erasure_retries_total", target=targets[2], controller="inrego") == 2
    reissued = {"reason": "erasure_request", "action": "erase", "target": targets[2]}
    assert value(registry, "erasure_commands_total", **reissued, controller="inrego") == 1

    # Attempts used up (3): handed to a person, still open for a late answer.
    wall.advance(STATE_GAUGES_EVERY_S)
    core.process_batch(0, batch([tick(0, "2026-03-03T10:10:00Z")]), 5)
    escalated = {"target": targets[2], "reason": "attempts_exhausted", "controller": "inrego"}
    assert value(registry, "erasure_escalations_total", **escalated) == 1
    partial = {"right": "erasure", "status": "partially_completed", "controller": "inrego"}
    assert value(registry, "request_statuses_total", **partial) == 1
    assert open_commands(registry)[(targets[2], "waiting")] == 0
    assert open_commands(registry)[(targets[2], "escalated")] == 1
    overdue = {"target": targets[2], "controller": "inrego"}
    assert value(registry, "erasure_commands_overdue", **overdue) == 0

    # The month passes on the wall clock with no traffic: the worker's timer reads again.
    wall.set(DEADLINE + timedelta(seconds=1))
    core.observe_state()
    assert value(registry, "erasure_commands_overdue", **overdue) == 1
    assert open_commands(registry)[(targets[2], "escalated")] == 1

    # A late answer still closes it; its latency counts from the first issue.
    wall.advance(STATE_GAUGES_EVERY_S)
    late = ASKED_AT + timedelta(days=31, hours=2)
    core.process_batch(0, batch([answered(silent, "done", 3, late, attempt=3)]), 6)
    assert value(registry, "erasure_commands_overdue", **overdue) == 0
    assert set(open_commands(registry).values()) == {0}
    assert (
        value(registry, "erasure_ack_latency_seconds_sum", target=targets[2])
        == (late - ASKED_AT).total_seconds()
    )
    # A redelivered ack answers nothing open: not counted again.
    core.process_batch(0, batch([answered(silent, "done", 3, late, attempt=3)]), 7)
    late_done = {"target": targets[2], "status": "done", "controller": "inrego"}
    assert value(registry, "erasure_acks_total", **late_done) == 1
    assert core.unmatched_acks == 2


def test_a_retryable_failure_counts_as_failed_and_is_not_timed() -> None:
    wall = Wall(ASKED_AT)
    core, out, registry = new_core(wall)
    command, *_ = erasure_request(core, out)
    failed = answered(command, "failed", 0, ASKED_AT + timedelta(minutes=1), retryable=True)
    core.process_batch(0, batch([failed]), 1)
    labels = {"target": command["target"], "status": "failed", "controller": "inrego"}
    assert value(registry, "erasure_acks_total", **labels) == 1
    assert value(registry, "erasure_ack_latency_seconds_count", target=command["target"]) is None
    wall.advance(STATE_GAUGES_EVERY_S)
    core.observe_state()
    assert open_commands(registry)[(command["target"], "waiting")] == 1


def test_a_restored_worker_shows_its_open_commands_and_timers_without_traffic() -> None:
    wall = Wall(ASKED_AT)
    core, out, _ = new_core(wall)
    changelog: list[bytes] = []
    commands = erasure_request(core, out, changelog)
    visits = [click("inrego", f"v{i}", "2026-03-03T09:01:00Z") for i in range(3)]
    visits.append(customer("rego", "r1", "2026-03-03T09:01:00Z"))
    changelog += core.process(0, events_batch(visits, 2), 1)

    # A fresh worker reads the changelog back (faust recovery), then no record comes.
    fresh, _, registry = new_core(Wall(ASKED_AT + timedelta(minutes=5)))
    fresh.observe_state()  # before recovery: nothing yet
    assert open_commands(registry) == {}
    for record in changelog:
        fresh.restore(0, decode_changelog(record))
    fresh.observe_state()  # what the worker's timer calls, less than 5 s later
    assert open_commands(registry) == {
        ("business-systems", "waiting"): 1,
        ("it-service-providers", "waiting"): 1,
        ("marketing-services", "waiting"): 1,
    }
    # Timers are per subject: s1 keeps one (bookkeeping), each visitor one, rego's r1 one.
    assert value(registry, "retention_timers", controller="inrego") == 4
    assert value(registry, "retention_timers", controller="rego") == 1
    assert value(registry, "retention_timers", controller="none") is None
    assert fresh.timer_count() == 5
    # An ack of a restored command is timed from its first issue too.
    command = commands[0]
    answered_at = ASKED_AT + timedelta(minutes=7)
    fresh.process_batch(0, batch([answered(command, "done", 0, answered_at)]), 2)
    target = command["target"]
    assert value(registry, "erasure_ack_latency_seconds_sum", target=target) == 420


def test_many_open_commands_make_the_gauges_read_more_seldom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reading the gauges may take at most 1/STATE_GAUGES_SHARE of the enforce thread.
    monkeypatch.setattr(enforce_module, "STATE_GAUGES_SHARE", 10**9)
    wall = Wall(ASKED_AT)
    core, out, registry = new_core(wall)
    erasure_request(core, out)  # read once, then every (time it took) x 10^9 at least
    assert open_commands(registry)[("business-systems", "waiting")] == 1
    core.process_batch(0, batch([answered(commands_of_core(core)[0], "done", 0, ASKED_AT)]), 1)
    wall.advance(STATE_GAUGES_EVERY_S * 100)
    core.observe_state()
    assert open_commands(registry)[("business-systems", "waiting")] == 1
    core.observe_state(force=True)
    assert open_commands(registry)[("business-systems", "waiting")] == 0


def test_retention_timers_per_controller_follow_the_subjects() -> None:
    wall = Wall(datetime(2024, 1, 10, 12, tzinfo=UTC))
    core, _, registry = new_core(wall, tracking=None)
    events = [
        click("inrego", "a", "2024-01-10T10:00:00+01:00"),
        click("inrego", "b", "2024-01-10T10:00:00+01:00"),
        click("inrego", "a", "2024-01-10T11:00:00+01:00"),  # the same subject: one timer
        customer("rego", "c", "2024-01-10T10:00:00+01:00"),
    ]
    core.process_batch(0, events_batch(events), 0)
    assert value(registry, "retention_timers", controller="inrego") == 2
    assert value(registry, "retention_timers", controller="rego") == 1
    # Inrego §2.4: web data is kept 24 months; after that both visitors' timers fire.
    wall.advance(STATE_GAUGES_EVERY_S)
    core.process_batch(0, batch([tick(0, "2026-01-11T00:00:00Z")]), 1)
    assert value(registry, "retention_timers", controller="inrego") == 0
    assert value(registry, "retention_timers", controller="rego") == core.timer_count()


def test_without_a_tracker_no_command_stays_open() -> None:
    wall = Wall(ASKED_AT)
    core, out, registry = new_core(wall, tracking=None)
    commands = erasure_request(core, out)
    assert len(commands) == 3
    assert open_commands(registry) == {}
    assert (
        value(
            registry,
            "erasure_commands_total",
            reason="erasure_request",
            action="erase",
            target="business-systems",
            controller="inrego",
        )
        == 1
    )
